from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from rich.console import Console

from gitmesh.apis.kinds import BY_NAME
from gitmesh.plan import encode, render, schema
from gitmesh.plan.convert import integer_weights, lost_fields, to_served
from gitmesh.plan.model import Action, Plan
from gitmesh.plan.validate import validate
from gitmesh.revision.load import RevisionFile, load_files
from tests import factory as f
from tests.unit.test_diff import plan_of

META = {"name": "x", "namespace": "n"}


def served_schema_accepts(obj: dict[str, Any]) -> None:
    validator = schema.validator_for(obj["apiVersion"], obj["kind"])
    assert validator is not None
    assert list(validator.iter_errors(obj)) == []


@pytest.mark.parametrize(
    "old",
    [
        pytest.param(f.split("n", "x", "root", {"a": 3, "b": 1}, version="v1alpha2"), id="split-v1alpha2"),
        pytest.param(f.split("n", "x", "root", {"a": 3, "b": 1}, version="v1alpha3"), id="split-v1alpha3"),
        pytest.param(
            {
                "apiVersion": "access.smi-spec.io/v1alpha1",
                "kind": "TrafficTarget",
                "metadata": META,
                "destination": {"kind": "ServiceAccount", "name": "d", "namespace": "n"},
                "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["m"]}],
                "sources": [{"kind": "ServiceAccount", "name": "s", "namespace": "o"}],
            },
            id="target-v1alpha1",
        ),
        pytest.param(
            {
                "apiVersion": "access.smi-spec.io/v1alpha2",
                "kind": "TrafficTarget",
                "metadata": META,
                "spec": {
                    "destination": {"kind": "ServiceAccount", "name": "d", "namespace": "n"},
                    "rules": [{"kind": "TCPRoute", "name": "r"}],
                    "sources": [{"kind": "ServiceAccount", "name": "s", "namespace": "o"}],
                },
            },
            id="target-v1alpha2",
        ),
        pytest.param(
            {
                "apiVersion": "specs.smi-spec.io/v1alpha1",
                "kind": "HTTPRouteGroup",
                "metadata": META,
                "matches": [{"name": "m", "pathRegex": "/x", "methods": ["GET"]}],
            },
            id="routes-v1alpha1",
        ),
        pytest.param(
            {
                "apiVersion": "specs.smi-spec.io/v1alpha3",
                "kind": "HTTPRouteGroup",
                "metadata": META,
                "spec": {"matches": [{"name": "m", "pathRegex": "/x"}]},
            },
            id="routes-v1alpha3",
        ),
        pytest.param(
            {"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "TCPRoute", "metadata": META},
            id="tcp-v1alpha2",
        ),
    ],
)
def test_older_versions_convert_to_a_valid_served_object(old: dict[str, Any]) -> None:
    assert lost_fields(old) == []
    new = to_served(old)
    assert new["apiVersion"] == BY_NAME[old["kind"]].api_version
    assert new["metadata"] == old["metadata"]
    served_schema_accepts(new)


def test_target_fields_move_under_spec() -> None:
    old = {
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": META,
        "destination": {"kind": "ServiceAccount", "name": "d", "namespace": "n"},
        "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["m"]}],
        "sources": [{"kind": "ServiceAccount", "name": "s", "namespace": "o"}],
    }
    assert to_served(old)["spec"] == {
        "destination": old["destination"],
        "rules": old["specs"],
        "sources": old["sources"],
    }


def test_v1alpha1_quantity_weights_become_integers_in_proportion() -> None:
    old = f.split("n", "x", "root", {}, version="v1alpha1")
    old["spec"]["backends"] = [{"service": "a", "weight": "500m"}, {"service": "b", "weight": "1500m"}]
    new = to_served(old)
    assert [b["weight"] for b in new["spec"]["backends"]] == [1, 3]
    assert old["spec"]["backends"][0]["weight"] == "500m", "conversion must not modify its input"
    served_schema_accepts(new)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [(["75", "25"], [75, 25]), (["0.5", "1.5"], [1, 3]), (["0.1", "0.25"], [2, 5]), (["0", "1"], [0, 1])],
)
def test_integer_weights(weights: list[str], expected: list[int]) -> None:
    assert integer_weights([Decimal(w) for w in weights]) == expected


