from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gitmesh import pipeline
from gitmesh.cluster.port import Changes
from gitmesh.objects import ObjectRef
from gitmesh.plan.validate import Validated, validate
from gitmesh.revision.load import RevisionFile, load_files
from gitmesh.settings import embedded
from gitmesh.sync.git import read_directory
from tests import factory as f

NO_CLUSTER = None
EMPTY_CLUSTER: frozenset[ObjectRef] = frozenset()


def check(*objs: dict[str, Any], present: frozenset[ObjectRef] | None = EMPTY_CLUSTER) -> Validated:
    """Validate as plan does against a cluster that has none of what the revision lacks."""
    text = f.dump(*objs).encode()
    loaded = load_files([RevisionFile("mesh.yaml", len(text), text)])
    return validate(loaded.manifests, loaded.diagnostics, present)


def codes(result: Validated) -> list[tuple[str, str]]:
    return [(d.code, d.path) for d in result.diagnostics]


def test_a_consistent_mesh_is_valid_and_fully_desired() -> None:
    result = check(*f.bookstore())
    assert result.diagnostics == ()
    assert result.ok
    assert len(result.desired) == len(f.bookstore())


def _with(objs: list[dict[str, Any]], index: int, path: tuple[Any, ...], value: Any) -> list[dict[str, Any]]:
    objs = copy.deepcopy(objs)
    target = objs[index]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return objs


BASE = f.bookstore()
SPLIT, TARGET = 5, 7


@pytest.mark.parametrize(
    ("objs", "expected"),
    [
        pytest.param(
            _with(BASE, SPLIT, ("spec", "service"), "nowhere"),
            [("GM101", "spec.service")],
            id="GM101-root-missing",
        ),
        pytest.param(
            _with(BASE, SPLIT, ("spec", "backends", 1, "service"), "ghost"),
            [("GM102", "spec.backends[1].service")],
            id="GM102-backend-missing",
        ),
        pytest.param(
            [*BASE[:4], f.service("store", "bookstore-v2", 8080), *BASE[5:]],
            [("GM103", "spec.backends[1].service")],
            id="GM103-no-shared-port",
        ),
        pytest.param(
            [*BASE, f.split("store", "second", "bookstore", {"bookstore-v1": 1})],
            [("GM104", "spec.service")],
            id="GM104-two-splits-one-root",
        ),
        pytest.param(
            [*BASE, f.split("store", "chained", "bookstore-v1", {"bookstore-v2": 1})],
            [("GM105", "spec.backends[0].service")],
            id="GM105-backend-is-a-root",
        ),
        pytest.param(
            _with(
                BASE,
                SPLIT,
                ("spec", "backends"),
                [{"service": "bookstore-v1", "weight": 0}, {"service": "bookstore-v2", "weight": 0}],
            ),
            [("GM106", "spec.backends")],
            id="GM106-all-weights-zero",
        ),
        pytest.param(
            _with(
                BASE,
                SPLIT,
                ("spec", "backends"),
                [{"service": "bookstore-v1", "weight": 1}, {"service": "bookstore-v1", "weight": 2}],
            ),
            [("GM107", "spec.backends[1].service")],
            id="GM107-backend-twice",
        ),
        pytest.param(
            _with(BASE, SPLIT, ("spec", "matches"), [{"kind": "HTTPRouteGroup", "name": "nope"}]),
            [("GM108", "spec.matches[0].name")],
            id="GM108-split-match-missing",
        ),
        pytest.param(
            _with(BASE, TARGET, ("spec", "rules", 0, "name"), "nope"),
            [("GM111", "spec.rules[0].name")],
            id="GM111-route-missing",
        ),
        pytest.param(
            _with(BASE, TARGET, ("spec", "rules", 0, "matches"), ["books", "sell"]),
            [("GM112", "spec.rules[0].matches[1]")],
            id="GM112-match-missing",
        ),
        pytest.param(
            _with(BASE, 6, ("spec", "matches", 0, "pathRegex"), "/books(["),
            [("GM113", "spec.matches[0].pathRegex")],
            id="GM113-bad-regex",
        ),
        pytest.param(
            _with(BASE, 6, ("spec", "matches", 0, "pathRegex"), "/books(?!/secret)"),
            [("GM113", "spec.matches[0].pathRegex")],
            id="GM113-lookahead-is-not-re2",
        ),
        pytest.param(
            _with(BASE, 6, ("spec", "matches", 0, "pathRegex"), "(/segment-[0-9]+){100}"),
            [("GM113", "spec.matches[0].pathRegex")],
            id="GM113-too-big-for-envoy",
        ),
        pytest.param(
            [*BASE, f.service("store", "bookstore", 80)], [("GM121", "metadata.name")], id="GM121-duplicate"
        ),
        pytest.param(
            [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}],
            [("GM122", "metadata.namespace")],
            id="GM122-no-namespace",
        ),
        pytest.param(
            [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}],
            [("GM011", "apiVersion")],
            id="GM011-unknown-kind",
        ),
        pytest.param([{"kind": "Service", "metadata": {}}], [("GM010", "")], id="GM010-no-identity"),
        pytest.param(
            _with(BASE, SPLIT, ("spec", "backends", 0, "weigth"), 3),
            [("GM020", "spec.backends[0].weigth")],
            id="GM020-unknown-field",
        ),
        pytest.param(
            _with(BASE, SPLIT, ("spec", "backends", 0, "weight"), -5),
            [("GM020", "spec.backends[0].weight")],
            id="GM020-negative-weight",
        ),
    ],
)
def test_each_check_reports_its_code_at_the_field(
    objs: list[dict[str, Any]], expected: list[tuple[str, str]]
) -> None:
    result = check(*objs)
    assert codes(result) == expected


