"""gitmesh top against the bookstore with real Envoy sidecars: as a script reads it (--once -o json)
and as a person sees it (in tmux)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import Demo, eventually
from tests.integration.rollouts import POLICY, Traffic, Webhook, apply_head, commit_split, demo, webhook

pytestmark = pytest.mark.integration
__all__ = ["demo", "webhook"]  # fixtures, used by name

EDGE = ("bookbuyer/bookbuyer", "bookstore/bookstore-v1")
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

    with Traffic(demo):
        found = eventually(
            seen,
            lambda r: (
                r is not None
                and any((e["source"], e["destination"]) == EDGE and e["rps"] > 5 for e in r["edges"])
            ),
            "bookbuyer's calls seen",
        )
    schema = Path(__file__).resolve().parents[2] / "gitmesh" / "cli" / "schemas" / "top.schema.json"
    jsonschema.validate(found, json.loads(schema.read_text()))
    edge = next(e for e in found["edges"] if (e["source"], e["destination"]) == EDGE)
    assert edge["success_rate"] == 100
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
    command += ["--envoy-admin", sidecar(demo), "--interval", "1"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "40", *command], check=True)
    try:
        with Traffic(demo):
            screen = eventually(
                lambda: subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout,
                lambda text: "bookstore/bookstore-v1" in text and "100.0%" in text,
                "the edge on the screen",
            )
        assert "bookbuyer/bookbuyer" in screen
        assert "bookstore/bookstore-split" in screen and "Progressing" in screen and "1 of 2" in screen
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