def test_served_and_other_kinds_are_returned_unchanged() -> None:
    current = f.split("n", "x", "root", {"a": 1})
    service = f.service("n", "s", 80)
    assert to_served(current) is current
    assert to_served(service) is service


def test_validation_converts_and_remembers_the_written_version() -> None:
    text = f.dump(
        f.service("n", "root", 80),
        f.service("n", "a", 80),
        f.split("n", "x", "root", {"a": 1}, version="v1alpha2"),
    ).encode()
    loaded = load_files([RevisionFile("m.yaml", len(text), text)])
    result = validate(loaded.manifests)
    (split,) = [m for m in result.desired if m.obj["kind"] == "TrafficSplit"]
    assert split.obj["apiVersion"] == "split.smi-spec.io/v1alpha4"
    assert split.converted_from == "split.smi-spec.io/v1alpha2"


def test_destination_port_cannot_be_converted() -> None:
    old = {
        "apiVersion": "access.smi-spec.io/v1alpha2",
        "kind": "TrafficTarget",
        "metadata": META,
        "spec": {"destination": {"kind": "ServiceAccount", "name": "d", "port": 8080}},
    }
    assert lost_fields(old) == [("spec", "destination", "port")]


def _plan_against(written: list[dict[str, Any]], live: list[dict[str, Any]]) -> Plan:
    """Validate ``written`` (converting older versions) and plan it against ``live``."""
    text = f.dump(*written).encode()
    result = validate(load_files([RevisionFile("m.yaml", len(text), text)]).manifests)
    assert result.ok, result.diagnostics
    return plan_of(result.desired, live, live)


def test_field_diffs_of_converted_objects_show_what_was_written() -> None:
    services = [f.service("n", name, 80) for name in ("root", "a", "b")]
    split = f.split("n", "x", "root", {"a": 1, "b": 3}, version="v1alpha1")
    split["spec"]["backends"][0]["weight"] = "1500m"
    split["spec"]["backends"][1]["weight"] = "500m"
    live = [*services, to_served(f.split("n", "x", "root", {"a": 1, "b": 3}, version="v1alpha1"))]
    (change,) = [c for c in _plan_against([*services, split], live).changes if c.action is Action.UPDATE]
    assert [(d.path, d.before, d.after, d.written) for d in change.diff] == [
        ("spec.backends[0].weight", 1, 3, 'spec.backends[0].weight: "1500m"'),
        ("spec.backends[1].weight", 3, 1, 'spec.backends[1].weight: "500m"'),
    ]
    console = Console(file=io.StringIO(), width=200)
    render.plan_text(console, _plan_against([*services, split], live))
    assert '~ spec.backends[0].weight: 1 -> 3  (written as spec.backends[0].weight: "1500m")' in (
        console.file.getvalue()
    )
    assert encode.loads(encode.dumps(_plan_against([*services, split], live))).changes == (
        _plan_against([*services, split], live).changes
    )


def test_field_diffs_of_a_v1alpha1_target_name_the_fields_where_they_were_written() -> None:
    written = {
        "apiVersion": "access.smi-spec.io/v1alpha1",
        "kind": "TrafficTarget",
        "metadata": {"name": "t", "namespace": "n"},
        "destination": {"kind": "ServiceAccount", "name": "d", "namespace": "n"},
        "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["m"]}],
        "sources": [{"kind": "ServiceAccount", "name": "s", "namespace": "o"}],
    }
    routes = f.route_group("n", "r", {"m": "/x", "other": "/y"})
    live = to_served({**written, "specs": [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["other"]}]})
    (change,) = [
        c for c in _plan_against([routes, written], [routes, live]).changes if c.action is Action.UPDATE
    ]
    assert [(d.path, d.written) for d in change.diff] == [
        ("spec.rules[0].matches[0]", 'specs[0].matches[0]: "m"')
    ]


def test_fields_written_as_they_are_served_say_nothing_more() -> None:
    services = [f.service("n", name, 80) for name in ("root", "a")]
    before = f.split("n", "x", "root", {"a": 1}, version="v1alpha2")
    after = f.split("n", "x", "root", {"a": 2}, version="v1alpha2")
    (change,) = [
        c for c in _plan_against([*services, after], [*services, to_served(before)]).changes if c.diff
    ]
    assert [(d.path, d.written) for d in change.diff] == [("spec.backends[0].weight", "")]
