"""What a stream keeps between responses is shared with every stream that holds the same thing:
a thousand proxies of one key must not each keep a map of a thousand clusters."""

from __future__ import annotations

import asyncio

from envoy.service.discovery.v3 import discovery_pb2

from gitmesh.xds import resources
from gitmesh.xds.delta import DeltaStream
from gitmesh.xds.memory import AfterBursts
from gitmesh.xds.snapshot import Snapshot
from gitmesh.xds.sotw import SotwStream
from gitmesh.xds.subscriptions import MAX_UNKNOWN_NAMES, subscription
from tests.xds import builders as b

CDS, EDS = resources.CLUSTER, resources.ENDPOINT


def ignore_nack(type_url: str, version: str, message: str) -> None:
    raise AssertionError(f"unexpected NACK of {type_url}: {message}")


def two_clusters(version: str, port_a: int = 1) -> Snapshot:
    return b.snapshot(
        version, b.eds_cluster("a"), b.eds_cluster("b"), b.assignment("a", port_a), b.assignment("b", 2)
    )


def test_streams_naming_the_same_resources_share_one_set() -> None:
    first = subscription(["a", "b"])
    assert subscription(iter(["b", "a", "b"])) is first
    assert first == {"a", "b"}
    assert subscription(["a"]) is not first


def test_sotw_streams_share_their_subscription() -> None:
    snapshot = two_clusters("v1")
    streams = [SotwStream(ignore_nack) for _ in range(2)]
    for stream, names in zip(streams, (["a", "b"], ["b", "a"]), strict=True):
        (response,) = stream.on_request(
            discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names), snapshot
        )
        sent = discovery_pb2.DiscoveryResponse.FromString(response)
        assert len(sent.resources) == 2
    assert streams[0]._types[EDS].names is streams[1]._types[EDS].names


def test_delta_streams_of_one_key_share_what_their_proxies_hold() -> None:
    snapshot = two_clusters("v1")
    streams = [DeltaStream(ignore_nack) for _ in range(2)]
    for stream in streams:
        stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CDS), snapshot)
        stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=["a", "b"]), snapshot
        )
    held = [stream._types[EDS].held for stream in streams]
    assert held[0].base is held[1].base is snapshot.encoded(EDS)
    assert held[0].scope is held[1].scope
    assert held[0].differ == held[1].differ == {}
    assert {name: held[0].get(name) for name in "ab"} == {
        name: snapshot.encoded(EDS)[name].version for name in "ab"
    }

    # One proxy drops "a": only its stream differs, and a change to "a" reaches only the other.
    streams[0].on_request(
        discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, resource_names_unsubscribe=["a"]), snapshot
    )
    assert held[0].get("a") is None and held[1].get("a") is not None
    changed = two_clusters("v2", port_a=7)
    assert streams[0].push(changed) == []
    (response,) = streams[1].push(changed)
    update = discovery_pb2.DeltaDiscoveryResponse.FromString(response)
    assert [resource.name for resource in update.resources] == ["a"]
    assert held[1].get("a") == changed.encoded(EDS)["a"].version


def test_memory_is_given_back_once_after_a_burst_of_responses() -> None:
    released: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bursts = AfterBursts(release=lambda: released.append(loop.time()), settle=0.05)
        for _ in range(3):  # overlapping answers: one burst
            bursts.begin()
        bursts.end(wrote=True)
        bursts.end(wrote=False)
        await asyncio.sleep(0.1)
        assert released == []  # still writing
        bursts.end(wrote=True)
        bursts.begin()  # a new answer before the pause is over postpones it
        await asyncio.sleep(0.1)
        assert released == []
        bursts.end(wrote=False)
        await asyncio.sleep(0.2)
        assert len(released) == 1 and bursts.releases == 1
        bursts.begin()
        bursts.end(wrote=False)  # answers that wrote nothing are no burst
        await asyncio.sleep(0.2)
        assert len(released) == 1
        bursts.begin()
        bursts.end(wrote=True)
        bursts.close()  # the server stopped: nothing more
        await asyncio.sleep(0.2)
        assert len(released) == 1

    asyncio.run(scenario())


def test_a_stream_keeps_the_names_that_exist_and_a_few_others() -> None:
    snapshot = two_clusters("v1")
    asked = [f"missing-{n}" for n in range(MAX_UNKNOWN_NAMES * 10)] + ["b"]
    sotw = SotwStream(ignore_nack)
    (response,) = sotw.on_request(
        discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=asked), snapshot
    )
    assert [r.value for r in discovery_pb2.DiscoveryResponse.FromString(response).resources]
    kept = sotw._types[EDS].names
    assert kept is not None and "b" in kept and len(kept) == MAX_UNKNOWN_NAMES + 1
    delta = DeltaStream(ignore_nack)
    versions = dict.fromkeys(asked, "v0")
    delta.on_request(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=EDS, resource_names_subscribe=asked, initial_resource_versions=versions
        ),
        snapshot,
    )
    state = delta._types[EDS]
    assert "b" in state.names and len(state.names) == MAX_UNKNOWN_NAMES + 1
