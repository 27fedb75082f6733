from __future__ import annotations

from typing import Any

from gitmesh.cluster.inventory import stale
from gitmesh.objects import Location, Manifest, ObjectRef
from gitmesh.plan.diff import make_plan
from gitmesh.plan.impact import access_triples
from gitmesh.plan.model import AccessChange, BackendShare, Impact, PolicyChange
from tests import factory as f


def impact(desired: list[dict[str, Any]], live: list[dict[str, Any]]) -> Impact:
    ms = [Manifest(o, Location("m.yaml")) for o in desired]
    return make_plan(
        desired=ms,
        predicted={m.ref: m.obj for m in ms},
        live={ObjectRef.of(o): o for o in live},
        inventory=[ObjectRef.of(o) for o in live],
        stale=stale([ObjectRef.of(o) for o in live], [ObjectRef.of(o) for o in live], [m.ref for m in ms]),
        source="s",
        revision=None,
        git_ref="main",
        backend="test",
        fingerprint="",
    ).impact


def test_split_shares_before_and_after_in_percent() -> None:
    before = f.split("store", "s", "bookstore", {"v1": 90, "v2": 10})
    after = f.split("store", "s", "bookstore", {"v1": 1, "v2": 1, "v3": 2})
    (shift,) = impact([after], [before]).splits
    assert shift.service == "bookstore"
    assert shift.backends == (
        BackendShare("v1", 90.0, 25.0),
        BackendShare("v2", 10.0, 25.0),
        BackendShare("v3", None, 50.0),
    )


def test_http_route_weights_shift_like_a_split() -> None:
    before = f.http_route("bookinfo", "reviews", "reviews", {"reviews-v1": 90, "reviews-v2": 10})
    after = f.http_route("bookinfo", "reviews", "reviews", {"reviews-v1": 80, "reviews-v2": 20})
    (shift,) = impact([after], [before]).splits
    assert shift.service == "reviews"
    assert shift.backends == (BackendShare("reviews-v1", 90.0, 80.0), BackendShare("reviews-v2", 10.0, 20.0))


def test_weights_scaled_alike_are_no_traffic_change() -> None:
    before = f.split("store", "s", "bookstore", {"v1": 9, "v2": 1})
    after = f.split("store", "s", "bookstore", {"v1": 90, "v2": 10})
    assert impact([after], [before]).splits == ()


def test_v1alpha1_quantity_weights_count_as_numbers() -> None:
    before = f.split("store", "s", "bookstore", {"v1": 1}, version="v1alpha1")
    before["spec"]["backends"] = [{"service": "v1", "weight": "750m"}, {"service": "v2", "weight": "250m"}]
    after = f.split("store", "s", "bookstore", {"v1": 50, "v2": 50})
    (shift,) = impact([after], [before]).splits
    assert [(b.before, b.after) for b in shift.backends] == [(75.0, 50.0), (25.0, 50.0)]


def test_deleted_split_shows_every_backend_leaving() -> None:
    before = f.split("store", "s", "bookstore", {"v1": 1})
    (shift,) = impact([], [before]).splits
    assert shift.backends == (BackendShare("v1", 100.0, None),)


ROUTES = f.route_group("store", "routes", {"books": "/books", "buy": "/buy"})


def test_new_target_grants_each_matched_route() -> None:
    target = f.target("store", "t", "bookstore", ["buyer/buyer"], "routes", ["books"])
    assert impact([ROUTES, target], [ROUTES]).access == (
        AccessChange("buyer/buyer", "store/bookstore", "routes/books (GET ^/books)", gained=True),
    )


def test_removing_a_source_loses_all_its_routes() -> None:
    before = f.target("store", "t", "bookstore", ["buyer/buyer", "thief/thief"], "routes")
    after = f.target("store", "t", "bookstore", ["buyer/buyer"], "routes")
    lost = impact([ROUTES, after], [ROUTES, before]).access
    assert [(a.caller, a.route, a.gained) for a in lost] == [
        ("thief/thief", "routes/books (GET ^/books)", False),
        ("thief/thief", "routes/buy (GET ^/buy)", False),
    ]


