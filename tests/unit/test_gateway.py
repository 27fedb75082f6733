from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from gitmesh.apis import core, gateway
from gitmesh.mesh.state import Backend, HeaderEdit, MeshState, Redirect, Rewrite, Service, ServiceRef
from gitmesh.plan import schema
from gitmesh.revision.diagnostics import field_path
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


def test_the_schema_takes_matches_filters_and_timeouts_and_refuses_a_misspelt_field() -> None:
    validator = schema.validator_for("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert validator is not None
    route = f.http_route("bookinfo", "reviews", "reviews", {"v1": 9, "v2": 1})
    rule = route["spec"]["rules"][0]
    rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/beta"}, "method": "GET"}]
    rule["filters"] = [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x-debug"]}}]
    rule["timeouts"] = {"request": "1m30s"}
    assert list(validator.iter_errors(route)) == []
    rule["timeouts"] = {"request": "90 seconds"}
    rule["matches"][0]["method"] = "get"
    rule["weigth"] = 1
    errors = {(tuple(e.absolute_path), e.validator) for e in validator.iter_errors(route)}
    assert errors == {
        (("spec", "rules", 0), "additionalProperties"),
        (("spec", "rules", 0, "timeouts", "request"), "pattern"),
        (("spec", "rules", 0, "matches", 0, "method"), "enum"),
    }


def _services(*objs: dict[str, Any]) -> dict[ServiceRef, Service]:
    return core.services(objs)


def _http(ns: str, name: str, *ports: int) -> dict[str, Any]:
    svc = f.service(ns, name, *ports)
    for p in svc["spec"]["ports"]:
        p["name"] = f"http-{p['port']}"
    return svc


SERVICES = _services(
    _http("bookinfo", "reviews", 9080),
    _http("bookinfo", "v1", 9080),
    _http("bookinfo", "v2", 9080, 9090),
    _http("shop", "v3", 9080),
    f.service("bookinfo", "db", 5432),
)


def _backend(name: str, weight: int = 1, port: int = 9080) -> dict[str, Any]:
    return {"name": name, "port": port, "weight": weight}


def _on_reviews(
    rules: list[dict[str, Any]], ns: str = "bookinfo", name: str = "reviews", **parent: Any
) -> dict[str, Any]:
    route = _route(rules, [{"group": "", "kind": "Service", "name": "reviews", **parent}])
    route["metadata"] = {"name": name, "namespace": ns}
    return route


def test_rules_rank_exact_then_longest_prefix_then_method_headers_and_query_then_route_order() -> None:
    first = _on_reviews(
        [
            {"matches": [{"path": {"value": "/"}}], "backendRefs": [_backend("v1")]},
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/books/"}}],
                "backendRefs": [_backend("v1")],
            },
            {
                "name": "exact",
                "matches": [{"path": {"type": "Exact", "value": "/books/new"}}],
                "backendRefs": [_backend("v2")],
            },
            {
                "matches": [
                    {"path": {"value": "/books"}, "headers": [{"name": "X-Canary", "value": "a.b"}]},
                    {"path": {"value": "/books"}, "method": "POST"},
                ],
                "backendRefs": [_backend("v2")],
            },
        ],
        name="a",
    )
    # The same prefix in a later route (by name) comes after the first route's.
    second = _on_reviews(
        [{"matches": [{"path": {"value": "/books"}}], "backendRefs": [_backend("v2", 3)]}], name="b"
    )
    reads = [gateway.read_route(r, SERVICES) for r in (second, first)]
    assert [p for r in reads for p in r.problems] == []
    ((key, routes),) = gateway.service_routes(r for read in reads for r in read.rules).items()
    assert key == (ServiceRef("bookinfo", "reviews"), 9080, None)
    assert [(r.match.group, r.match.name, r.match.describe()) for r in routes.rules] == [
        ("bookinfo/a", "exact", "* ^/books/new$"),
        ("bookinfo/a", "rules[3]", "POST ^/books(?:/|$)"),
        ("bookinfo/a", "rules[3]", "* ^/books(?:/|$) x-canary~a\\.b"),
        ("bookinfo/a", "rules[1]", "* ^/books(?:/|$)"),
        ("bookinfo/b", "rules[0]", "* ^/books(?:/|$)"),
        ("bookinfo/a", "rules[0]", "* ^/"),
    ]
    assert routes.rules[4].backends == (Backend(ServiceRef("bookinfo", "v2"), 3, 9080),)


def test_a_rule_carries_its_header_edits_timeout_and_query_matches() -> None:
    rule = {
        "matches": [{"queryParams": [{"name": "q", "value": "^a+$", "type": "RegularExpression"}]}],
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]},
            },
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"add": [{"name": "x-b", "value": "2"}], "remove": ["server"]},
            },
        ],
        "backendRefs": [_backend("v2", port=9090)],
        "timeouts": {"request": "1m500ms"},
    }
    (ranked,) = gateway.read_route(_on_reviews([rule]), SERVICES).rules
    assert ranked.rule.match.query == (("q", "^a+$"),)
    assert ranked.rule.request_headers == HeaderEdit(set=(("x-a", "1"),))
    assert ranked.rule.response_headers == HeaderEdit(add=(("x-b", "2"),), remove=("server",))
    assert ranked.rule.timeout_ms == 60_500
    assert ranked.rule.backends == (Backend(ServiceRef("bookinfo", "v2"), 1, 9090),)


