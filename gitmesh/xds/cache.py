"""Snapshots per proxy, the versions each stream holds, and the NACKs proxies sent.

The cache knows nothing about gRPC nor about nodes: it is keyed by whatever
its publisher keys snapshots by. The server registers a ``Watch`` per stream
with a wake-up callback and the stream's own test of whether a snapshot
differs from what it holds. ``set_snapshot`` wakes only the watches of that
key that are outdated by the new snapshot, so a change for one proxy never
touches the streams of another, and a change to clusters alone leaves a
stream that already has the listeners asleep.

All methods are safe to call from any thread; wake-up callbacks run on the
caller's thread and must only schedule work.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gitmesh.xds.snapshot import Snapshot

# A proxy may reject configuration as often and as wordily as it likes: what is kept of it is bounded.
MAX_NACKS_PER_NODE = 10
MAX_NACK_MESSAGE = 4096  # bytes of a rejection's text kept (Envoy's own reasons are far shorter)


def clipped(message: str, limit: int = MAX_NACK_MESSAGE) -> str:
    """``message`` cut to ``limit`` bytes of UTF-8, with a marker saying how long it was."""
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[:limit].decode(errors="ignore") + f" [truncated: {len(data):,} bytes]"


@dataclass(frozen=True)
class Nack:
    """A response a proxy rejected: which type, which version, Envoy's reason, and when."""

    type_url: str
    version: str
    message: str
    at: float


class Watch:
    """One stream's interest in a key's snapshots."""

    __slots__ = ("_cache", "_wake", "key", "outdated")

    def __init__(
        self, cache: SnapshotCache, key: str, wake: Callable[[], None], outdated: Callable[[Snapshot], bool]
    ) -> None:
        self._cache = cache
        self._wake = wake
        self.key = key
        self.outdated = outdated

    def close(self) -> None:
        self._cache._unwatch(self)


class SnapshotCache:
    """The latest consistent snapshot per key, and who is watching it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, set[Watch]] = {}
        self._nacks: dict[str, deque[Nack]] = {}

    def set_snapshot(self, key: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``key``; refuse it if Envoy could not load it as a whole."""
        errors = snapshot.consistency_errors()
        if errors:
            raise ValueError(f"inconsistent snapshot {snapshot.version!r} for {key!r}: " + "; ".join(errors))
        with self._lock:
            self._snapshots[key] = snapshot
            to_wake = [w for w in self._watches.get(key, ()) if w.outdated(snapshot)]
        for watch in to_wake:
            watch._wake()

    def snapshot(self, key: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(key)

    def clear_snapshot(self, key: str) -> None:
        """Forget a proxy; its streams keep what they have until a new snapshot arrives."""
        with self._lock:
            self._snapshots.pop(key, None)
            self._nacks.pop(key, None)

    def version(self, key: str, type_url: str) -> str | None:
        """The current version of one type for ``key``, or None when it has no snapshot."""
        snapshot = self.snapshot(key)
        return None if snapshot is None else snapshot.type_version(type_url)

    def watch(self, key: str, wake: Callable[[], None], outdated: Callable[[Snapshot], bool]) -> Watch:
        """Register a stream; ``wake`` is called when a new snapshot is ``outdated`` for it (it
        differs from what the stream holds). Both are called on the publishing thread."""
        watch = Watch(self, key, wake, outdated)
        with self._lock:
            self._watches.setdefault(key, set()).add(watch)
        return watch

    def watch_count(self, key: str) -> int:
        with self._lock:
            return len(self._watches.get(key, ()))

    def _unwatch(self, watch: Watch) -> None:
        with self._lock:
            watches = self._watches.get(watch.key)
            if watches is None:
                return
            watches.discard(watch)
            if not watches:
                del self._watches[watch.key]

    def record_nack(self, key: str, type_url: str, version: str, message: str) -> Nack:
        """Keep a rejection: its text clipped, only the latest few per key."""
        nack = Nack(type_url, version, clipped(message), time.time())
        with self._lock:
            self._nacks.setdefault(key, deque(maxlen=MAX_NACKS_PER_NODE)).append(nack)
        return nack

    def nacks(self, key: str) -> list[Nack]:
        """The most recent rejections by ``key``'s proxies, oldest first."""
        with self._lock:
            return list(self._nacks.get(key, ()))


__all__ = [
    "MAX_NACKS_PER_NODE",
    "MAX_NACK_MESSAGE",
    "Nack",
    "SnapshotCache",
    "Watch",
    "clipped",
]
