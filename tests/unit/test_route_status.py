"""Route status: what gitmesh writes in status.parents[] of an HTTPRoute or GRPCRoute, per Service parent."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gitmesh.apis import route_status
from gitmesh.apis.route_status import CONTROLLER_NAME
from gitmesh.objects import ObjectRef
from tests import factory as f

NS = "shop"
SERVICE = {"group": "", "kind": "Service", "name": "reviews", "port": 80}
GATEWAY_ENTRY = {
    "parentRef": {"name": "edge"},
    "controllerName": "example.net/gateway-controller",
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "x"}
    ],
}


def http_service(name: str, ns: str = NS) -> dict[str, Any]:
    svc = f.service(ns, name, 80)
    svc["spec"]["ports"][0]["name"] = "http"
    return svc


def route(
    backends: list[dict[str, Any]] | None = None, parents: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    refs = backends if backends is not None else [{"name": "reviews-v1", "port": 80}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": NS, "generation": 3, "resourceVersion": "7"},
        "spec": {"parentRefs": parents or [SERVICE], "rules": [{"backendRefs": refs}], **spec},
    }


SERVICES = [http_service("reviews"), http_service("reviews-v1"), http_service("reviews-v2")]


def ours(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in status["parents"] if e["controllerName"] == CONTROLLER_NAME]


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    (entry,) = ours(status)
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}


def written(obj: dict[str, Any], *others: dict[str, Any]) -> dict[str, Any]:
    out = route_status.changed([obj, *SERVICES, *others], "2026-12-05T12:00:00Z")
    return out[ObjectRef.of(obj)]


def test_a_route_on_a_service_is_accepted_with_its_refs_resolved() -> None:
    status = written(route())
    (entry,) = ours(status)
    assert entry["parentRef"] == SERVICE  # as written in the spec
    assert conditions(status) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    assert {c["observedGeneration"] for c in entry["conditions"]} == {3}
    assert {c["lastTransitionTime"] for c in entry["conditions"]} == {"2026-12-05T12:00:00Z"}


@pytest.mark.parametrize(
    ("parent", "reason", "code"),
    [
        ({**SERVICE, "name": "ratings"}, "NoMatchingParent", "GM161"),
        ({**SERVICE, "port": 8080}, "NoMatchingParent", "GM162"),
        ({**SERVICE, "sectionName": "http"}, "UnsupportedValue", "GM160"),
    ],
    ids=["no-such-service", "no-such-port", "section-name"],
)
def test_a_parent_gitmesh_cannot_take_is_not_accepted_with_the_reason(
    parent: dict[str, Any], reason: str, code: str
) -> None:
    status = written(route(parents=[parent]))
    assert conditions(status)["Accepted"] == ("False", reason)
    (entry,) = ours(status)
    assert code in entry["conditions"][0]["message"]


def test_a_service_without_an_http_port_is_no_matching_parent() -> None:
    tcp = f.service(NS, "mysql", 3306)  # port named p3306: not HTTP
    obj = route(parents=[{"group": "", "kind": "Service", "name": "mysql"}])
    assert conditions(written(obj, tcp))["Accepted"] == ("False", "NoMatchingParent")


def test_what_gitmesh_does_not_serve_is_unsupported_on_every_service_parent() -> None:
    two = [SERVICE, {**SERVICE, "name": "reviews-v1"}]
    status = written(route(parents=two, hostnames=["reviews.example"]))
    assert [e["conditions"][0]["reason"] for e in ours(status)] == ["UnsupportedValue"] * 2


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ({"name": "reviews-v9", "port": 80}, "BackendNotFound"),
        ({"name": "reviews-v1", "port": 81}, "BackendNotFound"),
        ({"name": "reviews-v1", "namespace": "other", "port": 80}, "RefNotPermitted"),
        ({"group": "example.net", "kind": "Bucket", "name": "b"}, "InvalidKind"),
    ],
    ids=["no-such-service", "no-such-port", "other-namespace", "not-a-service"],
)
def test_a_backend_that_does_not_resolve_says_why(backend: dict[str, Any], reason: str) -> None:
    status = written(route([{"name": "reviews-v1", "port": 80}, backend]))
    assert conditions(status)["ResolvedRefs"] == ("False", reason)


def test_a_reference_grant_resolves_a_backend_in_another_namespace() -> None:
    grant = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "from-shop", "namespace": "other"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    obj = route([{"name": "reviews-v1", "namespace": "other", "port": 80}])
    assert conditions(written(obj, grant, http_service("reviews-v1", "other")))["ResolvedRefs"][0] == "True"


def test_other_controllers_entries_stay_and_gateway_parents_are_left_to_them() -> None:
    gateway_parent = {"name": "edge"}
    obj = route(parents=[gateway_parent, SERVICE])
    obj["status"] = {"parents": [copy.deepcopy(GATEWAY_ENTRY)]}
    status = written(obj)
    assert status["parents"][0] == GATEWAY_ENTRY
    assert [e["parentRef"] for e in ours(status)] == [SERVICE]


def test_a_status_already_current_is_not_written_again_and_keeps_its_transition_time() -> None:
    obj = route()
    obj["status"] = written(obj)
    assert route_status.changed([obj, *SERVICES], "2026-12-05T13:00:00Z") == {}
    # A new generation with the same verdict: observedGeneration moves, lastTransitionTime stays.
    obj["metadata"]["generation"] = 4
    status = written(obj)
    assert {c["observedGeneration"] for c in ours(status)[0]["conditions"]} == {4}
    assert {c["lastTransitionTime"] for c in ours(status)[0]["conditions"]} == {"2026-12-05T12:00:00Z"}


def test_a_condition_that_turns_gets_a_new_transition_time() -> None:
    obj = route()
    obj["status"] = written(obj)
    obj["spec"]["rules"][0]["backendRefs"] = [{"name": "reviews-v9", "port": 80}]
    status = route_status.changed([obj, *SERVICES], "2026-12-05T13:00:00Z")[ObjectRef.of(obj)]
    times = {c["type"]: c["lastTransitionTime"] for c in ours(status)[0]["conditions"]}
    assert times == {"Accepted": "2026-12-05T12:00:00Z", "ResolvedRefs": "2026-12-05T13:00:00Z"}


def test_entries_of_a_parent_no_longer_named_are_removed() -> None:
    obj = route()
    obj["status"] = {"parents": [*written(obj)["parents"], copy.deepcopy(GATEWAY_ENTRY)]}
    obj["spec"]["parentRefs"] = [{"name": "edge"}]  # only a Gateway now
    assert written(obj)["parents"] == [GATEWAY_ENTRY]


def test_services_the_routes_name_and_do_not_hold_are_missing() -> None:
    obj = route([{"name": "reviews-v9", "port": 80}])
    assert {str(s) for s in route_status.missing([obj, *SERVICES])} == {"shop/reviews-v9"}


def test_a_grpc_route_gets_the_same_status() -> None:
    obj = route()
    obj["kind"] = "GRPCRoute"
    obj["spec"]["rules"][0]["matches"] = [{"method": {"service": "shop.Reviews", "method": "List"}}]
    assert conditions(written(obj)) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
