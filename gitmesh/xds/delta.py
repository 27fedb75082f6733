"""Incremental (delta) ADS for one stream, free of I/O: requests and wake-ups in, encoded
``DeltaDiscoveryResponse`` bytes out, with only the resources that differ from what the proxy holds."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping

from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources, wire
from gitmesh.xds.snapshot import EncodedResource, Snapshot
from gitmesh.xds.subscriptions import WILDCARD, Names, OnNack, capped, push_order, subscription


def _response(
    system_version: str, type_url: str, nonce: str, items: Iterable[EncodedResource], removed: Iterable[str]
) -> bytes:
    """A serialized DeltaDiscoveryResponse of Resource{version=1, resource=2, name=3} entries."""
    parts = [wire.field(1, system_version.encode())]
    for item in items:
        parts += item.delta_entry()
    parts += (wire.field(4, type_url.encode()), wire.field(5, nonce.encode()))
    parts += (wire.field(6, name.encode()) for name in removed)
    return b"".join(parts)


class _Held:
    """Which version of each resource of one type a delta stream's proxy holds.

    Right after a push the proxy holds exactly the snapshot's resources of its subscription, so
    that is what is kept: the snapshot's map and the subscription, both shared with every stream of
    the key, plus the few names where the proxy differs since (None: not held). A per-stream map
    of a thousand clusters would cost more than everything else a stream keeps.
    """

    __slots__ = ("base", "differ", "scope")

    def __init__(self, versions: Mapping[str, str]) -> None:
        self.base: Mapping[str, EncodedResource] = {}
        self.scope: Names | None = None  # None: all of base
        self.differ: dict[str, str | None] = dict(versions)

    def get(self, name: str) -> str | None:
        if name in self.differ:
            return self.differ[name]
        item = self.base.get(name)
        if item is None or (self.scope is not None and name not in self.scope):
            return None
        return item.version

    def names(self) -> Iterator[str]:
        for name in self.base if self.scope is None else self.scope:
            if name in self.base and name not in self.differ:
                yield name
        yield from (name for name, version in self.differ.items() if version is not None)

    def forget(self, name: str) -> bool:
        """The proxy no longer holds ``name``; whether it did."""
        had = self.get(name) is not None
        if had:
            self.differ[name] = None
        return had

    def exactly(self, base: Mapping[str, EncodedResource], scope: Names | None) -> None:
        self.base, self.scope, self.differ = base, scope, {}


class _DeltaType:
    __slots__ = ("acked", "force", "held", "names", "nonce", "sent", "wildcard")

    def __init__(self, held: _Held, wildcard: bool) -> None:
        self.held = held
        self.wildcard = wildcard
        self.names = subscription(())
        self.nonce = ""
        self.sent = ""
        self.acked = ""
        self.force = True  # the first request always gets an answer


class DeltaStream:
    """Incremental ADS for one stream: per resource, the version the proxy has."""

    def __init__(self, on_nack: OnNack) -> None:
        self._on_nack = on_nack
        self._types: dict[str, _DeltaType] = {}
        self._pushed: dict[str, str] = {}  # type URL -> the snapshot's version of it last pushed
        self._nonces = 0

    def outdated(self, snapshot: Snapshot) -> bool:
        """Whether ``snapshot`` has a type at another version than the stream last pushed."""
        return any(snapshot.type_version(url) != version for url, version in self._pushed.items())

    def acked(self) -> dict[str, str]:
        return {url: state.acked for url, state in self._types.items()}

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> list[bytes]:
        url = request.type_url
        state = self._types.get(url)
        changes = bool(request.resource_names_subscribe or request.resource_names_unsubscribe)
        if state is None:
            # Legacy wildcard: LDS / CDS subscribed with no names means "everything".
            wildcard = url in resources.WILDCARD_TYPES and not request.resource_names_subscribe
            versions = request.initial_resource_versions
            held = _Held({sys.intern(name): versions[name] for name in capped(versions, snapshot, url)})
            state = self._types[url] = _DeltaType(held, wildcard)
        elif request.response_nonce:
            if request.response_nonce == state.nonce:
                if request.HasField("error_detail"):
                    self._on_nack(url, state.sent, request.error_detail.message)
                else:
                    state.acked = state.sent
            if not changes:
                return []  # a bare ACK / NACK, or one for a superseded response
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if subscribe:
            state.force = True
        if WILDCARD in subscribe or WILDCARD in unsubscribe:
            state.wildcard = WILDCARD in subscribe
        if changes:
            state.names = subscription(
                capped((state.names | subscribe) - unsubscribe - {WILDCARD}, snapshot, url)
            )
        for name in unsubscribe:
            state.held.forget(name)
        return self.push(snapshot)

    def push(self, snapshot: Snapshot | None) -> list[bytes]:
        """Only the resources that differ from what the proxy has, and the ones it has that are gone."""
        if snapshot is None:
            return []
        out = []
        for url in push_order(self._types):
            state = self._types[url]
            version = snapshot.type_version(url)
            if version == self._pushed.get(url) and not state.force:
                continue
            self._pushed[url] = version
            encoded = snapshot.encoded(url)
            scope = None if state.wildcard else state.names
            held = state.held
            changed = [
                item
                for name, item in encoded.items()
                if (scope is None or name in scope) and held.get(name) != item.version
            ]
            removed = sorted(n for n in held.names() if n not in encoded or not (scope is None or n in scope))
            held.exactly(encoded, scope)  # what it holds once this response is applied
            if not changed and not removed and not (state.force and not state.nonce):
                state.force = False
                continue
            self._nonces += 1
            state.nonce = str(self._nonces)
            state.sent = version
            state.force = False
            out.append(_response(snapshot.version, url, state.nonce, changed, removed))
            if url == resources.CLUSTER and changed:
                self._resend_endpoints(snapshot, [item.name for item in changed])
        return out

    def _resend_endpoints(self, snapshot: Snapshot, clusters: list[str]) -> None:
        """An updated EDS cluster warms until it gets its endpoints again, changed or not."""
        state = self._types.get(resources.ENDPOINT)
        if state is None:
            return
        for name in snapshot.eds_names(clusters):
            if state.held.forget(name):
                state.force = True


__all__ = ["DeltaStream"]