def test_a_rewrite_is_read_with_the_prefix_of_each_match() -> None:
    rewrite = {"hostname": "elsewhere", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}
    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/a"}}, {"path": {"value": "/b/"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": rewrite}],
            "backendRefs": [_backend("v1")],
        },
        {
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}},
                }
            ],
            "backendRefs": [_backend("v1")],
        },
    ]
    read = gateway.read_route(_on_reviews(rules), SERVICES)
    assert read.problems == ()
    assert [r.rule.rewrite for r in sorted(read.rules, key=lambda r: r.rank[-2:])] == [
        Rewrite("elsewhere", prefix=("/a", "/")),
        Rewrite("elsewhere", prefix=("/b/", "/")),
        Rewrite(path="/x"),
    ]


def test_a_redirect_is_read_with_the_prefix_of_each_match() -> None:
    redirect = {"hostname": "example.org", "statusCode": 301}
    rules = [
        {"filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]},
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "scheme": "https",
                        "port": 8443,
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                    },
                }
            ],
        },
        {
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/all"}},
                }
            ]
        },
    ]
    read = gateway.read_route(_on_reviews(rules), SERVICES)
    assert read.problems == ()
    assert [r.rule.redirect for r in read.rules] == [
        Redirect(301, hostname="example.org"),
        Redirect(302, scheme="https", port=8443, prefix=("/old", "/new")),
        Redirect(302, path="/all"),
    ]


def test_a_route_in_another_namespace_is_for_that_namespace_s_callers_only() -> None:
    producer = _on_reviews([{"backendRefs": [_backend("v1")]}])
    consumer = _on_reviews([{"backendRefs": [_backend("v3")]}], ns="shop", namespace="bookinfo", port=9080)
    routes = gateway.service_routes(
        r for route in (producer, consumer) for r in gateway.read_route(route, SERVICES).rules
    )
    mesh = MeshState({}, frozenset(), {}, (), routes=routes)
    reviews = ServiceRef("bookinfo", "reviews")
    shop = mesh.routes_for(reviews, 9080, "shop")
    assert shop is not None and shop.callers == "shop"
    assert shop.rules[0].backends == (Backend(ServiceRef("shop", "v3"), 1, 9080),)
    others = mesh.routes_for(reviews, 9080, "bookinfo")
    assert others is not None and others.callers is None
    assert mesh.routes_for(reviews, 9081, "bookinfo") is None


@pytest.mark.parametrize(
    ("change", "code", "path"),
    [
        (
            lambda r: r["spec"]["parentRefs"][0].update(kind="Gateway", group=gateway.GROUP),
            "GM160",
            "spec.parentRefs[0].kind",
        ),
        # Without a group, a parentRef names a Gateway API kind: the Service needs group "".
        (lambda r: r["spec"]["parentRefs"][0].pop("group"), "GM160", "spec.parentRefs[0].kind"),
        (
            lambda r: r["spec"]["parentRefs"][0].update(sectionName="http"),
            "GM160",
            "spec.parentRefs[0].sectionName",
        ),
        (lambda r: r["spec"].update(hostnames=["reviews"]), "GM160", "spec.hostnames"),
        (
            lambda r: r["spec"]["rules"][0].update(
                filters=[{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "v2"}}}]
            ),
            "GM160",
            "spec.rules[0].filters[0].type",
        ),
        (
            lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(namespace="shop"),
            "GM164",
            "spec.rules[0].backendRefs[0].namespace",
        ),
        (
            lambda r: r["spec"]["rules"][0].update(timeouts={"backendRequest": "1s"}),
            "GM160",
            "spec.rules[0].timeouts.backendRequest",
        ),
        (lambda r: r["spec"]["parentRefs"][0].update(name="ratings"), "GM161", "spec.parentRefs[0].name"),
        (
            lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(name="v9"),
            "GM161",
            "spec.rules[0].backendRefs[0].name",
        ),
        (lambda r: r["spec"]["parentRefs"][0].update(port=1), "GM162", "spec.parentRefs[0].port"),
        (
            lambda r: r["spec"]["parentRefs"][0].update(name="db", port=5432),
            "GM162",
            "spec.parentRefs[0].port",
        ),
        (
            lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(port=9090),
            "GM162",
            "spec.rules[0].backendRefs[0].port",
        ),
    ],
)
def test_what_is_not_served_or_not_there_is_a_problem_at_its_field(
    change: Callable[[dict[str, Any]], None], code: str, path: str
) -> None:
    route = _on_reviews([{"backendRefs": [_backend("v1")]}])
    change(route)
    problems = gateway.read_route(route, SERVICES).problems
    assert [(p.code, field_path(p.path)) for p in problems] == [(code, path)]


