"""A stop signal ends ``gitmesh run`` within its deadline, even when the work under way hangs."""

from __future__ import annotations

import subprocess
import sys
import time


def test_work_that_hangs_past_the_deadline_is_cut_short() -> None:
    # The main thread hangs as an apply to a cluster that stopped answering would.
    hang = (
        "import asyncio, time\n"
        "from gitmesh.controller import run\n"
        "run.STOP_DEADLINE = 0.5\n"
        "run._stopping(asyncio.Event())\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", hang], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 20
    assert "exiting now" in done.stderr