def test_services_outside_the_revision_are_looked_up_in_the_cluster() -> None:
    objs = _with(BASE, SPLIT, ("spec", "service"), "storefront")
    objs = _with(objs, SPLIT, ("spec", "backends", 1, "service"), "storefront-v2.store.svc.cluster.local")
    root, backend = (
        ObjectRef("", "Service", "store", "storefront"),
        ObjectRef("", "Service", "store", "storefront-v2"),
    )
    unchecked = check(*objs, present=NO_CLUSTER)
    assert unchecked.ok
    assert codes(unchecked) == [("GM110", "spec.service"), ("GM110", "spec.backends[1].service")]
    assert unchecked.outside == {root, backend}
    assert check(*objs, present=frozenset({root, backend})).diagnostics == ()
    missing = check(*objs, present=frozenset({root}))
    assert codes(missing) == [("GM102", "spec.backends[1].service")]
    assert "in the revision or the cluster" in missing.diagnostics[0].message


def test_all_problems_are_reported_at_once() -> None:
    objs = _with(BASE, SPLIT, ("spec", "service"), "nowhere")
    objs = _with(objs, TARGET, ("spec", "rules", 0, "name"), "nope")
    objs = _with(objs, 2, ("spec", "ports", 0, "port"), "eighty")
    result = check(*objs)
    assert {d.code for d in result.diagnostics} == {"GM101", "GM111", "GM020"}


def test_objects_with_errors_are_left_out_of_the_desired_state() -> None:
    result = check(*_with(BASE, SPLIT, ("spec", "service"), "nowhere"))
    assert not result.ok
    kinds = [m.obj["kind"] for m in result.desired]
    assert "TrafficSplit" not in kinds
    assert len(kinds) == len(BASE) - 1


