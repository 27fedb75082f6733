"""gitmesh top against the bookstore with real Envoy sidecars: as a script reads it (--once -o json)
and as a person sees it (in tmux)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import Demo, eventually, free_port
from tests.integration.rollouts import POLICY, Traffic, Webhook, apply_head, commit_split, demo, webhook

pytestmark = pytest.mark.integration
__all__ = ["demo", "webhook"]  # fixtures, used by name

EDGE = ("bookbuyer/bookbuyer", "bookstore/bookstore-v1")
REFUSED = ("bookthief/bookthief", "bookstore/bookstore")  # no TrafficTarget names bookthief
# gitmesh run walks rollouts: with these, the one applied here stays at its first step for the test.
STILL = POLICY | {"interval": "10m", "progress-deadline": "30m"}


def sidecar(d: Demo) -> str:
    return f"127.0.0.1:{d.sidecars['bookbuyer'].admin_port}={EDGE[0]}"


def test_once_as_json_gives_the_reported_sidecars_edges_and_the_rollouts_under_way(
    demo: Demo, webhook: Webhook
) -> None:
    commit_split(demo, 0, 100, policy=STILL)
    apply_head(demo, webhook)  # a rollout at its first step, and there it stays
    # No --envoy-admin: the sidecars, and the service each serves, as gitmesh run reports them.
    args = ["top", "--store", str(demo.store), "--interval", "1"]

    def seen() -> dict[str, Any] | None:  # None until gitmesh run has reported its sidecars
        result = CliRunner().invoke(cli, [*args, "--once", "-o", "json"])
        return json.loads(result.output) if result.exit_code == 0 else None

    def edge(r: dict[str, Any] | None, which: tuple[str, str]) -> dict[str, Any]:
        return next((e for e in (r or {}).get("edges", []) if (e["source"], e["destination"]) == which), {})

    with Traffic(demo), Traffic(demo, caller="bookthief") as thief:
        found = eventually(
            seen,
            lambda r: edge(r, EDGE).get("rps", 0) > 5 and edge(r, REFUSED).get("denied_rps", 0) > 1,
            "bookbuyer's calls and bookthief's refused calls seen",
        )
    schema = Path(__file__).resolve().parents[2] / "gitmesh" / "cli" / "schemas" / "top.schema.json"
    jsonschema.validate(found, json.loads(schema.read_text()))
    assert edge(found, EDGE)["success_rate"] == 100 and edge(found, EDGE)["denied_rps"] == 0
    # bookthief's calls never left its sidecar: refused there (403), none sent, and shown first.
    assert {status for _, status, _ in thief.seen} == {403}
    refused = edge(found, REFUSED)
    assert refused["rps"] == 0 and refused["success_rate"] is None
    assert (found["edges"][0]["source"], found["edges"][0]["destination"]) == REFUSED
    assert found["unreachable"] == {}
    ((rollout),) = found["rollouts"]
    assert (rollout["split"], rollout["phase"], rollout["step"]) == (
        "bookstore/bookstore-split",
        "Progressing",
        1,
    )


def test_a_person_sees_the_edges_and_the_rollout_step_in_a_terminal(
    demo: Demo, webhook: Webhook, tmp_path: Path
) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: make tmux (make test does it)")
    commit_split(demo, 0, 100, policy=STILL)
    apply_head(demo, webhook)
    tmux = ["tmux", "-L", f"gitmesh-top-{tmp_path.name}"]  # a server of its own
    # The terminal's own size, as a person's shell has it (pytest's environment says 80 columns).
    command = ["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-m", "gitmesh", "top"]
    command += ["--store", str(demo.store)]
    # bookthief's sidecar too, and one that nothing answers for: named, and the others shown.
    thief = f"127.0.0.1:{demo.sidecars['bookthief'].admin_port}={REFUSED[0]}"
    gone = f"127.0.0.1:{free_port()}"
    command += [
        "--envoy-admin",
        sidecar(demo),
        "--envoy-admin",
        thief,
        "--envoy-admin",
        f"{gone}=bookstore/gone",
    ]
    command += ["--interval", "1"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "40", *command], check=True)
    try:
        with Traffic(demo), Traffic(demo, caller="bookthief"):
            # -e: with the colours, as escape sequences.
            screen = eventually(
                lambda: (
                    subprocess.run([*tmux, "capture-pane", "-p", "-e"], capture_output=True, text=True).stdout
                ),
                lambda text: "bookstore/bookstore-v1" in text and "100.0%" in text and REFUSED[0] in text,
                "the edges on the screen",
            )
        assert "bookbuyer/bookbuyer" in screen
        assert "bookstore/bookstore-split" in screen and "Progressing" in screen and "1 of 2" in screen
        # The refused edge: its denied rate in red (SGR 31), the only red in its row.
        (row,) = [line for line in screen.splitlines() if REFUSED[0] in line]
        red = re.search(r"\x1b\[(?:[0-9;]*;)?31m\s*([0-9.]+)", row)
        assert red is not None and float(red.group(1)) > 0, row
        # The sidecar nothing answers for is named under the table, and the others are read.
        plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
        assert f"{gone} unreachable (bookstore/gone: cannot read the Envoy stats" in " ".join(plain.split())
        assert "(2 sidecars," in plain
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
