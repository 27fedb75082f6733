// The console's script: swap in the fragments the server renders, as /console/events sends them,
// each service graph in them first laid out by ELK (assets/elk.js): boxes in layers, lines routed
// between them, every label placed where no other is; each rollout's timeline then charted by
// uPlot (assets/uplot.js) from the columns the server gives.
"use strict";

const NODE_HEIGHT = 28;
const PADDING = 8; // around a box's name
const LAYOUT = {
  "elk.algorithm": "layered",
  "elk.direction": "RIGHT",
  "elk.edgeRouting": "POLYLINE",
  "elk.padding": "[top=16,left=16,bottom=16,right=16]",
  "elk.spacing.nodeNode": "20",
  "elk.spacing.edgeLabel": "4",
  "elk.layered.spacing.nodeNodeBetweenLayers": "60",
  "elk.layered.spacing.edgeNodeBetweenLayers": "20",
};
const elk = typeof ELK === "function" ? new ELK() : null;
const measure = document.createElement("canvas").getContext("2d");
const turns = new Map(); // element -> its newest swap: an older one whose layout ends later is dropped

function width(text) {
  measure.font = getComputedStyle(text).font;
  return Math.ceil(measure.measureText(text.textContent).width);
}

// Lays out the graph of one fragment, placed in the page (hidden) so that fonts measure as shown.
async function layOut(svg) {
  if (!elk) {
    svg.dataset.layout = "unavailable";
    svg.insertAdjacentHTML("beforebegin", "<p>The graph's layout library is not installed (tools/fetch_assets.py).</p>");
    return;
  }
  const nodes = [...svg.querySelectorAll("g.node")];
  const edges = [...svg.querySelectorAll("g.edge")];
  const graph = {
    id: "mesh",
    layoutOptions: LAYOUT,
    children: nodes.map((g) => ({
      id: g.dataset.node,
      width: width(g.querySelector("text")) + 2 * PADDING,
      height: NODE_HEIGHT,
    })),
    edges: edges.map((g, i) => {
      const text = g.querySelector("text");
      return {
        id: `e${i}`,
        sources: [g.dataset.from],
        targets: [g.dataset.to],
        labels: [{ text: text.textContent, width: width(text), height: 14 }],
      };
    }),
  };
  const laid = await elk.layout(graph);
  laid.children.forEach((n, i) => {
    const rect = nodes[i].querySelector("rect");
    rect.setAttribute("x", n.x);
    rect.setAttribute("y", n.y);
    rect.setAttribute("width", n.width);
    rect.setAttribute("height", n.height);
    const text = nodes[i].querySelector("text");
    text.setAttribute("x", n.x + PADDING);
    text.setAttribute("y", n.y + 18);
  });
  laid.edges.forEach((e, i) => {
    const points = (e.sections || []).flatMap((s) => [s.startPoint, ...(s.bendPoints || []), s.endPoint]);
    edges[i].querySelector("path").setAttribute("d", points.map((p, j) => `${j ? "L" : "M"}${p.x} ${p.y}`).join(" "));
    const [label] = e.labels;
    const text = edges[i].querySelector("text");
    text.setAttribute("x", label.x + label.width / 2);
    text.setAttribute("y", label.y + 11);
  });
  svg.setAttribute("width", laid.width);
  svg.setAttribute("height", laid.height);
  svg.dataset.layout = "done";
}

// A rollout's timeline: each backend's weight (a step line: weights hold until they change) and
// the success rate of each check it was analysed in (points), on one 0-100 % scale; the phase
// changes as dashed lines. The legend gives every value at the cursor.
function chart(div) {
  if (typeof uPlot !== "function") {
    div.textContent = "The chart library is not installed (tools/fetch_assets.py).";
    return;
  }
  const columns = JSON.parse(div.dataset.timeline);
  const series = columns.series.map((s) => {
    const stroke = columns.colours[s.backend % columns.colours.length];
    return s.kind === "weight"
      ? { label: s.label, scale: "%", stroke, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }
      : { label: s.label, scale: "%", stroke, width: 1, dash: [4, 4], spanGaps: true, points: { show: true, size: 7, fill: stroke } };
  });
  const phases = (u) => {
    const { ctx, bbox } = u;
    for (const p of columns.phases) {
      const x = u.valToPos(p.at, "x", true);
      ctx.save();
      ctx.strokeStyle = ctx.fillStyle = p.colour;
      ctx.textAlign = "left";
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
      ctx.fillText(p.phase, x + 4, bbox.top + 14 * devicePixelRatio);
      ctx.restore();
    }
  };
  const options = {
    width: 640,
    height: 240,
    scales: { x: { time: false }, "%": { range: [0, 100] } },
    axes: [{ label: "seconds since the rollout started" }, { scale: "%", label: "%" }],
    series: [{ label: "seconds" }, ...series],
    hooks: { draw: [phases] },
  };
  try {
    new uPlot(options, [columns.seconds, ...columns.series.map((s) => s.values)], div);
    div.dataset.charted = "yes";
  } catch (error) {
    div.textContent = "The timeline could not be charted.";
    console.error("gitmesh console: timeline chart", error);
  }
}

async function swap(element, fragment) {
  const turn = (turns.get(element) || 0) + 1;
  turns.set(element, turn);
  const staged = document.createElement("div");
  staged.className = "staged";
  staged.innerHTML = fragment;
  document.body.append(staged);
  // A graph the library cannot lay out is said so; the rest of the fragment (the table) still shows.
  const placed = (svg) =>
    layOut(svg).catch((error) => {
      svg.dataset.layout = "failed";
      svg.insertAdjacentHTML("beforebegin", "<p class=\"bad\">The graph could not be laid out.</p>");
      console.error("gitmesh console: graph layout", error);
    });
  await Promise.all([...staged.querySelectorAll("svg.graph")].map(placed));
  staged.remove();
  if (turns.get(element) !== turn) return;
  element.replaceChildren(...staged.childNodes);
  element.querySelectorAll("div.timeline[data-timeline]").forEach(chart);
  if (element.querySelector('svg.graph[data-layout="done"]')) performance.mark("gitmesh:graph-shown");
}

function listen() {
  const status = document.getElementById("status");
  const events = new EventSource("/console/events");
  events.addEventListener("view", async (message) => {
    const swapped = Object.entries(JSON.parse(message.data)).map(([id, fragment]) => {
      const element = document.getElementById(id);
      return element ? swap(element, fragment) : null;
    });
    await Promise.all(swapped);
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

// The page as first served has its graphs unplaced and its timelines uncharted: draw them, then
// follow the events.
for (const svg of document.querySelectorAll('svg.graph[data-layout="pending"]')) {
  const element = svg.parentElement;
  swap(element, element.innerHTML);
}
document.querySelectorAll("div.timeline[data-timeline]").forEach(chart);
listen();