def test_unknown_kinds_warn_but_do_not_fail() -> None:
    result = check(*BASE, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert result.ok
    assert [d.severity.value for d in result.diagnostics] == ["warning"]
    assert all(m.obj["kind"] != "Widget" for m in result.desired)


def test_diagnostics_point_at_the_line_of_the_field() -> None:
    text = (
        b"apiVersion: split.smi-spec.io/v1alpha4\n"
        b"kind: TrafficSplit\n"
        b"metadata: {name: s, namespace: n}\n"
        b"spec:\n"
        b"  service: root\n"
        b"  backends:\n"
        b"  - service: a\n"
        b"    weight: -1\n"
        b"---\n"
        b"apiVersion: split.smi-spec.io/v1alpha4\n"
        b"kind: TrafficSplit\n"
        b"metadata: {name: t, namespace: n}\n"
        b"spec:\n"
        b"  service: root\n"
        b"  backends: [{service: a, weight: 1}]\n"
    )
    loaded = load_files([RevisionFile("s.yaml", len(text), text)])
    result = validate(loaded.manifests, loaded.diagnostics, EMPTY_CLUSTER)
    weight = [d for d in result.diagnostics if d.code == "GM020"]
    assert [(d.location.line, d.location.column, d.path) for d in weight] == [
        (8, 5, "spec.backends[0].weight")
    ]
    missing = [d for d in result.diagnostics if d.code == "GM101"]
    # The schema-invalid split is not checked for meaning; the valid one is, at its own line.
    assert [(d.location.line, d.path) for d in missing] == [(14, "spec.service")]


@pytest.mark.parametrize("form", ["map", "list"])
def test_headers_in_either_form_normalise_to_the_list_form(form: str) -> None:
    headers: Any = {"user-agent": ".*curl.*", "x-canary": "yes"}
    if form == "list":
        headers = [{"user-agent": ".*curl.*"}, {"x-canary": "yes"}]
    group = f.route_group("store", "routes", {"books": "/books", "buy": "/buy"})
    group["spec"]["matches"][0]["headers"] = headers
    result = check(*BASE[:6], group, BASE[7])
    assert result.ok, result.diagnostics
    (desired,) = [m for m in result.desired if m.obj["kind"] == "HTTPRouteGroup"]
    assert desired.obj["spec"]["matches"][0]["headers"] == [{"user-agent": ".*curl.*"}, {"x-canary": "yes"}]


def test_normalising_does_not_touch_the_loaded_manifest() -> None:
    group = f.route_group("store", "routes", {"books": "/books", "buy": "/buy"})
    group["spec"]["matches"][0]["headers"] = {"x-canary": "yes"}
    text = f.dump(*BASE[:6], group, BASE[7]).encode()
    loaded = load_files([RevisionFile("m.yaml", len(text), text)])
    validate(loaded.manifests)
    (original,) = [m for m in loaded.manifests if m.obj["kind"] == "HTTPRouteGroup"]
    assert original.obj["spec"]["matches"][0]["headers"] == {"x-canary": "yes"}


def test_older_versions_are_checked_with_their_own_field_layout() -> None:
    old_target = {
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "old", "namespace": "store"},
        "destination": {"kind": "ServiceAccount", "name": "bookstore", "namespace": "store", "port": 80},
        "specs": [{"kind": "HTTPRouteGroup", "name": "missing-routes", "matches": ["x"]}],
        "sources": [{"kind": "ServiceAccount", "name": "buyer", "namespace": "buyer"}],
    }
    old_split = f.split("store", "s2", "bookstore", {"bookstore-v1": 1}, version="v1alpha2")
    result = check(*BASE[:5], old_split, old_target)
    # destination.port has no place in the served v1alpha3: refused rather than silently widened.
    assert codes(result) == [("GM130", "destination.port"), ("GM111", "specs[0].name")]


def test_the_embedded_store_is_the_cluster_plan_looks_in(tmp_path: Path) -> None:
    store = embedded(tmp_path / "store.db")
    root = tmp_path / "revision"
    root.mkdir()
    (root / "mesh.yaml").write_text(f.dump(*_with(BASE, SPLIT, ("spec", "service"), "storefront")))
    revision = read_directory(str(root))
    assert [d.code for d in pipeline.check(revision, store.objects).errors] == ["GM101"]
    store.objects.apply(Changes(writes=(f.service("store", "storefront", 80),)))
    assert pipeline.check(revision, store.objects).diagnostics == ()


def _gamma(*, backend: str = "storefront-v2", path: dict[str, str] | None = None) -> list[dict[str, Any]]:
    services = [f.service("store", name, 80) for name in ("storefront", "storefront-v1")]
    for s in services:
        s["spec"]["ports"][0]["name"] = "http"
    route = f.http_route("store", "storefront", "storefront", {"storefront-v1": 9, backend: 1})
    if path is not None:
        route["spec"]["rules"][0]["matches"] = [{"path": path}]
    return [f.namespace("store"), *services, route]


def test_a_route_s_services_outside_the_revision_are_looked_up_in_the_cluster() -> None:
    backend = ObjectRef("", "Service", "store", "storefront-v2")
    assert codes(check(*_gamma(), present=NO_CLUSTER)) == [("GM110", "spec.rules[0].backendRefs[1].name")]
    assert check(*_gamma(), present=frozenset({backend})).diagnostics == ()
    missing = check(*_gamma(), present=frozenset())
    assert codes(missing) == [("GM161", "spec.rules[0].backendRefs[1].name")]
    assert not missing.ok


def test_a_route_s_regular_expressions_are_held_to_what_envoy_takes() -> None:
    ok = check(*_gamma(backend="storefront-v1", path={"type": "RegularExpression", "value": "/books/[0-9]+"}))
    assert ok.diagnostics == ()
    bad = check(*_gamma(backend="storefront-v1", path={"type": "RegularExpression", "value": "/(a)\\1"}))
    assert codes(bad) == [("GM113", "spec.rules[0].matches[0].path.value")]
