from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from gitmesh.cluster.inventory import stale
from gitmesh.errors import PlanError
from gitmesh.objects import Conflict, Location, Manifest, ObjectRef
from gitmesh.plan import encode
from gitmesh.plan.diff import make_plan
from gitmesh.plan.model import EnvoyChange, Plan
from gitmesh.revision.diagnostics import Diagnostic
from tests import factory as f


def sample_plan() -> Plan:
    desired = [
        f.service("store", "bookstore", 8080),
        f.split("store", "s", "bookstore", {"v1": 1, "v2": 3}),
        f.route_group("store", "routes", {"books": "/books"}),
        f.target("store", "t", "bookstore", ["buyer/buyer"], "routes"),
        f.namespace("store"),
    ]
    live = [
        f.service("store", "bookstore", 80),
        f.split("store", "s", "bookstore", {"v1": 1}),
        f.namespace("old"),
        f.namespace("store"),
    ]
    ms = [Manifest(o, Location("mesh/a.yaml", i + 1, 1)) for i, o in enumerate(desired)]
    warning = Diagnostic(
        Location("mesh/x.yaml", 3, 1),
        "GM011",
        "not managed",
        "apiVersion",
        ObjectRef("example.com", "Widget", "store", "w"),
    )
    made = make_plan(
        desired=ms,
        predicted={m.ref: m.obj for m in ms},
        live={ObjectRef.of(o): o for o in live},
        inventory=[ObjectRef.of(o) for o in live],
        stale=stale([ObjectRef.of(o) for o in live], [ObjectRef.of(o) for o in live], [m.ref for m in ms]),
        source="default",
        revision="0123456789abcdef",
        git_ref="main",
        backend="local:store.db",
        fingerprint="fp",
        diagnostics=[warning],
        conflicts={
            ms[1].ref: Conflict(
                (".spec.backends",), 'conflict with "hand-edit" using split.smi-spec.io/v1alpha4'
            )
        },
    )
    patched = EnvoyChange(
        ("store/bookstore (store/bookstore)",), "Cluster", "store/v1|8080", '{"a": 1}', '{"a": 2}'
    )
    return dataclasses.replace(made, envoy=(patched,))


def test_round_trip_is_exact() -> None:
    plan = sample_plan()
    assert {c.action.value for c in plan.changes} == {"create", "update", "delete", "no-op"}
    assert plan.impact.splits and plan.impact.access and plan.envoy
    assert encode.loads(encode.dumps(plan)) == plan


def test_encoded_plan_matches_the_documented_schema() -> None:
    document = json.loads(encode.dumps(sample_plan()))
    jsonschema.Draft202012Validator.check_schema(encode.json_schema())
    jsonschema.validate(document, encode.json_schema())
    assert document["summary"] == {"create": 2, "update": 2, "delete": 1, "no-op": 1}


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", json.dumps({"format_version": 99}), json.dumps({"format_version": 2, "source": "x"})],
    ids=["garbage", "list", "future-version", "truncated"],
)
def test_bad_plan_files_are_clear_errors(text: str) -> None:
    with pytest.raises(PlanError):
        encode.loads(text)
