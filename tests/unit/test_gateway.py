from decimal import Decimal
from typing import Any

from gitmesh.apis import gateway
from gitmesh.plan import schema
from tests import factory as f


def _route(rules: list[dict[str, Any]], parents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {
            "parentRefs": parents
            if parents is not None
            else [{"group": "", "kind": "Service", "name": "reviews"}],
            "rules": rules,
        },
    }


def test_shares_are_the_weights_in_percent_of_their_sum() -> None:
    route = _route([{"backendRefs": [{"name": "v1", "weight": 9}, {"name": "v2", "weight": 1}]}])
    assert gateway.route_shares(route) == ("reviews", {"v1": Decimal(90), "v2": Decimal(10)})


def test_a_backend_without_a_weight_weighs_one() -> None:
    route = _route([{"backendRefs": [{"name": "v1"}, {"name": "v2", "weight": 3}]}])
    assert gateway.route_shares(route)[1] == {"v1": Decimal(25), "v2": Decimal(75)}


def test_the_catch_all_rule_is_the_split_not_a_matched_one() -> None:
    matched = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/beta"}}],
        "backendRefs": [{"name": "v3"}],
    }
    route = _route([matched, {"backendRefs": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}]}])
    assert gateway.route_shares(route)[1] == {"v1": Decimal(50), "v2": Decimal(50)}


def test_all_weights_zero_is_every_share_zero() -> None:
    route = _route([{"backendRefs": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 0}]}])
    assert gateway.route_shares(route)[1] == {"v1": Decimal(0), "v2": Decimal(0)}


def test_only_service_parents_count() -> None:
    parents = [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
        {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
    ]
    assert gateway.service_parents(_route([], parents)) == ("reviews",)
    assert gateway.route_shares(_route([], parents)) == ("reviews", {})


def test_the_schema_refuses_what_is_not_served_yet() -> None:
    validator = schema.validator_for("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert validator is not None
    route = f.http_route("bookinfo", "reviews", "reviews", {"v1": 9, "v2": 1})
    assert list(validator.iter_errors(route)) == []
    route["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/beta"}}]
    (error,) = validator.iter_errors(route)
    assert list(error.absolute_path) == ["spec", "rules", 0]
    assert "matches" in error.message
