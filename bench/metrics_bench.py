"""Benchmark: computing the metrics model for a large mesh, per refresh of ``gitmesh top`` or the console.

A mesh of 1,000 services and 5,000 sidecars, each calling ``--calls`` services. Each sidecar's stats
page is what Envoy answers to the filtered query gitmesh sends (``gitmesh.metrics.envoy.QUERY``: only
the model's stats, only clusters used), in Envoy's own format (response classes, 20 latency buckets,
TCP counters). One refresh is parsing every page and computing the window and the edges from the
previous reading; fetching the pages (one HTTP GET per sidecar, concurrent) is not counted here.
``--unfiltered N`` pads every page with the N unused clusters a sidecar without the filter would send.

Run: ``python bench/metrics_bench.py [--services 1000] [--proxies 5000] [--calls 5] [--refreshes 5]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitmesh.metrics import model

BOUNDS = ("0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000")
BOUNDS += ("30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf")


def page(destinations: list[str], scale: int, unused: list[str]) -> str:
    """One sidecar's stats page, Envoy's text: a family's TYPE line, then its samples."""
    families: dict[str, list[str]] = {}

    def add(name: str, kind: str, line: str) -> None:
        families.setdefault(f"# TYPE {name} {kind}", []).append(line)

    for d in destinations + unused:
        n = scale if d in destinations else 0
        c = f'envoy_cluster_name="{d}|8080"'
        for cls, count in (("2", n), ("5", n // 50)):
            add(
                model.RESPONSES,
                "counter",
                f'{model.RESPONSES}{{envoy_response_code_class="{cls}",{c}}} {count}',
            )
        add(model.CONNECTIONS, "counter", f"{model.CONNECTIONS}{{{c}}} {n // 10}")
        add(model.SENT, "counter", f"{model.SENT}{{{c}}} {n * 300}")
        add(model.RECEIVED, "counter", f"{model.RECEIVED}{{{c}}} {n * 900}")
        add(model.ACTIVE, "gauge", f"{model.ACTIVE}{{{c}}} 2")
        h = "envoy_cluster_upstream_rq_time"
        for i, le in enumerate(BOUNDS):
            add(h, "histogram", f'{h}_bucket{{{c},le="{le}"}} {min(n, n * (i + 1) // 8)}')
        add(h, "histogram", f"{h}_sum{{{c}}} {n * 7.5}")
        add(h, "histogram", f"{h}_count{{{c}}} {n}")
    return "".join(f"{t}\n" + "\n".join(lines) + "\n" for t, lines in families.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--proxies", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=5, help="services each sidecar calls")
    parser.add_argument("--unfiltered", type=int, default=0, help="unused clusters on each page")
    parser.add_argument("--refreshes", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    services = [f"ns{i % 50}/svc{i}" for i in range(args.services)]
    sidecars = {f"10.0.{i // 250}.{i % 250}:15000": services[i % args.services] for i in range(args.proxies)}
    calls = {admin: rng.sample(services, args.calls) for admin in sidecars}
    unused = {admin: rng.sample(services, args.unfiltered) for admin in sidecars}

    def pages(scale: int) -> dict[str, str]:
        return {a: page(calls[a], scale * (1 + i % 7), unused[a]) for i, a in enumerate(sidecars)}

    previous = {a: (sidecars[a], model.parse(text)) for a, text in pages(1000).items()}
    size = sum(map(len, pages(1000).values()))
    times, cpu, edges = [], [], 0
    for r in range(args.refreshes):
        texts = pages(1000 + 100 * (r + 1))
        started, started_cpu = time.perf_counter(), time.process_time()
        reading = {a: (sidecars[a], model.parse(text)) for a, text in texts.items()}
        edges = len(model.edges(model.window(reading, previous), seconds=5))
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        previous = reading
    print(
        f"{args.services} services, {args.proxies} sidecars calling {args.calls} each"
        f" (+{args.unfiltered} unused clusters): {size / 1e6:.1f} MB of stats, {edges} edges"
    )
    print(
        f"model per refresh: median {statistics.median(times):.3f} s (cpu {statistics.median(cpu):.3f} s),"
        f" max {max(times):.3f} s over {args.refreshes} refreshes"
    )


if __name__ == "__main__":
    main()
