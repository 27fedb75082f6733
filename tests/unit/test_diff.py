from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest

from gitmesh.cluster.inventory import stale
from gitmesh.objects import Location, Manifest, ObjectRef
from gitmesh.plan.diff import clean, diff_fields, make_plan
from gitmesh.plan.model import Action, FieldDiff, Plan
from tests import factory as f


def manifest(obj: dict[str, Any]) -> Manifest:
    return Manifest(obj, Location("mesh.yaml"))


def plan(desired: list[dict[str, Any]], live: list[dict[str, Any]], inventory: list[dict[str, Any]]) -> Plan:
    return plan_of([manifest(o) for o in desired], live, inventory)


def plan_of(ms: Sequence[Manifest], live: list[dict[str, Any]], inventory: list[dict[str, Any]]) -> Plan:
    """The plan of ``ms``, each predicted to be stored as it is."""
    owned = [ObjectRef.of(o) for o in inventory]
    return make_plan(
        desired=ms,
        predicted={m.ref: m.obj for m in ms},
        live={ObjectRef.of(o): o for o in live},
        inventory=owned,
        stale=stale(owned, [ObjectRef.of(o) for o in live], [m.ref for m in ms]),
        source="default",
        revision="abc",
        git_ref="main",
        backend="test",
        fingerprint="fp",
    )


def served(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as a server returns it: with server-set metadata and status."""
    out = copy.deepcopy(obj)
    out["metadata"].update(
        resourceVersion="7",
        uid="u-1",
        generation=2,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "gitmesh"}],
    )
    out["status"] = {"observed": True}
    return out


NS = f.namespace("store")
SVC = f.service("store", "bookstore", 80)
SVC_8080 = f.service("store", "bookstore", 8080)
OTHER = f.service("store", "other", 80)


@pytest.mark.parametrize(
    ("desired", "live", "inventory", "expected"),
    [
        pytest.param(
            [NS, SVC],
            [],
            [],
            {"Namespace/store": "create", "Service/store/bookstore": "create"},
            id="empty-live-creates",
        ),
        pytest.param(
            [SVC],
            [served(SVC)],
            [SVC],
            {"Service/store/bookstore": "no-op"},
            id="server-fields-are-not-changes",
        ),
        pytest.param([SVC_8080], [served(SVC)], [SVC], {"Service/store/bookstore": "update"}, id="update"),
        pytest.param(
            [SVC],
            [served(SVC), served(OTHER)],
            [SVC, OTHER],
            {"Service/store/bookstore": "no-op", "Service/store/other": "delete"},
            id="prune-inventory",
        ),
        pytest.param(
            [SVC],
            [served(SVC), served(OTHER)],
            [SVC],
            {"Service/store/bookstore": "no-op"},
            id="never-delete-what-was-not-applied",
        ),
        pytest.param(
            [SVC],
            [served(SVC)],
            [SVC, OTHER],
            {"Service/store/bookstore": "no-op"},
            id="inventory-entry-already-gone",
        ),
        pytest.param([], [served(SVC)], [SVC], {"Service/store/bookstore": "delete"}, id="delete-everything"),
    ],
)
def test_actions(desired: list[Any], live: list[Any], inventory: list[Any], expected: dict[str, str]) -> None:
    result = plan(desired, live, inventory)
    assert {str(c.ref): c.action.value for c in result.changes} == expected


def test_a_number_that_changes_type_is_an_update() -> None:
    live = f.split("store", "s", "bookstore", {"v1": 1})
    live["spec"]["backends"][0]["weight"] = 1.0
    (change,) = plan([f.split("store", "s", "bookstore", {"v1": 1})], [served(live)], [live]).changes
    assert change.action is Action.UPDATE
    assert change.diff == (FieldDiff("spec.backends[0].weight", 1.0, 1),)


def test_objects_known_unchanged_need_no_prediction() -> None:
    ms = [manifest(SVC), manifest(NS)]
    result = make_plan(
        desired=ms,
        predicted={ObjectRef.of(NS): NS},  # nothing for SVC: the caller knows it is unchanged
        live={ObjectRef.of(SVC): served(SVC)},
        inventory=[ObjectRef.of(SVC)],
        stale=[],
        source="default",
        revision="abc",
        git_ref="main",
        backend="test",
        fingerprint="fp",
        unchanged=frozenset({ObjectRef.of(SVC)}),
    )
    assert {str(c.ref): c.action.value for c in result.changes} == {
        "Namespace/store": "create",
        "Service/store/bookstore": "no-op",
    }


def test_changes_come_in_apply_order_with_deletes_reversed() -> None:
    split = f.split("store", "s", "bookstore", {"bookstore": 1})
    sa = f.service_account("store", "sa")
    old_split = f.split("store", "old", "other", {"other": 1})
    old_ns = f.namespace("gone")
    result = plan([split, SVC, NS, sa], [served(old_split), served(old_ns)], [old_split, old_ns])
    assert [(c.ref.kind, c.action) for c in result.changes] == [
        ("Namespace", Action.CREATE),
        ("ServiceAccount", Action.CREATE),
        ("Service", Action.CREATE),
        ("TrafficSplit", Action.CREATE),
        ("TrafficSplit", Action.DELETE),
        ("Namespace", Action.DELETE),
    ]


def test_deletes_everything_only_when_nothing_remains() -> None:
    assert plan([], [served(SVC)], [SVC]).deletes_everything
    assert not plan([NS], [served(SVC)], [SVC]).deletes_everything
    assert not plan([], [], []).deletes_everything


def test_update_carries_field_diff_and_what_to_send() -> None:
    (change,) = plan([SVC_8080], [served(SVC)], [SVC]).changes
    assert change.diff == (
        FieldDiff("spec.ports[0].name", "p80", "p8080"),
        FieldDiff("spec.ports[0].port", 80, 8080),
    )
    assert change.manifest == SVC_8080
    assert change.before is not None and "resourceVersion" not in change.before["metadata"]


def test_clean_removes_only_server_fields() -> None:
    obj = served(SVC)
    obj["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        "team": "books",
    }
    cleaned = clean(obj)
    assert cleaned["metadata"] == {
        "name": "bookstore",
        "namespace": "store",
        "annotations": {"team": "books"},
    }
    assert "status" not in cleaned
    assert obj["metadata"]["uid"] == "u-1", "clean must not modify its input"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
        pytest.param({"a": 1}, {"a": 2}, [("a", "change", 1, 2)], id="change"),
        pytest.param(
            {},
            {"a": {"b": 1, "c": [1]}},
            [("a.b", "add", None, 1), ("a.c[0]", "add", None, 1)],
            id="add-nested",
        ),
        pytest.param(
            {"l": [1, 2, 3]},
            {"l": [1, 5]},
            [("l[1]", "change", 2, 5), ("l[2]", "remove", 3, None)],
            id="list-shrinks",
        ),
        pytest.param({"a": 1}, {"a": 1.0}, [("a", "change", 1, 1.0)], id="int-vs-float"),
        pytest.param({"a": True}, {"a": 1}, [("a", "change", True, 1)], id="bool-vs-int"),
        pytest.param({"a": None}, {}, [("a", "remove", None, None)], id="null-removed"),
        pytest.param({"a": {}}, {"a": []}, [("a", "change", {}, [])], id="empty-type-change"),
    ],
)
def test_field_diff(before: dict[str, Any], after: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    assert [(d.path, d.op, d.before, d.after) for d in diff_fields(before, after)] == expected
