// The console's only script: swap in the fragments the server renders, as /console/events sends them.
"use strict";

function listen() {
  const status = document.getElementById("status");
  const events = new EventSource("/console/events");
  events.addEventListener("view", (message) => {
    for (const [id, fragment] of Object.entries(JSON.parse(message.data))) {
      const element = document.getElementById(id);
      if (element) element.innerHTML = fragment;
    }
    document.body.dataset.live = "yes";
  });
  events.addEventListener("error", () => {
    document.body.dataset.live = "no";
    // A refused stream (the port's cap on streams, a restart) is not retried by EventSource itself.
    if (events.readyState === EventSource.CLOSED) {
      status.textContent = "disconnected; trying again in 5 s";
      setTimeout(listen, 5000);
    }
  });
}

listen();
