from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gitmesh.plan import schema
from gitmesh.plan.convert import SERVED, integer_weights, lost_fields, to_served
from gitmesh.plan.load import SourceFile, load_files
from gitmesh.plan.validate import validate
from tests import factory as f

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
    assert new["apiVersion"] == SERVED[old["kind"]]
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
    loaded = load_files([SourceFile("m.yaml", len(text), text)])
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
