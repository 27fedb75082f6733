"""The snapshot cache without gRPC: versions, consistency and who gets woken."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import any_pb2

from gitmesh.xds import resources
from gitmesh.xds.cache import MAX_NACK_MESSAGE, MAX_NACKS_PER_NODE, SnapshotCache, clipped
from gitmesh.xds.snapshot import EMPTY_VERSION, Encodings, Snapshot
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


def test_identical_resources_share_one_encoding_of_their_owner() -> None:
    encodings = Encodings()
    first = b.mesh("v1", encodings=encodings)
    second = b.mesh("v2", upstream_port=9001, encodings=encodings)
    assert first.encoded(resources.CLUSTER)["web"] is second.encoded(resources.CLUSTER)["web"]
    assert first.encoded(resources.ENDPOINT)["web"] is not second.encoded(resources.ENDPOINT)["web"]
    # Another owner's snapshots share nothing with these: no table is process-wide.
    assert b.mesh("v1").encoded(resources.CLUSTER)["web"] is not first.encoded(resources.CLUSTER)["web"]


def test_a_message_handed_over_again_is_encoded_once_per_generation() -> None:
    encodings = Encodings()
    clusters = {"web": b.eds_cluster("web")}
    first = Snapshot("v1", {resources.CLUSTER: clusters}, encodings)
    assert Snapshot("v2", {resources.CLUSTER: clusters}, encodings).encoded(
        resources.CLUSTER
    ) is first.encoded(resources.CLUSTER)
    encodings.next_generation()
    again = Snapshot("v3", {resources.CLUSTER: clusters}, encodings)
    assert again.encoded(resources.CLUSTER) is not first.encoded(resources.CLUSTER)  # encoded anew ...
    assert again.encoded(resources.CLUSTER)["web"] is first.encoded(resources.CLUSTER)["web"]  # same bytes


def test_forgetting_a_snapshot_drops_what_was_kept_of_its_own_maps() -> None:
    encodings = Encodings()
    listeners = {"http": b.listener("http", 10000, "http")}
    routes = {"http": b.route("http", cluster="web")}
    first = Snapshot("v1", {resources.LISTENER: listeners, resources.ROUTE: routes}, encodings)
    encodings.forget(first, [resources.LISTENER])
    again = Snapshot("v2", {resources.LISTENER: listeners, resources.ROUTE: routes}, encodings)
    assert again.encoded(resources.LISTENER) is not first.encoded(resources.LISTENER)
    assert again.encoded(resources.ROUTE) is first.encoded(resources.ROUTE)


def test_an_encoding_is_the_message_packed_in_any() -> None:
    cluster = b.eds_cluster("web")
    packed = any_pb2.Any(
        type_url=resources.CLUSTER, value=cluster.SerializeToString(deterministic=True)
    ).SerializeToString(deterministic=True)
    encoded = Encodings().encode("web", cluster)
    assert b"".join(encoded.parts) == packed and encoded.size == len(packed)


def test_watchers_wake_only_when_their_held_version_differs() -> None:
    cache = SnapshotCache()
    first = b.mesh("v1")
    cache.set_snapshot("a", first)
    woken: list[str] = []

    def holds(url: str, version: str) -> Callable[[Snapshot], bool]:
        return lambda snapshot: snapshot.type_version(url) != version

    listeners_only = cache.watch(
        "a",
        lambda: woken.append("listeners"),
        holds(resources.LISTENER, first.type_version(resources.LISTENER)),
    )
    clusters = cache.watch(
        "a",
        lambda: woken.append("clusters"),
        holds(resources.CLUSTER, first.type_version(resources.CLUSTER)),
    )
    endpoints = cache.watch(
        "a",
        lambda: woken.append("endpoints"),
        holds(resources.ENDPOINT, first.type_version(resources.ENDPOINT)),
    )
    other_node = cache.watch("b", lambda: woken.append("other node"), holds(resources.ENDPOINT, ""))

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
