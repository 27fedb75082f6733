"""One proxy's complete configuration at one version, encoded once.

A snapshot is immutable: its resources are serialized into ``Any`` bytes when
it is built, through its owner's ``Encodings``, where identical resources (the
same bytes) share one ``EncodedResource`` across every snapshot the owner
built. Thousands of proxies that see the same cluster therefore hold one copy
of it, and the server writes those bytes to every stream without encoding again.

Messages handed to a snapshot belong to it: do not mutate them afterwards.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Generic, Protocol, TypeVar

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

    __slots__ = ("__weakref__", "_delta_entry", "field_head", "name", "parts", "size", "version")

    def __init__(self, name: str, version: str, parts: tuple[bytes, ...]) -> None:
        self.name = name
        self.version = version
        self.parts = parts
        self.size = sum(map(len, parts))
        # Key and length that make it field 2 of the message holding it: DiscoveryResponse.resources
        # and a delta Resource.resource alike.
        self.field_head = wire.field_head(2, self.size)
        self._delta_entry: tuple[bytes, ...] | None = None

    def delta_entry(self) -> tuple[bytes, ...]:
        """This resource as a Resource{version=1, resource=2, name=3} in field 2 of a
        DeltaDiscoveryResponse: written when first sent, then kept for every stream that sends it."""
        if self._delta_entry is None:
            head = wire.field(1, self.version.encode())
            tail = wire.field(3, self.name.encode())
            size = len(head) + len(self.field_head) + self.size + len(tail)
            self._delta_entry = (wire.field_head(2, size) + head + self.field_head, *self.parts, tail)
        return self._delta_entry

    def __repr__(self) -> str:
        return f"EncodedResource({self.name!r}, version={self.version!r}, {self.size} bytes)"


class Pieces(Protocol):
    """A resource that arrives serialized, in pieces it shares with other resources (their bytes
    are kept once however many resources hold them)."""

    DESCRIPTOR: Descriptor

    def serialized_parts(self) -> tuple[bytes, ...]: ...


def _version(digest: bytes) -> str:
    return digest.hex()[:16]


Args = tuple[object, ...]
T = TypeVar("T")


class _Memo(Generic[T]):
    """Results per tuple of objects, by their ids. An entry holds its objects, so no other object
    can have their ids while it is kept: the same ids are the same objects. The oldest go past
    ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple[int, ...], tuple[Args, T]] = collections.OrderedDict()

    def get(self, args: Args, compute: Callable[[], T]) -> T:
        key = tuple(map(id, args))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[1]
        value = compute()
        with self._lock:
            self._entries[key] = (args, value)
            if len(self._entries) > self._limit:
                self._entries.popitem(last=False)
        return value

    def drop(self, args: Args) -> None:
        with self._lock:
            self._entries.pop(tuple(map(id, args)), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Encodings:
    """The encodings of the messages one owner hands to its snapshots, and what was checked of them.

    Two tables, two lifetimes:

    - by content: identical bytes (same name, same digest) share one ``EncodedResource`` for as
      long as any snapshot holds it, across generations;
    - by object: a message object (and a map of them) handed over again is not serialized or
      checked again. These entries hold their objects, so they last one generation: the owner
      calls ``next_generation`` when new messages replace the old, and ``forget`` when a
      snapshot's own maps will not be handed over again (its proxy is gone).

    ``serve.MeshPublisher`` owns one: proxies are handed the same message objects for what they
    share (``translate.Translator``), so a republish to thousands of proxies encodes each once.
    """

    MAX_OBJECTS = 200_000
    MAX_MAPS = 10_000

    def __init__(self) -> None:
        self._interned: weakref.WeakValueDictionary[tuple[str, bytes], EncodedResource] = (
            weakref.WeakValueDictionary()
        )
        self._interned_lock = threading.Lock()
        # id -> (message, its name, its encoding): the memo of the most numerous objects, kept flat
        self._objects: collections.OrderedDict[int, tuple[Message | Pieces, str, EncodedResource]] = (
            collections.OrderedDict()
        )
        self._objects_lock = threading.Lock()
        self._maps: _Memo[tuple[dict[str, EncodedResource], str]] = _Memo(self.MAX_MAPS)
        self._misfiled: _Memo[list[str]] = _Memo(self.MAX_MAPS)
        self._unassigned: _Memo[list[str]] = _Memo(self.MAX_MAPS)

    def encode(self, name: str, message: Message | Pieces) -> EncodedResource:
        """The shared encoding of ``message`` (which must not change once handed over)."""
        with self._objects_lock:
            kept = self._objects.get(id(message))
            if kept is not None and kept[1] == name:  # held by the entry: the same object
                self._objects.move_to_end(id(message))
                return kept[2]
        found = self._by_content(name, message)
        with self._objects_lock:
            self._objects[id(message)] = (message, name, found)
            if len(self._objects) > self.MAX_OBJECTS:
                self._objects.popitem(last=False)
        return found

    def encode_map(self, by_name: Mapping[str, Message | Pieces]) -> tuple[dict[str, EncodedResource], str]:
        """Each resource's encoding, and the version of them all."""

        def compute() -> tuple[dict[str, EncodedResource], str]:
            encoded = {name: self.encode(name, message) for name, message in by_name.items()}
            return encoded, _type_version(encoded)

        return self._maps.get((by_name,), compute)

    def misfiled(self, url: str, by_name: Mapping[str, Message | Pieces]) -> list[str]:
        return self._misfiled.get((url, by_name), lambda: _misfiled(url, by_name))

    def unassigned(
        self, clusters: Mapping[str, Message | Pieces], assignments: Mapping[str, Message | Pieces]
    ) -> list[str]:
        return self._unassigned.get(
            (clusters, assignments), lambda: _missing_assignments(clusters, assignments)
        )

    def next_generation(self) -> None:
        """New messages replace the old: what was kept by object would only keep the old alive
        (snapshots keep what they encoded)."""
        with self._objects_lock:
            self._objects.clear()
        for memo in (self._maps, self._misfiled, self._unassigned):
            memo.clear()

    def forget(self, snapshot: Snapshot, type_urls: Iterable[str]) -> None:
        """Drop what is kept by object of ``snapshot``'s maps of these types and their resources: maps
        built for one proxy alone. A resource in them that other snapshots share is found again by
        its bytes (one hash) when next encoded."""
        for url in type_urls:
            by_name = snapshot.resources.get(url)
            if by_name is None:
                continue
            with self._objects_lock:
                for message in by_name.values():
                    self._objects.pop(id(message), None)
            self._maps.drop((by_name,))
            self._misfiled.drop((url, by_name))

    def _by_content(self, name: str, message: Message | Pieces) -> EncodedResource:
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
        with self._interned_lock:
            found = self._interned.get(key)
            if found is None:
                found = EncodedResource(name, _version(key[1]), parts)
                self._interned[key] = found
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


def _missing_assignments(
    clusters: Mapping[str, Message | Pieces], assignments: Mapping[str, Message | Pieces]
) -> list[str]:
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
    encodings: InitVar[Encodings | None] = None
    """The owner's ``Encodings``, for snapshots that share messages; None: encoded on their own."""
    _encoded: dict[str, dict[str, EncodedResource]] = field(init=False, repr=False, compare=False)
    _versions: dict[str, str] = field(init=False, repr=False, compare=False)
    _errors: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self, encodings: Encodings | None) -> None:
        # Maps are kept, not copied: callers hand them over for good (translate.Translator gives
        # thousands of snapshots the same cluster and endpoint maps, encoded and versioned once).
        encodings = encodings or Encodings()
        frozen = dict(self.resources)
        encoded = {url: encodings.encode_map(by_name) for url, by_name in frozen.items()}
        object.__setattr__(self, "resources", frozen)
        object.__setattr__(self, "_encoded", {url: e for url, (e, _) in encoded.items()})
        object.__setattr__(self, "_versions", {url: v for url, (_, v) in encoded.items()})
        object.__setattr__(self, "_errors", self._check(encodings))

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
        return list(self._errors)

    def _check(self, encodings: Encodings) -> list[str]:
        errors: list[str] = []
        for url, by_name in self.resources.items():
            errors += encodings.misfiled(url, by_name)
        clusters = self.resources.get(resources.CLUSTER, {})
        errors += encodings.unassigned(clusters, self.resources.get(resources.ENDPOINT, {}))
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
    "Encodings",
    "Pieces",
    "Snapshot",
    "eds_name",
]
