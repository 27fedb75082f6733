"""The kinds registry is the one declaration of a kind: its schemas, CRDs and order follow from it."""

from __future__ import annotations

from gitmesh.apis.kinds import KINDS, READ_GROUPS, apply_rank, managed
from gitmesh.objects import ObjectRef
from gitmesh.plan import crds, schema


def test_every_schema_file_is_a_version_the_registry_reads() -> None:
    files = {p for p in schema.SCHEMA_DIR.glob("*/*/*.yaml")}
    declared = {schema.schema_path(k.group, v, k.name) for k in KINDS for v in k.read}
    assert files == declared


def test_every_kind_is_served_at_a_version_it_reads() -> None:
    assert [k.name for k in KINDS if k.read and k.served not in k.read] == []


def test_crds_are_rendered_for_exactly_the_installed_kinds() -> None:
    rendered = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for c in crds.own()}
    assert rendered == {(k.group, k.name) for k in KINDS if k.crd}
    assert {g for g, _ in rendered} == READ_GROUPS


def test_what_an_object_names_is_applied_before_it() -> None:
    def rank(kind: str) -> int:
        return apply_rank(ObjectRef("", kind, "ns", "x"))[0]

    assert rank("Namespace") < rank("ServiceAccount") < rank("Service") < rank("TrafficSplit")
    assert max(rank(k) for k in ("HTTPRouteGroup", "TCPRoute", "UDPRoute")) < rank("TrafficTarget")
    assert rank("CustomResourceDefinition") < min(rank(k.name) for k in KINDS if k.crd)
    assert rank("NotAKind") == len(KINDS)


def test_managed_kinds_are_those_read_from_git() -> None:
    assert ("split.smi-spec.io", "TrafficSplit") in managed()
    assert ("apiextensions.k8s.io", "CustomResourceDefinition") not in managed()
