"""Benchmark: a bad canary's cost. How long a v2 answering half its requests with 500s keeps traffic
before gitmesh rolls it back, and what share of all requests failed over the episode.

The bookstore runs for real (apps, Envoy sidecars, ``gitmesh run``; ``gitmesh.demo``), under the
rollout policy of the integration tests (steps 10,50; interval 3s; success rate >= 95%;
failure threshold 2). Each run: v1 only, then ``gitmesh apply`` of a commit sending everything to
v2 while bookbuyer calls the bookstore without pause, ``gitmesh rollout run`` reading the caller's
sidecar stats, until the rollout is Failed and every answer comes from v1 again.

Run: ``python bench/rollout_bench.py [--runs 3] [--svg docs/rollout-failed.svg]``; ``--svg`` keeps
the last run's timeline (``gitmesh rollout timeline``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitmesh import demo as demo_mod
from gitmesh.rollout import driver, render
from gitmesh.rollout.model import Phase
from gitmesh.settings import embedded
from tests.integration.rollouts import (
    SPLIT,
    Webhook,
    bad_canary,
    commit_split,
)


def episode(workdir: Path, svg: Path | None) -> tuple[float, float, int]:
    """One bad canary: seconds from apply to rollback, share of failed requests, requests sent."""
    hook = Webhook()
    try:
        with demo_mod.running(workdir) as d:
            commit_split(d, 100, 0)
            d.applied = d.apply()
            failed, answers = bad_canary(d, hook, workdir)
            if failed.phase is not Phase.FAILED:
                raise SystemExit(f"the bad canary was not rolled back: {failed.reason}")
            if svg is not None:
                store = embedded(d.store)
                svg.write_text(render.timeline_svg(driver.load(store)[SPLIT]))
                store.close()
            failures = sum(status != 200 for _, status, _ in answers) / len(answers)
            return failed.history[-1].at - failed.started_at, failures, len(answers)
    finally:
        hook.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--svg", type=Path, help="Write the last run's timeline here.")
    args = parser.parse_args()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="gitmesh-rollout-bench-") as tmp:
            took, failures, n = episode(Path(tmp), args.svg if i == args.runs - 1 else None)
        rows.append((took, failures))
        print(f"run {i + 1}: rolled back {took:.1f}s after apply; {failures:.2%} of {n} requests failed")
    took = [r[0] for r in rows]
    share = [r[1] for r in rows]
    print(
        f"median: rolled back after {statistics.median(took):.1f}s "
        f"(min {min(took):.1f}, max {max(took):.1f}); "
        f"failed requests {statistics.median(share):.2%} (min {min(share):.2%}, max {max(share):.2%})"
    )


if __name__ == "__main__":
    main()
