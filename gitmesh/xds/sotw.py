"""State-of-the-world ADS for one stream, free of I/O: requests and wake-ups in, encoded
``DiscoveryResponse`` bytes out, assembled from the snapshot's shared ``Any`` encodings."""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources, wire
from gitmesh.xds.snapshot import EncodedResource, Snapshot
from gitmesh.xds.subscriptions import Names, OnNack, capped, push_order, subscription


def _body(version: str, type_url: str, items: Iterable[EncodedResource]) -> bytes:
    """A serialized DiscoveryResponse but its nonce: version_info=1, resources=2, type_url=4."""
    parts = [wire.field(1, version.encode())]
    for item in items:
        parts += (item.field_head, *item.parts)
    parts.append(wire.field(4, type_url.encode()))
    return b"".join(parts)


class Bodies:
    """Responses as every stream of a snapshot key is sent them, but for the nonce (field 5, which a
    stream appends: a message's fields may come in any order). Written once per snapshot, type and
    subscription, for the streams a publish wakes together; the latest are kept up to
    ``max_bytes``, which a burst needs, no more: writing one again is a join of bytes already
    encoded, while every MiB kept is memory every proxy shares. The servicer shares one between its
    streams.

    Snapshots are held weakly: the bodies of a snapshot go once its key is gone or republished
    (a proxy that left keeps nothing here), at the next ``body`` call."""

    def __init__(self, max_bytes: int = 2 << 20) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        # (snapshot, type, subscription) by identity -> the snapshot (weakly), the subscription
        # (so no other has its id), body
        self._kept: collections.OrderedDict[
            tuple[int, str, int], tuple[weakref.ref[Snapshot], Names | None, bytes]
        ] = collections.OrderedDict()
        self._keys: dict[int, list[tuple[int, str, int]]] = {}  # snapshot id -> its keys above
        # Ids of snapshots gone, appended by the collector in whatever thread freed them
        self._gone: collections.deque[int] = collections.deque()

    def body(self, snapshot: Snapshot, type_url: str, names: Names | None) -> bytes:
        self._forget_gone()
        key = (id(snapshot), type_url, id(names))
        kept = self._kept.get(key)
        if kept is not None and kept[0]() is snapshot:
            self._kept.move_to_end(key)
            return kept[2]
        self._drop(key)  # of a snapshot gone whose id this one has
        encoded = snapshot.encoded(type_url)
        items = encoded.values() if names is None else [item for n, item in encoded.items() if n in names]
        body = _body(snapshot.type_version(type_url), type_url, items)
        if id(snapshot) not in self._keys:
            self._keys[id(snapshot)] = []
            weakref.finalize(snapshot, self._gone.append, id(snapshot))
        self._keys[id(snapshot)].append(key)
        self._kept[key] = (weakref.ref(snapshot), names, body)
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._kept)))
        return body

    def _forget_gone(self) -> None:
        while self._gone:
            for key in self._keys.pop(self._gone.popleft(), ()):
                self._drop(key)

    def _drop(self, key: tuple[int, str, int]) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._bytes -= len(kept[2])

    def __len__(self) -> int:
        return len(self._kept)


class _SotwType:
    __slots__ = ("acked", "force", "names", "nonce", "sent")

    def __init__(self, names: Names | None, held: str) -> None:
        self.names = names  # None: the full set (LDS / CDS)
        self.sent = held  # version the proxy has or was last sent
        self.acked = held
        self.nonce = ""
        self.force = False


class SotwStream:
    """State-of-the-world ADS for one stream: what each type was sent, under which nonce."""

    def __init__(self, on_nack: OnNack, bodies: Bodies | None = None) -> None:
        self._on_nack = on_nack
        self._bodies = bodies if bodies is not None else Bodies()  # an empty one is falsy
        self._types: dict[str, _SotwType] = {}
        self._held: dict[str, str] = {}  # type URL -> version last sent (or the proxy started with)
        self._nonces = 0

    def outdated(self, snapshot: Snapshot) -> bool:
        """Whether ``snapshot`` has a type at another version than the stream holds."""
        return any(snapshot.type_version(url) != version for url, version in self._held.items())

    def acked(self) -> dict[str, str]:
        """type URL -> last version the proxy accepted on this stream."""
        return {url: state.acked for url, state in self._types.items()}

    def on_request(self, request: discovery_pb2.DiscoveryRequest, snapshot: Snapshot | None) -> list[bytes]:
        url = request.type_url
        state = self._types.get(url)
        names = (
            None
            if url in resources.WILDCARD_TYPES
            else subscription(capped(request.resource_names, snapshot, url))
        )
        if not request.response_nonce:
            # A subscription (first, or renewed after reconnect): start from what the proxy holds.
            state = self._types[url] = _SotwType(names, request.version_info)
            self._held[url] = request.version_info
            return self.push(snapshot)
        if state is None or request.response_nonce != state.nonce:
            return []  # an answer to a response that has since been superseded
        if request.HasField("error_detail"):
            self._on_nack(url, state.sent, request.error_detail.message)
            return []
        state.acked = request.version_info
        if names != state.names:
            state.names = names
            state.force = True
        return self.push(snapshot)

    def push(self, snapshot: Snapshot | None) -> list[bytes]:
        """Responses for every type whose content moved past what the stream holds, CDS first."""
        if snapshot is None:
            return []
        out = []
        clusters_sent = False
        for url in push_order(self._types):
            state = self._types[url]
            version = snapshot.type_version(url)
            resend = state.force or (url == resources.ENDPOINT and clusters_sent)
            if version == state.sent and not resend:
                continue
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent = version
            state.force = False
            self._held[url] = version
            body = self._bodies.body(snapshot, url, state.names)
            out.append(body + wire.field(5, state.nonce.encode()))
            clusters_sent |= url == resources.CLUSTER
        return out


__all__ = ["Bodies", "SotwStream"]
