"""One proxy's complete configuration at one version, encoded once.

A snapshot is immutable: its resources are serialized into ``Any`` bytes when
it is built, and identical resources (the same bytes) share one
``EncodedResource`` across every snapshot alive in the process. Thousands of
proxies that see the same cluster therefore hold one copy of it, and the
server writes those bytes to every stream without encoding again.

Messages handed to a snapshot belong to it: do not mutate them afterwards.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from gitmesh.xds import resources, wire

_HCM_URL = resources.type_url(hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name)


class EncodedResource:
    """A resource serialized as ``google.protobuf.Any``, with a content version.

    The serialization is kept in ``parts`` (one, unless the resource came in pieces that other
    resources share: see ``Pieces``); written out, they are the Any's bytes in order."""

    __slots__ = ("__weakref__", "delta_entry", "field_head", "name", "parts", "size", "version")

    def __init__(self, name: str, version: str, parts: tuple[bytes, ...]) -> None:
        self.name = name
        self.version = version
        self.parts = parts
        self.size = sum(map(len, parts))
        # Key and length that make it field 2 of the message holding it: DiscoveryResponse.resources
        # and a delta Resource.resource alike.
        self.field_head = wire.field_head(2, self.size)
        self.delta_entry: tuple[bytes, ...] | None = None  # its delta Resource, written when first sent

    def __repr__(self) -> str:
        return f"EncodedResource({self.name!r}, version={self.version!r}, {self.size} bytes)"


class Pieces(Protocol):
    """A resource that arrives serialized, in pieces it shares with other resources (their bytes
    are kept once however many resources hold them)."""

    DESCRIPTOR: Descriptor

    def serialized_parts(self) -> tuple[bytes, ...]: ...


# (name, digest of the Any bytes) -> the one shared encoding while any snapshot holds it.
_interned: weakref.WeakValueDictionary[tuple[str, bytes], EncodedResource] = weakref.WeakValueDictionary()


def _version(digest: bytes) -> str:
    return digest.hex()[:16]


# Proxies are handed the same message objects for what they share (translate.Translator), so an
# object is serialized once, not once per snapshot: that keeps a republish to thousands of
# proxies cheap. Entries hold their message, so an id is never reused while it is cached.
_MAX_BY_OBJECT = 200_000
_by_object: collections.OrderedDict[int, tuple[Message | Pieces, str, EncodedResource]] = (
    collections.OrderedDict()
)
_by_object_lock = threading.Lock()


def encode(name: str, message: Message | Pieces) -> EncodedResource:
    """The shared encoding of ``message`` (which must not change once handed over)."""
    with _by_object_lock:
        entry = _by_object.get(id(message))
        if entry is not None and entry[0] is message and entry[1] == name:
            _by_object.move_to_end(id(message))
            return entry[2]
    found = _encode(name, message)
    with _by_object_lock:
        _by_object[id(message)] = (message, name, found)
        if len(_by_object) > _MAX_BY_OBJECT:
            _by_object.popitem(last=False)
    return found


def _encode(name: str, message: Message | Pieces) -> EncodedResource:
    """Serialize ``message`` deterministically and return the shared encoding of those bytes."""
    type_field = wire.field(1, resources.type_url(message.DESCRIPTOR.full_name).encode())
    if isinstance(message, Message):
        value = message.SerializeToString(deterministic=True)
        parts: tuple[bytes, ...] = (type_field + wire.field(2, value) if value else type_field,)
    else:  # Any{type_url=1, value=2}, the value left in its pieces
        pieces = message.serialized_parts()
        parts = (type_field + wire.field_head(2, sum(map(len, pieces))), *pieces)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    key = (name, digest.digest())
    found = _interned.get(key)
    if found is None:
        found = EncodedResource(name, _version(key[1]), parts)
        _interned[key] = found
    return found


def _type_version(encoded: Mapping[str, EncodedResource]) -> str:
    """A version that changes exactly when some resource of the type is added, removed or changed."""
    h = hashlib.sha256()
    for name in sorted(encoded):
        h.update(name.encode())
        h.update(b"\0")
        h.update(encoded[name].version.encode())
        h.update(b"\0")
    return _version(h.digest())


EMPTY_VERSION = _type_version({})


def eds_name(cluster: cluster_pb2.Cluster) -> str | None:
    """The ClusterLoadAssignment an EDS cluster waits for, or None for other cluster types."""
    if cluster.WhichOneof("cluster_discovery_type") != "type" or cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def _route_names(listener: Message) -> Iterator[str]:
    """RDS names that an HttpConnectionManager in the listener's filter chains loads."""
    chains = list(listener.filter_chains)  # type: ignore[attr-defined]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)  # type: ignore[attr-defined]
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url != _HCM_URL:
                continue
            manager = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            if manager.HasField("rds"):
                yield manager.rds.route_config_name


_MAX_SHARED = 10_000
_shared_results: collections.OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = (
    collections.OrderedDict()
)
_shared_lock = threading.Lock()
T = TypeVar("T")


def _shared(args: tuple[Any, ...], compute: Callable[..., T]) -> T:
    """``compute(*args)``, remembered for these very objects (held, so their ids stay theirs)."""
    key = (id(compute.__code__), *map(id, args))
    with _shared_lock:
        entry = _shared_results.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], args, strict=True)):
            _shared_results.move_to_end(key)
            return entry[1]  # type: ignore[no-any-return]
    value = compute(*args)
    with _shared_lock:
        _shared_results[key] = (args, value)
        if len(_shared_results) > _MAX_SHARED:
            _shared_results.popitem(last=False)
    return value


