"""``gitmesh run`` as a controller, started as a real process for tests and benchmarks."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gitmesh.demo import eventually, free_port
from gitmesh.sync import webhook


class RunningController:
    """One ``gitmesh run`` process with its HTTP port; ``args`` choose the sources and the backend,
    ``open_files`` the (soft, hard) limit on its open files."""

    def __init__(
        self, workdir: Path, args: Sequence[str | Path], open_files: tuple[int, int] | None = None
    ) -> None:
        self.workdir = workdir
        self.args = [str(a) for a in args]
        self.open_files = open_files
        self.http_port = free_port()
        self.xds_port = free_port()
        self.log = workdir / "gitmesh-run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningController:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitmesh",
                    "run",
                    *self.args,
                    "--http-address",
                    f"127.0.0.1:{self.http_port}",
                    "--xds-address",
                    f"127.0.0.1:{self.xds_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self._limit if self.open_files else None,
            )
        self.wait(lambda s: s is not None, "the controller's HTTP port answering", timeout=60)
        return self

    def _limit(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    def stop(self) -> int:
        """SIGTERM; the exit code (the controller finishes what it does and exits 0)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"gitmesh run did not stop on SIGTERM:\n{self.log.read_text()}") from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method="POST", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    def hook(self, payload: dict[str, Any], secret: bytes | None, *, github: bool = True) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if github:
            headers[webhook.EVENT_HEADER] = "push"
        if secret is not None:
            headers[webhook.SIGNATURE_HEADER] = webhook.signature(secret, body)
        return self.post("/hook", body, headers)

    def status(self) -> dict[str, Any] | None:
        """Each source's record by name, as the controller serves it; None while it is not up."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"gitmesh run exited with {self.process.returncode}:\n{self.log.read_text()}"
            )
        try:
            code, body = self.get("/status")
        except OSError:
            return None
        return {s["source"]: s for s in json.loads(body)["sources"]} if code == 200 else None

    def metric(self, line_start: str) -> float:
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait(self, want: Callable[[Any], bool], what: str, timeout: float = 60) -> Any:
        try:
            return eventually(self.status, want, what, timeout)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n--- gitmesh run log ---\n{self.log.read_text()[-4000:]}") from None

    def wait_applied(self, sha: str, source: str = "default", timeout: float = 60) -> dict[str, Any]:
        status = self.wait(
            lambda s: bool(s) and s.get(source, {}).get("lastAppliedRevision") == sha,
            f"{source} applying {sha[:12]}",
            timeout,
        )
        return dict(status[source])

    def wait_result(self, sha: str, result: str, source: str = "default") -> dict[str, Any]:
        """Until the latest reconcile of ``source`` is of ``sha`` and ended in ``result``."""

        def done(s: Any) -> bool:
            history = (s or {}).get(source, {}).get("history") or []
            return bool(history) and (history[0]["revision"], history[0]["result"]) == (sha, result)

        return dict(self.wait(done, f"{source}: {sha[:12]} {result}")[source])


def condition(record: dict[str, Any], type_: str) -> tuple[str, str]:
    (c,) = [c for c in record["conditions"] if c["type"] == type_]
    return c["status"], c["reason"]