def test_durations_add_their_parts() -> None:
    assert [gateway.duration_ms(d) for d in ("0s", "1h", "2m30s", "1s250ms")] == [0, 3_600_000, 150_000, 1250]


def test_a_rollout_moves_the_split_rule_s_weights_and_adds_a_backend_on_its_port() -> None:
    beta = {"matches": [{"path": {"value": "/beta"}}], "backendRefs": [_backend("v2")]}
    route = _on_reviews([beta, {"backendRefs": [_backend("v1", 9), _backend("v1", 1)]}])
    assert gateway.route_weights(route) == {"v1": 10}
    moved = gateway.with_route_weights(route, {"v1": 80, "v2": 20})
    assert moved["spec"]["rules"][0] == beta
    assert moved["spec"]["rules"][1]["backendRefs"] == [
        _backend("v1", 80),
        _backend("v1", 0),
        _backend("v2", 20),
    ]
    assert gateway.route_weights(route) == {"v1": 10}  # a copy: the route itself is unchanged


def _grpc(rules: list[dict[str, Any]]) -> dict[str, Any]:
    route = _on_reviews(rules)
    route["kind"] = "GRPCRoute"
    return route


def test_grpc_matches_are_paths_ranked_by_service_then_method_then_headers() -> None:
    route = _grpc(
        [
            {"matches": [{"method": {"service": "shop.Books"}}], "backendRefs": [_backend("v1")]},
            {
                "matches": [
                    {"method": {"service": "shop.Books", "method": "Buy"}},
                    {"method": {"method": "Buy"}, "headers": [{"name": "x-a", "value": "1"}]},
                    {"method": {"type": "RegularExpression", "service": "shop\\..*"}},
                ],
                "backendRefs": [_backend("v2")],
            },
            {"backendRefs": [_backend("v1")]},
        ]
    )
    read = gateway.read_route(route, SERVICES)
    assert read.problems == ()
    ((_, routes),) = gateway.service_routes(read.rules).items()
    assert [(r.match.path_regex, r.match.headers) for r in routes.rules] == [
        ("/shop\\.Books/Buy$", ()),
        ("/shop\\.Books/[^/]+$", ()),
        ("/(?:shop\\..*)/(?:[^/]+)$", ()),
        ("/[^/]+/Buy$", (("x-a", "1"),)),
        (None, ()),
    ]
    assert [path for path, *_ in gateway.regexes(route)] == [("spec", "rules", 1, "matches", 2, "method")]


def test_a_consumer_route_sends_to_the_service_it_is_attached_to_without_a_grant() -> None:
    route = _on_reviews(
        [
            {
                "backendRefs": [
                    {**_backend("reviews"), "namespace": "bookinfo"},
                    {**_backend("v1"), "namespace": "bookinfo"},
                ]
            }
        ],
        ns="shop",
        namespace="bookinfo",
    )
    read = gateway.read_route(route, SERVICES)
    assert [(p.code, field_path(p.path)) for p in read.problems] == [
        ("GM164", "spec.rules[0].backendRefs[1].namespace")
    ]
    assert read.rules[0].rule.backends == (Backend(ServiceRef("bookinfo", "reviews"), 1, 9080),)


def test_a_reference_grant_lets_a_route_send_to_another_namespace() -> None:
    route = _on_reviews([{"backendRefs": [{**_backend("v3"), "namespace": "shop"}]}])
    grant = {
        "kind": "ReferenceGrant",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {
            "from": [{"group": gateway.GROUP, "kind": "HTTPRoute", "namespace": "bookinfo"}],
            "to": [{"group": "", "kind": "Service", "name": "v3"}],
        },
    }
    assert [p.code for p in gateway.read_route(route, SERVICES).problems] == ["GM164"]
    read = gateway.read_route(route, SERVICES, gateway.grants([grant]))
    assert read.problems == ()
    assert read.rules[0].rule.backends == (Backend(ServiceRef("shop", "v3"), 1, 9080),)
    grant["spec"]["from"][0]["kind"] = "GRPCRoute"  # for another kind of route: not this one
    assert [p.code for p in gateway.read_route(route, SERVICES, gateway.grants([grant])).problems] == [
        "GM164"
    ]