def forget_shared() -> None:
    """Drop the memoised encodings and results, e.g. when a new generation of messages replaces
    the old: snapshots keep what they encoded; the memo only keeps old messages alive."""
    with _by_object_lock:
        _by_object.clear()
    with _shared_lock:
        _shared_results.clear()


def forget_encodings(snapshot: Snapshot, type_urls: Iterable[str]) -> None:
    """Drop what the memos keep of ``snapshot``'s maps of these types and of their resources: maps
    built for one proxy alone, which no later snapshot asks for once that proxy is gone. A resource
    in them that other snapshots share is found again by its bytes (one hash) when next encoded."""
    for url in type_urls:
        by_name = snapshot.resources.get(url)
        if by_name is None:
            continue
        with _by_object_lock:
            for message in by_name.values():
                encoded = _by_object.get(id(message))
                if encoded is not None and encoded[0] is message:
                    del _by_object[id(message)]
        with _shared_lock:
            for args, compute in (((by_name,), _encode_all), ((url, by_name), _misfiled)):
                key = (id(compute.__code__), *map(id, args))
                result = _shared_results.get(key)
                if result is not None and all(a is b for a, b in zip(result[0], args, strict=True)):
                    del _shared_results[key]


def _encode_all(by_name: Mapping[str, Message | Pieces]) -> tuple[dict[str, EncodedResource], str]:
    encoded = {name: encode(name, message) for name, message in by_name.items()}
    return encoded, _type_version(encoded)


def _misfiled(url: str, by_name: Mapping[str, Message | Pieces]) -> list[str]:
    errors = []
    for name, message in by_name.items():
        actual = resources.type_url(message.DESCRIPTOR.full_name)
        if actual != url:
            errors.append(f"{url}: resource {name!r} is a {actual}")
            continue
        own = getattr(message, "cluster_name" if url == resources.ENDPOINT else "name", name)
        if own != name:
            errors.append(f"{url}: resource keyed {name!r} is named {own!r}")
    return errors


def _missing_assignments(clusters: Mapping[str, Message], assignments: Mapping[str, Message]) -> list[str]:
    errors = []
    for name, cluster in sorted(clusters.items()):
        wanted = eds_name(cluster) if isinstance(cluster, cluster_pb2.Cluster) else None
        if wanted is not None and wanted not in assignments:
            errors.append(f"cluster {name!r} uses EDS but load assignment {wanted!r} is missing")
    return errors


@dataclass(frozen=True)
class Snapshot:
    """Every resource of every type for one proxy, labelled with ``version`` (e.g. a git sha).

    The label is for people (and delta's ``system_version_info``). What a proxy
    is sent is decided by the per-type versions, which hash the content.
    """

    version: str
    resources: Mapping[str, Mapping[str, Message | Pieces]]
    _encoded: dict[str, dict[str, EncodedResource]] = field(init=False, repr=False, compare=False)
    _versions: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Maps are kept, not copied: callers hand them over for good (translate.Translator gives
        # thousands of snapshots the same cluster and endpoint maps, encoded and versioned once).
        frozen = dict(self.resources)
        encoded = {url: _shared((by_name,), _encode_all) for url, by_name in frozen.items()}
        object.__setattr__(self, "resources", frozen)
        object.__setattr__(self, "_encoded", {url: e for url, (e, _) in encoded.items()})
        object.__setattr__(self, "_versions", {url: v for url, (_, v) in encoded.items()})

    def type_version(self, type_url: str) -> str:
        """The version of one type; a type the snapshot lacks has the version of an empty set."""
        return self._versions.get(type_url, EMPTY_VERSION)

    def encoded(self, type_url: str) -> Mapping[str, EncodedResource]:
        return self._encoded.get(type_url, {})

    def eds_names(self, cluster_names: Iterable[str]) -> set[str]:
        """The load assignments that the named clusters (those using EDS) depend on."""
        clusters = self.resources.get(resources.CLUSTER, {})
        found: set[str] = set()
        for name in cluster_names:
            cluster = clusters.get(name)
            if isinstance(cluster, cluster_pb2.Cluster) and (assignment := eds_name(cluster)):
                found.add(assignment)
        return found

    def consistency_errors(self) -> list[str]:
        """Every problem that would leave Envoy warming forever or loading the wrong thing."""
        errors: list[str] = []
        for url, by_name in self.resources.items():
            errors += _shared((url, by_name), _misfiled)
        clusters = self.resources.get(resources.CLUSTER, {})
        errors += _shared((clusters, self.resources.get(resources.ENDPOINT, {})), _missing_assignments)
        routes = self.resources.get(resources.ROUTE, {})
        for name, listener in sorted(self.resources.get(resources.LISTENER, {}).items()):
            if resources.type_url(listener.DESCRIPTOR.full_name) != resources.LISTENER:
                continue
            if not isinstance(listener, Message):  # a listener arrives as a message, never in pieces
                continue
            for route in _route_names(listener):
                if route not in routes:
                    errors.append(f"listener {name!r} loads route configuration {route!r}, which is missing")
        return errors


__all__ = [
    "EMPTY_VERSION",
    "EncodedResource",
    "Snapshot",
    "eds_name",
    "encode",
    "forget_encodings",
    "forget_shared",
]
