"""The built wheel alone: installed into a fresh virtual environment, its gitmesh command runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_REPO, REPO_ROOT

pytestmark = pytest.mark.integration


def test_the_wheel_installs_and_its_command_plans(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # setuptools builds in the tree's build/: a copy left there by an earlier build would hide a
    # package file the tree lacks now.
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, REPO_ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("gitmesh-*-py3-none-any.whl")
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    # The dependencies are this environment's (no index needed); gitmesh itself is only the wheel's.
    site = Path(
        subprocess.run(
            [fresh / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            fresh / "bin" / "python",
            "install",
            "--quiet",
            "--no-deps",
            wheel,
        ],
        check=True,
        capture_output=True,
    )
    command = fresh / "bin" / "gitmesh"
    workdir = tmp_path / "work"
    shutil.copytree(EXAMPLE_REPO, workdir / "mesh")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {
        "XDG_STATE_HOME": str(tmp_path / "state")
    }
    where = subprocess.run(
        [fresh / "bin" / "python", "-c", "import gitmesh; print(gitmesh.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=workdir,
    ).stdout
    assert where.startswith(str(site)), where  # not this checkout's source
    shown = subprocess.run([command, "--help"], capture_output=True, text=True, env=env, cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "Examples:" in shown.stdout
    planned = subprocess.run(
        [command, "plan", "mesh", "-o", "json"], capture_output=True, text=True, env=env, cwd=workdir
    )
    assert planned.returncode == 0, planned.stderr
    assert '"format_version"' in planned.stdout
    explained = subprocess.run([command, "explain", "GM104", "-o", "json"], capture_output=True, text=True)
    assert explained.returncode == 0 and '"GM104"' in explained.stdout, explained.stderr
    # The console's scripts and style, its layout and chart libraries among them, are in the wheel.
    served = subprocess.run(
        [
            fresh / "bin" / "python",
            "-c",
            "from gitmesh.controller import console as c; print(*(len(c.static(n)) for n in c.STATIC))",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert served.returncode == 0, served.stderr
    assert all(int(size) > 500 for size in served.stdout.split()), served.stdout
