"""Giving memory back to the operating system after bursts of writing."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable


def trim_free_memory() -> None:
    """glibc's ``malloc_trim(0)``: the free pages of every heap go back to the OS (elsewhere: nothing)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class AfterBursts:
    """Calls ``release`` (in a thread) once writing has paused for ``settle`` seconds after a burst.

    A push to every proxy holds a response per stream at once (a split change: a thousand route
    configurations of 240 KiB). Sent and freed, that memory stays in glibc's heaps, as the process's
    RSS, until given back; a server that pushes in bursts and idles in between gives it back."""

    def __init__(self, release: Callable[[], None] = trim_free_memory, settle: float = 1.0) -> None:
        self._release = release
        self._settle = settle
        self._writing = 0
        self._wrote = False
        self._timer: asyncio.TimerHandle | None = None
        self.releases = 0

    def begin(self) -> None:
        self._writing += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def end(self, wrote: bool) -> None:
        self._writing -= 1
        self._wrote |= wrote
        if not self._writing and self._wrote:
            self._timer = asyncio.get_running_loop().call_later(self._settle, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wrote = False
        self.releases += 1
        asyncio.get_running_loop().run_in_executor(None, self._release)

    def close(self) -> None:
        """No release after the server stops (its loop may be shutting its threads down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["AfterBursts", "trim_free_memory"]
