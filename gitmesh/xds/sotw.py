"""State-of-the-world ADS for one stream, free of I/O: requests and wake-ups in, encoded
``DiscoveryResponse`` bytes out, assembled from the snapshot's shared ``Any`` encodings."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources, wire
from gitmesh.xds.snapshot import EncodedResource, Snapshot
from gitmesh.xds.subscriptions import Names, OnNack, capped, push_order, subscription


def _response(version: str, type_url: str, nonce: str, items: Iterable[EncodedResource]) -> bytes:
    """A serialized DiscoveryResponse: version_info=1, resources=2, type_url=4, nonce=5."""
    parts = [wire.field(1, version.encode())]
    for item in items:
        parts += (item.field_head, *item.parts)
    parts += (wire.field(4, type_url.encode()), wire.field(5, nonce.encode()))
    return b"".join(parts)


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

    def __init__(self, on_nack: OnNack) -> None:
        self._on_nack = on_nack
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
            encoded = snapshot.encoded(url)
            if state.names is None:
                items: Iterable[EncodedResource] = encoded.values()
            else:
                items = [item for name, item in encoded.items() if name in state.names]
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent = version
            state.force = False
            self._held[url] = version
            out.append(_response(version, url, state.nonce, items))
            clusters_sent |= url == resources.CLUSTER
        return out


__all__ = ["SotwStream"]
