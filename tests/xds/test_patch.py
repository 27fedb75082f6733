"""EnvoyPatch on translated resources, pure: selection, merge and JSON patches, what cannot be
applied, and the plan's before/after per group of proxies."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from gitmesh import serve
from gitmesh.apis import read
from gitmesh.mesh.state import Identity, MeshState, ServiceRef
from gitmesh.xds import patch_check, resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.patch import apply
from gitmesh.xds.translate import Proxy, Translator

WEB = Proxy(Identity("shop", "web"), ServiceRef("shop", "web"), 8080, 15001, 15006)
API = Proxy(Identity("shop", "api"), ServiceRef("shop", "api"), 8080, 15001, 15006)


OBJECTS: list[dict[str, Any]] = [
    {
        "apiVersion": "config.openservicemesh.io/v1alpha2",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh", "namespace": "shop"},
        "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": True}},
    },
    *(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
        for name in ("web", "api")
    ),
]


def patch_object(spec: dict[str, Any], name: str = "p0") -> dict[str, Any]:
    return {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "EnvoyPatch",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


def mesh(*patches: dict[str, Any]) -> MeshState:
    return read.mesh([*OBJECTS, *(patch_object(spec, f"p{i}") for i, spec in enumerate(patches))])


def patched(m: MeshState, proxy: Proxy) -> Any:
    return apply(Translator(m).resources(proxy), m.patches, proxy.service, proxy.identity)


def test_a_merge_patch_changes_the_named_cluster_of_the_selected_proxies_only() -> None:
    m = mesh(
        {
            "selector": {"services": ["web"]},
            "patches": [{"type": "Cluster", "name": "shop/api|80", "merge": {"connect_timeout": "3s"}}],
        }
    )
    web, api = patched(m, WEB), patched(m, API)
    assert not web.problems and web.changed == {(resources.CLUSTER, "shop/api|80")}
    cluster = web.resources[resources.CLUSTER]["shop/api|80"]
    assert isinstance(cluster, cluster_pb2.Cluster) and cluster.connect_timeout.seconds == 3
    assert web.resources[resources.CLUSTER]["shop/web|80"].connect_timeout.seconds == 1
    assert not api.changed and api.resources[resources.CLUSTER]["shop/api|80"].connect_timeout.seconds == 1


def test_a_json_patch_without_a_name_changes_every_resource_of_the_type() -> None:
    m = mesh(
        {
            "patches": [
                {"type": "Listener", "jsonPatch": [{"op": "replace", "path": "/stat_prefix", "value": "x"}]}
            ]
        }
    )
    result = patched(m, WEB)
    # A listener has no stat_prefix: replace needs the member to exist.
    assert [p.code for p in result.problems] == ["GM151"]
    assert not result.changed
    m = mesh(
        {
            "patches": [
                {"type": "Listener", "jsonPatch": [{"op": "add", "path": "/stat_prefix", "value": "x"}]}
            ]
        }
    )
    result = patched(m, WEB)
    assert {name for _, name in result.changed} == {"inbound", "outbound"}
    listener = result.resources[resources.LISTENER]["outbound"]
    assert isinstance(listener, listener_pb2.Listener) and listener.stat_prefix == "x"


def test_any_fields_are_written_with_their_type_and_checked_against_it() -> None:
    lua = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
        },
    }
    hcm = "/filter_chains/0/filters/0/typed_config/http_filters/0"
    ok = patched(
        mesh(
            {
                "patches": [
                    {
                        "type": "Listener",
                        "name": "outbound",
                        "jsonPatch": [{"op": "add", "path": hcm, "value": lua}],
                    }
                ]
            }
        ),
        WEB,
    )
    assert not ok.problems and ok.changed == {(resources.LISTENER, "outbound")}
    bad = {**lua, "typed_config": {**lua["typed_config"], "source_code": 7}}
    wrong = patched(
        mesh(
            {
                "patches": [
                    {
                        "type": "Listener",
                        "name": "outbound",
                        "jsonPatch": [{"op": "add", "path": hcm, "value": bad}],
                    }
                ]
            }
        ),
        WEB,
    )
    assert [p.code for p in wrong.problems] == ["GM152"]
    assert "source_code" in wrong.problems[0].message


def test_a_missing_target_is_a_problem_not_a_silent_no_op() -> None:
    result = patched(mesh({"patches": [{"type": "Cluster", "name": "shop/gone|80", "merge": {}}]}), WEB)
    assert [(p.code, p.change.index) for p in result.problems] == [("GM150", 0)]
    assert "shop/gone|80" in result.problems[0].message


def test_the_plan_groups_proxies_that_get_the_same_change() -> None:
    before = mesh()
    after = mesh(
        {"patches": [{"type": "Cluster", "name": "shop/web|80", "merge": {"connect_timeout": "3s"}}]}
    )
    (diff,) = patch_check.resource_diffs(after, before.patches)
    assert (diff.type, diff.name) == ("Cluster", "shop/web|80")
    assert diff.proxies == ("shop/api (shop/api)", "shop/web (shop/web)")
    assert '"connect_timeout": "1s"' in diff.before and '"connect_timeout": "3s"' in diff.after
    assert patch_check.resource_diffs(after, after.patches) == []


def test_the_publisher_sends_patched_resources_and_says_once_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mesh read from a cluster is not validated: a change that does not apply is left out and
    logged once, the others still reach the proxies, and what they changed is remembered."""
    publisher = serve.MeshPublisher()
    objects = [
        *OBJECTS,
        patch_object(
            {"patches": [{"type": "Cluster", "name": "shop/web|80", "merge": {"connect_timeout": "3s"}}]}
        ),
        patch_object({"patches": [{"type": "Cluster", "name": "shop/gone|80", "merge": {}}]}, "p1"),
    ]
    publisher.update(objects)
    keys = []
    for proxy in (WEB, API):
        node = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)["node"]
        keys.append(publisher.opened(json_format.ParseDict(node, base_pb2.Node())))
    for key in keys:
        snapshot = publisher.cache.snapshot(key)
        assert snapshot is not None
        assert snapshot.resources[resources.CLUSTER]["shop/web|80"].connect_timeout.seconds == 3
        assert publisher.patched()[key] == {resources.CLUSTER: ("EnvoyPatch shop/p0",)}
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 1 and "EnvoyPatch shop/p1, patches[0]" in left_out[0], left_out