def test_changing_a_route_group_changes_access_of_targets_that_use_it() -> None:
    target = f.target("store", "t", "bookstore", ["buyer/buyer"], "routes", ["books"])
    narrowed = f.route_group("store", "routes", {"books": "/books/[0-9]+", "buy": "/buy"})
    access = impact([narrowed, target], [ROUTES, target]).access
    assert [(a.route, a.gained) for a in access] == [
        ("routes/books (GET ^/books)", False),
        ("routes/books (GET ^/books/[0-9]+)", True),
    ]


def test_tcp_routes_and_source_namespace_default() -> None:
    route = f.tcp_route("db", "pg", 5432)
    target = f.target("db", "t", "postgres", ["app/api"], "pg", kind="TCPRoute")
    del target["spec"]["sources"][0]["namespace"]
    assert access_triples([route, target]) == {("db/api", "db/postgres", "pg (tcp ports 5432)")}


def test_no_access_changes_when_no_access_object_changes() -> None:
    target = f.target("store", "t", "bookstore", ["buyer/buyer"], "routes")
    svc = f.service("store", "bookstore", 80)
    assert impact([ROUTES, target, f.service("store", "bookstore", 81)], [ROUTES, target, svc]).access == ()


def test_turning_permissive_mode_on_and_off_is_one_access_change_each_way() -> None:
    off, on = f.mesh_config(False), f.mesh_config(True)
    (gained,) = impact([on], [off]).access
    assert (gained.caller, gained.destination, gained.gained) == ("*", "*", True)
    (lost,) = impact([], [on]).access  # the MeshConfig deleted: TrafficTargets rule again
    assert not lost.gained
    assert impact([on], [on]).access == ()


def _egress(hosts: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy.openservicemesh.io/v1alpha1",
        "kind": "Egress",
        "metadata": {"name": "out", "namespace": "shop"},
        "spec": {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
            "hosts": hosts,
            "ports": [{"number": 443, "protocol": "tls"}],
        },
    }


def _limits(max_connections: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy.openservicemesh.io/v1alpha1",
        "kind": "UpstreamTrafficSetting",
        "metadata": {"name": "limits", "namespace": "shop"},
        "spec": {"host": "bookstore", "connectionSettings": {"tcp": {"maxConnections": max_connections}}},
    }


def test_new_egress_says_who_may_now_reach_which_host() -> None:
    assert impact([_egress(["api.example.com"])], []).policies == (
        PolicyChange("shop/bookbuyer may reach api.example.com:443 (tls)", gained=True),
    )


def test_changed_connection_limits_show_the_old_and_the_new() -> None:
    store = f.service("shop", "bookstore", 80)
    assert impact([store, _limits(10)], [store, _limits(5)]).policies == (
        PolicyChange("shop/bookstore limits connections 10", gained=True),
        PolicyChange("shop/bookstore limits connections 5", gained=False),
    )


def test_a_pruned_policy_is_lost_and_an_unchanged_one_says_nothing() -> None:
    store = f.service("shop", "bookstore", 80)
    assert impact([store], [store, _limits(5)]).policies == (
        PolicyChange("shop/bookstore limits connections 5", gained=False),
    )
    assert impact([store, _limits(5)], [store, _limits(5)]).policies == ()


def test_meshconfig_enable_egress_is_one_policy_change_each_way() -> None:
    closed, opened = f.mesh_config(False), f.mesh_config(False)
    opened["spec"]["traffic"]["enableEgress"] = True
    line = "every pod may reach what no Egress names (MeshConfig enableEgress)"
    assert impact([opened], [closed]).policies == (PolicyChange(line, gained=True),)
    assert impact([closed], [opened]).policies == (PolicyChange(line, gained=False),)
    assert impact([opened], [opened]).policies == ()
