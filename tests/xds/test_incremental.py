"""A mesh change republishes only the proxy keys it may touch, and what it publishes is what a
full translation of the new mesh gives; SotW responses are written once per key, not per stream."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from gitmesh import serve
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.snapshot import Snapshot
from gitmesh.xds.sotw import Bodies, SotwStream
from gitmesh.xds.translate import Proxy

NAMESPACES = ("shop", "pay", "ship", "mail")
SERVICES = ("front", "api", "api-v1", "api-v2")


def _meta(kind: str, api: str, ns: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns, **extra}}


def mesh_objects(weights: dict[str, tuple[int, int]] | None = None, **changes: Any) -> list[dict[str, Any]]:
    """Four namespaces of four services; each namespace's ``api`` splits over v1/v2 (``weights`` by
    namespace); a namespace's services may be called by its own ``front`` and the next namespace's."""
    weights = weights or {}
    objects: list[dict[str, Any]] = []
    for n, ns in enumerate(NAMESPACES):
        for index, name in enumerate(SERVICES):
            objects.append(_meta("ServiceAccount", "v1", ns, name))
            svc = _meta("Service", "v1", ns, name)
            port = {"name": "http", "port": 8080, "targetPort": 8080, "appProtocol": "http"}
            svc["spec"] = {"selector": {"app": name}, "ports": [port]}
            objects.append(svc)
            slice_ = _meta(
                "EndpointSlice",
                "discovery.k8s.io/v1",
                ns,
                f"{name}-x",
                labels={"kubernetes.io/service-name": name},
            )
            slice_["addressType"] = "IPv4"
            slice_["ports"] = [{"name": "http", "port": 15006, "protocol": "TCP"}]
            slice_["endpoints"] = [{"addresses": [f"10.0.{n}.{index + 1}"], "conditions": {"ready": True}}]
            objects.append(slice_)
            group = _meta("HTTPRouteGroup", "specs.smi-spec.io/v1alpha4", ns, f"{name}-routes")
            group["spec"] = {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["GET"]}]}
            objects.append(group)
            target = _meta("TrafficTarget", "access.smi-spec.io/v1alpha3", ns, f"{name}-callers")
            caller_ns = NAMESPACES[(n + 1) % len(NAMESPACES)]
            target["spec"] = {
                "destination": {"kind": "ServiceAccount", "name": name, "namespace": ns},
                "rules": [{"kind": "HTTPRouteGroup", "name": f"{name}-routes"}],
                "sources": [
                    {"kind": "ServiceAccount", "name": "front", "namespace": ns},
                    {"kind": "ServiceAccount", "name": "front", "namespace": caller_ns},
                ],
            }
            objects.append(target)
        split = _meta("TrafficSplit", "split.smi-spec.io/v1alpha4", ns, "api")
        w1, w2 = weights.get(ns, (50, 50))
        split["spec"] = {
            "service": "api",
            "backends": [{"service": "api-v1", "weight": w1}, {"service": "api-v2", "weight": w2}],
        }
        objects.append(split)
    traffic = {
        option: True
        for change, option in (
            ("permissive", "enablePermissiveTrafficPolicyMode"),
            ("egress", "enableEgress"),
        )
        if changes.get(change)
    }
    if traffic:
        config = _meta("MeshConfig", "config.openservicemesh.io/v1alpha2", "shop", "mesh")
        config["spec"] = {"traffic": traffic}
        objects.append(config)
    return objects


def proxies() -> list[Proxy]:
    """A sidecar of every service of the mesh."""
    return [
        Proxy(
            Identity(ns, name), ServiceRef(ns, name), 8080, 15001, 15006, inbound_address=f"10.0.{n}.{i + 1}"
        )
        for n, ns in enumerate(NAMESPACES)
        for i, name in enumerate(SERVICES)
    ]


def connected(objects: list[dict[str, Any]]) -> tuple[serve.MeshPublisher, list[str]]:
    publisher = serve.MeshPublisher()
    publisher.update(objects)
    keys = []
    for proxy in proxies():
        node = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)["node"]
        keys.append(publisher.opened(json_format.ParseDict(node, base_pb2.Node())))
    return publisher, keys


def versions(publisher: serve.MeshPublisher, key: str) -> dict[str, str]:
    """The version of each type the mesh gives (secrets come from each publisher's own CA)."""
    snapshot = publisher.cache.snapshot(key)
    assert snapshot is not None
    return {url: snapshot.type_version(url) for url in snapshot.resources if url != resources.SECRET}


def test_a_split_change_republishes_only_the_keys_that_may_call_it() -> None:
    publisher, keys = connected(mesh_objects())
    before = {key: publisher.cache.snapshot(key) for key in keys}
    changed = list(publisher.updating(mesh_objects({"pay": (90, 10)})))
    # pay's services are called by pay/front and ship/front; every pay sidecar serves a changed
    # namespace (its inbound side may have changed); nothing of shop or mail may call pay.
    expected = {key for key in keys if key.split("|")[0].split("/")[0] == "pay"}
    expected |= {key for key in keys if key.startswith(("ship/front|",))}
    assert set(changed) == expected
    for key in keys:
        if key not in expected:
            assert publisher.cache.snapshot(key) is before[key], key
    # Among those republished, the routes of the callers differ; their clusters do not.
    caller = next(k for k in keys if k.startswith("ship/front|"))
    old, new = before[caller], publisher.cache.snapshot(caller)
    assert old is not None and new is not None
    assert old.type_version(resources.ROUTE) != new.type_version(resources.ROUTE)
    assert old.type_version(resources.CLUSTER) == new.type_version(resources.CLUSTER)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({}, {"weights": {"pay": (90, 10)}}),
        ({"weights": {"pay": (90, 10)}}, {"weights": {"shop": (10, 90), "mail": (1, 99)}}),
        ({}, {"permissive": True}),
        ({"permissive": True}, {}),
        ({}, {"egress": True}),
    ],
    ids=["one-split", "two-splits", "to-permissive", "from-permissive", "to-open-egress"],
)
def test_the_incremental_result_equals_a_full_translation(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    publisher, keys = connected(mesh_objects(**first))
    publisher.update(mesh_objects(**second))
    fresh, fresh_keys = connected(mesh_objects(**second))
    assert keys == fresh_keys
    for key in keys:
        assert versions(publisher, key) == versions(fresh, key), key


def test_an_unchanged_mesh_republishes_nothing() -> None:
    publisher, _ = connected(mesh_objects())
    assert list(publisher.updating(mesh_objects())) == []


def test_streams_of_a_key_share_one_written_response_but_their_nonces() -> None:
    publisher, keys = connected(mesh_objects())
    snapshot = publisher.cache.snapshot(keys[0])
    bodies = Bodies()
    streams = [SotwStream(lambda *_: None, bodies) for _ in range(2)]
    request = discovery_pb2.DiscoveryRequest(type_url=resources.CLUSTER)
    sent = [stream.on_request(request, snapshot)[0] for stream in streams]
    parsed = [discovery_pb2.DiscoveryResponse.FromString(raw) for raw in sent]
    assert snapshot is not None
    assert [p.version_info for p in parsed] == [snapshot.type_version(resources.CLUSTER)] * 2
    assert {r.type_url for p in parsed for r in p.resources} == {resources.CLUSTER}
    assert [len(p.resources) for p in parsed] == [len(snapshot.encoded(resources.CLUSTER))] * 2
    assert all(p.nonce for p in parsed)
    # The body is written once, into the shared bodies (an empty one too: it is falsy), and the
    # second stream's response starts with the very same bytes.
    assert len(bodies) == 1
    body = bodies.body(snapshot, resources.CLUSTER, None)
    assert all(raw.startswith(body) for raw in sent)
    assert bodies.body(snapshot, resources.CLUSTER, None) is body


def test_the_bodies_of_a_snapshot_go_with_it() -> None:
    """A proxy that left (its snapshot dropped) leaves no written responses behind."""
    publisher, keys = connected(mesh_objects())
    bodies = Bodies()
    snapshot = publisher.cache.snapshot(keys[0])
    assert snapshot is not None
    copy = Snapshot(snapshot.version, {url: dict(m) for url, m in snapshot.resources.items()})
    bodies.body(copy, resources.CLUSTER, None)
    bodies.body(snapshot, resources.CLUSTER, None)
    assert len(bodies) == 2
    del copy
    gc.collect()
    bodies.body(snapshot, resources.LISTENER, None)
    assert len(bodies) == 2  # the copy's went; the live snapshot's two stay
