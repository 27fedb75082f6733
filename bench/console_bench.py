"""Benchmark: the web console's cost at the size of a large mesh, on the server and in the browser.

A mesh of ``--apps`` services (plan_bench's generated teams: Services, EndpointSlices, splits, route
groups, TrafficTargets) and ``--proxies`` sidecars each calling ``--calls`` services. Measured per
refresh, as the console does it for every viewer at once: reading the mesh from its objects
(``read.mesh``), rendering the whole page and one server-sent event. The edges themselves (the stats
read into the model) are measured by metrics_bench.py. Then the rendered page is served on the
loopback with its scripts and style and opened in headless Chromium (Debian's, by selenium): its first
contentful paint, as the browser reports it, and when its service graph shows, laid out by ELK.

Run: ``python bench/console_bench.py [--apps 1000] [--proxies 5000] [--calls 5] [--refreshes 5]``
"""

from __future__ import annotations

import argparse
import http.server
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_bench import OBJECTS_PER_APP, app_documents, build_mesh  # type: ignore[import-not-found]

from gitmesh.apis import read
from gitmesh.controller import console
from gitmesh.metrics.model import Edge


def first_paint(page: bytes) -> tuple[float, float]:
    """Seconds from navigation to the first contentful paint of ``page`` in headless Chromium, and
    to its service graph shown (laid out by the layout library)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    files = {"/console": (page, "text/html; charset=utf-8")}
    files |= {f"/console/{n}": (console.static(n), t) for n, t in console.STATIC.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = files.get(self.path, (b"", "text/plain"))
            self.send_response(200 if body else 204)  # the event stream: none here
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="gitmesh-bench-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.add_argument("--disable-background-networking")
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/console")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            paint, graph = browser.execute_script(
                "const at = (name) => { const p = performance.getEntriesByName(name)[0];"
                " return p ? p.startTime : null; };"
                " return [at('first-contentful-paint'), at('gitmesh:graph-shown')];"
            )
            if paint is not None and graph is not None:
                return float(paint) / 1000, float(graph) / 1000
            time.sleep(0.1)
        raise SystemExit("no first contentful paint and shown graph within 30 s")
    finally:
        browser.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--proxies", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=5, help="services each sidecar calls")
    parser.add_argument("--refreshes", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    namespaces = max(1, args.apps // 20)
    mesh = build_mesh(namespaces * (1 + OBJECTS_PER_APP * 20), namespaces, rng)
    objects = [d for a in mesh.apps for d in app_documents(a)]
    services = [f"{a.namespace}/{a.name}" for a in mesh.apps]
    edges = {}
    for i in range(args.proxies):
        source = services[i % len(services)]
        for destination in rng.sample(services, args.calls):
            rate = rng.choice((100.0, 100.0, 100.0, 99.5, 97.0, 60.0))
            edges[(source, destination)] = Edge(
                source, destination, rng.uniform(0.1, 50), rate, 1.2, 4.0, 12.0, 2.0, 300.0, 900.0, 0.0
            )
    by_badness = sorted(edges.values(), key=lambda e: (e.success_rate or 100.0, -(e.p99_ms or 0)))
    report = {"proxies": [f"proxy-{i}" for i in range(args.proxies)], "sidecars": {}, "nacks": []}
    reads, renders, events = [], [], []
    page = b""
    for _ in range(args.refreshes):
        started = time.process_time()
        state = read.mesh(objects)
        reads.append(time.process_time() - started)
        view = console.View(time.time(), 2.0, args.proxies, by_badness, [], [], report, state)
        started = time.process_time()
        parts = console.fragments(view)
        page = console.page(parts).encode()
        renders.append(time.process_time() - started)
        started = time.process_time()
        event = console.event(parts)
        events.append(time.process_time() - started)
    # After the first event, a stream sends what changed: the traffic (status and edges) every refresh.
    refresh = console.event({k: parts[k] for k in ("status", "edges")})
    print(
        f"{len(services)} services ({len(objects)} objects), {args.proxies} sidecars, {len(edges)} edges;"
        f" page {len(page) / 1e3:.0f} kB, first event {len(event) / 1e3:.0f} kB,"
        f" then {len(refresh) / 1e3:.0f} kB per refresh"
    )
    print(
        f"per refresh (cpu, median of {args.refreshes}): read.mesh {statistics.median(reads):.3f} s,"
        f" page (every fragment) {statistics.median(renders):.3f} s, event {statistics.median(events):.3f} s"
    )
    if not args.no_browser:
        paint, graph = first_paint(page)
        print(
            f"in headless Chromium: first contentful paint {paint:.3f} s,"
            f" the graph laid out and shown {graph:.3f} s"
        )


if __name__ == "__main__":
    main()
