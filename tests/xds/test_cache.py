"""The snapshot cache without gRPC: versions, consistency and who gets woken."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2

from gitmesh.xds import resources
from gitmesh.xds.cache import MAX_NACK_MESSAGE, MAX_NACKS_PER_NODE, SnapshotCache, clipped
from gitmesh.xds.snapshot import EMPTY_VERSION, Snapshot, encode
from tests.xds import builders as b


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param((b.eds_cluster("a"), b.assignment("a", 1)), [], id="eds-with-endpoints"),
        pytest.param((b.static_cluster("a", 1),), [], id="static-needs-no-endpoints"),
        pytest.param(
            (b.eds_cluster("a"),),
            ["cluster 'a' uses EDS but load assignment 'a' is missing"],
            id="eds-missing",
        ),
        pytest.param(
            (b.listener("l", 1, "r"),),
            ["listener 'l' loads route configuration 'r', which is missing"],
            id="rds-missing",
        ),
        pytest.param((b.listener("l", 1, "r"), b.route("r", body="hi")), [], id="rds-present"),
    ],
)
def test_consistency_errors(items: tuple, expected: list[str]) -> None:
    assert b.snapshot("v", *items).consistency_errors() == expected


def test_consistency_catches_misfiled_resources() -> None:
    snapshot = Snapshot("v", {resources.CLUSTER: {"x": b.static_cluster("y", 1), "r": b.route("r", body="")}})
    assert snapshot.consistency_errors() == [
        f"{resources.CLUSTER}: resource keyed 'x' is named 'y'",
        f"{resources.CLUSTER}: resource 'r' is a {resources.ROUTE}",
    ]


def test_set_snapshot_refuses_inconsistent_snapshot() -> None:
    cache = SnapshotCache()
    with pytest.raises(ValueError, match="load assignment 'a' is missing"):
        cache.set_snapshot("n", b.snapshot("v", b.eds_cluster("a")))
    assert cache.snapshot("n") is None


def test_type_versions_follow_content_only() -> None:
    one = b.mesh("v1")
    again = b.mesh("v2")  # same content, another label
    moved = b.mesh("v3", upstream_port=9001)
    for url in resources.PUSH_ORDER:
        assert one.type_version(url) == again.type_version(url)
    assert moved.type_version(resources.ENDPOINT) != one.type_version(resources.ENDPOINT)
    for url in (resources.CLUSTER, resources.LISTENER, resources.ROUTE):
        assert moved.type_version(url) == one.type_version(url)
    assert one.type_version(resources.SECRET) == EMPTY_VERSION


def test_identical_resources_share_one_encoding() -> None:
    first = b.mesh("v1")
    second = b.mesh("v2", upstream_port=9001)
    assert first.encoded(resources.CLUSTER)["web"] is second.encoded(resources.CLUSTER)["web"]
    assert first.encoded(resources.ENDPOINT)["web"] is not second.encoded(resources.ENDPOINT)["web"]


def test_an_encoding_is_the_message_packed_in_any() -> None:
    cluster = b.eds_cluster("web")
    packed = any_pb2.Any(
        type_url=resources.CLUSTER, value=cluster.SerializeToString(deterministic=True)
    ).SerializeToString(deterministic=True)
    encoded = encode("web", cluster)
    assert b"".join(encoded.parts) == packed and encoded.size == len(packed)


def test_watchers_wake_only_when_their_held_version_differs() -> None:
    cache = SnapshotCache()
    first = b.mesh("v1")
    cache.set_snapshot("a", first)
    woken: list[str] = []
    listeners_only = cache.watch("a", lambda: woken.append("listeners"))
    listeners_only.held[resources.LISTENER] = first.type_version(resources.LISTENER)
    clusters = cache.watch("a", lambda: woken.append("clusters"))
    clusters.held[resources.CLUSTER] = first.type_version(resources.CLUSTER)
    endpoints = cache.watch("a", lambda: woken.append("endpoints"))
    endpoints.held[resources.ENDPOINT] = first.type_version(resources.ENDPOINT)
    other_node = cache.watch("b", lambda: woken.append("other node"))
    other_node.held[resources.ENDPOINT] = ""

    cache.set_snapshot("a", b.mesh("v2"))  # same content: nobody
    assert woken == []
    cache.set_snapshot("a", b.mesh("v3", upstream_port=9001))  # endpoints only
    assert woken == ["endpoints"]

    endpoints.close()
    cache.set_snapshot("a", b.mesh("v4", upstream_port=9002))
    assert woken == ["endpoints"]
    assert cache.watch_count("a") == 2
    for watch in (listeners_only, clusters, other_node):
        watch.close()
    assert cache.watch_count("a") == 0


def test_node_key_is_pluggable() -> None:
    cache = SnapshotCache(node_key=lambda node: node.cluster)
    assert cache.key_for(base_pb2.Node(id="sidecar-1", cluster="bookstore")) == "bookstore"
    assert SnapshotCache().key_for(base_pb2.Node(id="sidecar-1", cluster="bookstore")) == "sidecar-1"


def test_version_and_nacks() -> None:
    cache = SnapshotCache()
    assert cache.version("n", resources.CLUSTER) is None
    cache.set_snapshot("n", b.mesh("v1"))
    assert cache.version("n", resources.CLUSTER) == b.mesh("x").type_version(resources.CLUSTER)
    cache.record_nack("n", resources.LISTENER, "abc", "bad regex")
    [nack] = cache.nacks("n")
    assert (nack.type_url, nack.version, nack.message) == (resources.LISTENER, "abc", "bad regex")
    assert cache.nacks("other") == []


def test_a_rejection_is_kept_clipped_and_only_the_latest_few() -> None:
    cache = SnapshotCache()
    for i in range(MAX_NACKS_PER_NODE + 5):
        cache.record_nack("n", resources.LISTENER, str(i), "é" * MAX_NACK_MESSAGE)
    kept = cache.nacks("n")
    assert [n.version for n in kept] == [str(i) for i in range(5, MAX_NACKS_PER_NODE + 5)]
    # Cut at a character's boundary, with how long it was.
    assert kept[0].message == "é" * (MAX_NACK_MESSAGE // 2) + f" [truncated: {2 * MAX_NACK_MESSAGE:,} bytes]"
    assert clipped("short") == "short"


def test_released_is_told_when_the_last_stream_of_a_key_closes() -> None:
    released: list[str] = []
    cache = SnapshotCache(released=released.append)
    first, second = cache.watch("n", lambda: None), cache.watch("n", lambda: None)
    first.close()
    assert released == []
    second.close()
    assert released == ["n"]
