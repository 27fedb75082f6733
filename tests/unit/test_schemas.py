"""Tests for gitmesh's manifest schemas (gitmesh/plan/schemas) and their loader.

Three kinds of checks:

* hand-written examples per kind: valid objects are accepted, and the mistakes
  gitmesh exists to catch (negative or fractional weights, empty source or rule
  lists, misspelt fields, bad ports) are rejected with the expected keyword;
* compatibility with the official SMI CRDs, as Open Service Mesh v1.2.4 ships them
  (fetched from its Go module by ``testenv/crds.sh``): every
  object the CRD accepts (under strict field validation) must be accepted by
  gitmesh too, unless each complaint is one of the deliberate tightenings
  listed in ``TIGHTENINGS`` below (mirrored in ``gitmesh/plan/schemas/README.md``);
* structure: every field a CRD version declares exists in our schema, every
  property has a description, and SMI objects reject unknown fields.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema import from_schema

from gitmesh.plan import crds
from gitmesh.plan import schema as schemas

REPO = Path(__file__).resolve().parents[2]
CRD_SCRIPT = REPO / "testenv" / "crds.sh"
README = REPO / "gitmesh" / "plan" / "schemas" / "README.md"
SMI_GROUPS = ("split.smi-spec.io", "access.smi-spec.io", "specs.smi-spec.io")

EXPECTED_KINDS = frozenset(
    {(f"split.smi-spec.io/{v}", "TrafficSplit") for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")}
    | {(f"access.smi-spec.io/{v}", "TrafficTarget") for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")}
    | {
        (f"specs.smi-spec.io/{v}", k)
        for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")
        for k in ("HTTPRouteGroup", "TCPRoute")
    }
    | {
        ("specs.smi-spec.io/v1alpha4", "UDPRoute"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
        ("gateway.networking.k8s.io/v1", "ReferenceGrant"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ("v1", "Namespace"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("config.openservicemesh.io/v1alpha1", "MeshConfig"),
        ("config.openservicemesh.io/v1alpha2", "MeshConfig"),
        ("config.openservicemesh.io/v1alpha2", "MeshRootCertificate"),
        ("gitmesh.dev/v1alpha1", "EnvoyPatch"),
        ("gitmesh.dev/v1alpha1", "FaultInjection"),
    }
    | {
        ("policy.openservicemesh.io/v1alpha1", k)
        for k in ("Retry", "UpstreamTrafficSetting", "Egress", "IngressBackend")
    }
)


# --------------------------------------------------------------------------- the tightenings


@dataclass(frozen=True)
class Tightening:
    """A place where gitmesh deliberately rejects something the upstream CRD accepts.

    ``paths`` are field paths with ``[*]`` for any list index (for ``required``,
    the path of the missing field); an error is covered when its kind, version,
    path and JSON Schema keyword all match one entry.
    """

    kind: str
    versions: tuple[str, ...]
    paths: tuple[str, ...]
    keywords: tuple[str, ...]
    reason: str


A1, A2, A3, A4 = "v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"
_TS, _TT, _HRG = "TrafficSplit", "TrafficTarget", "HTTPRouteGroup"
_TT_SOURCES = ("sources", "spec.sources")
_TT_RULES = ("specs", "spec.rules")

TIGHTENINGS: tuple[Tightening, ...] = (
    Tightening(
        _TS,
        (A1, A2, A3, A4),
        ("spec",),
        ("required",),
        "without a spec there is no root service and no backend: the object means nothing",
    ),
    Tightening(
        _TS,
        (A1, A2, A3, A4),
        ("spec.service", "spec.backends[*].service"),
        ("minLength",),
        "the root service and each backend name a Kubernetes service, so they cannot be empty",
    ),
    Tightening(
        _TS,
        (A1, A2, A3, A4),
        ("spec.backends",),
        ("minItems",),
        "traffic is divided among the backends; with none there is nowhere to send it",
    ),
    Tightening(
        _TS,
        (A2, A3, A4),
        ("spec.backends[*].weight",),
        ("type",),
        "weights must be whole numbers (SMI TrafficSplit spec text, v1alpha2 onward); the CRD says number",
    ),
    Tightening(
        _TS,
        (A1, A2, A3, A4),
        ("spec.backends[*].weight",),
        ("minimum",),
        "a weight is a relative share of traffic: 0 sends nothing, a negative share has no meaning",
    ),
    Tightening(
        _TS,
        (A3, A4),
        ("spec.matches[*].name",),
        ("minLength",),
        "each match names an HTTPRouteGroup, so the name cannot be empty",
    ),
    Tightening(
        _TT,
        (A2, A3),
        ("spec",),
        ("required",),
        "without a spec there is no destination, rule or source: the object grants nothing",
    ),
    Tightening(
        _TT,
        (A1, A2),
        _TT_SOURCES,
        ("required",),
        "a valid TrafficTarget names at least one source (SMI traffic-access spec text, stated from "
        "v1alpha3; access is additive, so an older object without sources grants nothing either)",
    ),
    Tightening(
        _TT,
        (A1, A2, A3),
        (*_TT_SOURCES, *_TT_RULES),
        ("minItems",),
        "at least one rule and at least one source (SMI traffic-access spec text); an empty list "
        "grants no access",
    ),
    Tightening(
        _TT,
        (A1, A2, A3),
        ("destination.kind", "sources[*].kind", "spec.destination.kind", "spec.sources[*].kind"),
        ("const",),
        "SMI identities are Kubernetes service accounts (spec text); gitmesh maps only "
        "ServiceAccount to workload identities, any other kind would silently match no pod",
    ),
    Tightening(
        _TT,
        (A1, A2),
        ("destination.port", "spec.destination.port"),
        ("type", "minimum", "maximum"),
        "a destination port is a TCP port number, a whole number from 1 to 65535",
    ),
    Tightening(
        _TT,
        (A1, A2, A3),
        (
            "destination.name",
            "sources[*].name",
            "specs[*].name",
            "spec.destination.name",
            "spec.sources[*].name",
            "spec.rules[*].name",
        ),
        ("minLength",),
        "these name a ServiceAccount or a traffic spec, so they cannot be empty",
    ),
    Tightening(
        _TT,
        (A1, A2, A3),
        (
            "destination.namespace",
            "sources[*].namespace",
            "spec.destination.namespace",
            "spec.sources[*].namespace",
        ),
        ("pattern", "maxLength"),
        "namespaces are DNS-1123 labels; any other value can never match a service account",
    ),
    Tightening(
        _HRG,
        (A3, A4),
        ("spec",),
        ("required",),
        "without a spec the group has no routes for rules or splits to refer to",
    ),
    Tightening(
        _HRG,
        (A1, A2, A3, A4),
        ("matches[*].name", "spec.matches[*].name"),
        ("minLength",),
        "the match name is the key TrafficTarget rules use to refer to a route",
    ),
    Tightening(
        "TCPRoute",
        (A4,),
        ("spec.matches.ports[*]",),
        ("minimum", "maximum"),
        "a TCP port number is a whole number from 1 to 65535",
    ),
    Tightening(
        "UDPRoute",
        (A4,),
        ("spec.matches.ports[*]",),
        ("minimum", "maximum"),
        "a UDP port number is a whole number from 1 to 65535",
    ),
)


def field_path(parts: Iterable[str | int]) -> str:
    """``['spec', 'backends', 0, 'weight']`` -> ``'spec.backends[*].weight'``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += "[*]"
        else:
            out += f".{part}" if out else part
    return out


def error_fields(error: jsonschema.ValidationError) -> set[str]:
    """The field paths an error is about; for ``required``, the paths of the missing fields."""
    here = field_path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        return {f"{here}.{p}" if here else p for p in missing}
    return {here}


def is_tightening(kind: str, version: str, error: jsonschema.ValidationError) -> bool:
    return all(
        any(
            t.kind == kind and version in t.versions and path in t.paths and error.validator in t.keywords
            for t in TIGHTENINGS
        )
        for path in error_fields(error)
    )


# --------------------------------------------------------------------------- CRD helpers


# The SMI CRD versions OSM ships (it has no UDPRoute CRD, so UDPRoute is checked by the examples alone).
CRD_KEYS = sorted(
    {(f"split.smi-spec.io/{v}", "TrafficSplit") for v in ("v1alpha2", "v1alpha3", "v1alpha4")}
    | {(f"access.smi-spec.io/{v}", "TrafficTarget") for v in ("v1alpha1", "v1alpha2", "v1alpha3")}
    | {(f"specs.smi-spec.io/{v}", "HTTPRouteGroup") for v in ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")}
    | {("specs.smi-spec.io/v1alpha4", "TCPRoute")}
)


@pytest.fixture(scope="module")
def crd_dir() -> Path:
    """The official CRD files; the first run on a machine fetches them (see testenv/README.md)."""
    proc = subprocess.run(
        ["bash", str(CRD_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{CRD_SCRIPT} failed:\n{proc.stderr}", pytrace=False)
    return Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def crd_versions(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema for every version of the SMI CRDs."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                not doc
                or doc.get("kind") != "CustomResourceDefinition"
                or doc["spec"]["group"] not in SMI_GROUPS
            ):
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                found[key] = version["schema"]["openAPIV3Schema"]
    return found


def test_every_schema_file_is_a_valid_json_schema() -> None:
    files = sorted(schemas.SCHEMA_DIR.rglob("*.yaml"))
    assert len(files) == len(schemas.known_kinds()) + 2  # + objectmeta.yaml, rollout-policy.yaml
    for path in files:
        jsonschema.Draft202012Validator.check_schema(yaml.safe_load(path.read_text()))


@pytest.mark.integration
def test_the_official_crds_are_the_versions_compared_with(crd_versions: dict[tuple[str, str], Any]) -> None:
    assert sorted(crd_versions) == CRD_KEYS


@pytest.mark.integration
@pytest.mark.parametrize(
    ("crd", "kind", "version"),
    [
        ("config_meshconfig.yaml", "MeshConfig", "v1alpha1"),
        ("config_meshconfig.yaml", "MeshConfig", "v1alpha2"),
        ("config_mesh_root_certificate.yaml", "MeshRootCertificate", "v1alpha2"),
    ],
)
def test_osm_config_kinds_are_the_osm_crds(crd_dir: Path, crd: str, kind: str, version: str) -> None:
    """gitmesh accepts every MeshConfig and MeshRootCertificate field OSM v1.2 defines, with the same
    type, and no other: an OSM user's object means the same to gitmesh, or is refused."""
    (doc,) = yaml.safe_load_all((crd_dir / crd).read_text())
    (served,) = [v for v in doc["spec"]["versions"] if v["name"] == version]
    theirs = served["schema"]["openAPIV3Schema"]
    ours = schemas.schema_document(f"config.openservicemesh.io/{version}", kind)
    assert ours is not None
    paths = property_paths(ours) - {"apiVersion", "kind", "metadata"}
    assert paths == property_paths(theirs)
    for path in paths:
        mine, osm = ours, theirs
        for part in re.findall(r"[^.\[\]]+|\[\*\]", path):
            key = ("items",) if part == "[*]" else ("properties", part)
            for k in key:
                mine, osm = mine[k], osm[k]
        assert mine["type"] == osm["type"], path


def strict(node: Any) -> Any:
    """A CRD schema node as the API server applies it under strict field validation:
    wherever fields are listed, unlisted ones are rejected (additionalProperties: false)."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def bounded(node: Any, size: int = 4) -> Any:
    """The same schema with lists and maps capped at ``size`` entries: generated
    objects stay small and fast to make, and no schema rule depends on length."""
    if isinstance(node, list):
        return [bounded(n, size) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: bounded(v, size) for k, v in node.items()}
    if out.get("type") == "array":
        out.setdefault("maxItems", size)
    if isinstance(out.get("additionalProperties"), dict):
        out.setdefault("maxProperties", size)
    return out


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD version's schema made strict, without ``metadata`` (the tests supply a valid one)."""
    schema = strict(crd)
    schema.get("properties", {}).pop("metadata", None)
    return schema


def wrap(api_version: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "example", "namespace": "default"},
        **body,
    }


def property_paths(node: Any, prefix: str = "") -> set[str]:
    """Every field path a schema declares: ``[*]`` for list items, ``{*}`` for map values.

    Branches of allOf/anyOf/oneOf contribute to the same path; the shared
    metadata schema is not followed (CRDs do not describe metadata).
    """
    paths: set[str] = set()
    if not isinstance(node, dict):
        return paths
    for name, sub in node.get("properties", {}).items():
        child = f"{prefix}.{name}" if prefix else name
        paths.add(child)
        paths |= property_paths(sub, child)
    if isinstance(node.get("items"), dict):
        paths.add(f"{prefix}[*]")
        paths |= property_paths(node["items"], f"{prefix}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        child = f"{prefix}.{{*}}" if prefix else "{*}"
        paths.add(child)
        paths |= property_paths(node["additionalProperties"], child)
    for combinator in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(combinator, []):
            paths |= property_paths(branch, prefix)
    return paths


# --------------------------------------------------------------------------- loader API


def test_known_kinds_is_exactly_the_documented_list() -> None:
    assert schemas.known_kinds() == EXPECTED_KINDS


def test_unknown_kind_has_no_validator() -> None:
    assert schemas.validator_for("split.smi-spec.io/v1alpha5", "TrafficSplit") is None
    assert schemas.validator_for("v1", "Pod") is None
    assert schemas.schema_document("v1", "Pod") is None


def test_schema_document_is_a_private_copy() -> None:
    doc = schemas.schema_document("split.smi-spec.io/v1alpha4", "TrafficSplit")
    assert doc is not None
    assert doc["properties"]["kind"]["const"] == "TrafficSplit"
    doc["properties"].clear()
    again = schemas.schema_document("split.smi-spec.io/v1alpha4", "TrafficSplit")
    assert again is not None and "spec" in again["properties"]


def test_validators_are_built_once() -> None:
    first = schemas.validator_for("v1", "Service")
    assert first is not None
    assert schemas.validator_for("v1", "Service") is first


def test_objectmeta_document() -> None:
    meta = schemas.objectmeta_document()
    assert meta["$id"] == schemas.OBJECTMETA_URI
    assert meta["required"] == ["name"]


# --------------------------------------------------------------------------- hand-written examples

META = {"name": "bookstore", "namespace": "bookstore-ns"}


def ts(version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"split.smi-spec.io/{version}",
        "kind": "TrafficSplit",
        "metadata": META,
        "spec": spec,
    }


def tt(version: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"access.smi-spec.io/{version}", "kind": "TrafficTarget", "metadata": META, **body}


def specs(kind: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"specs.smi-spec.io/{version}", "kind": kind, "metadata": META, **body}


BACKENDS = [{"service": "bookstore-v1", "weight": 90}, {"service": "bookstore-v2", "weight": 10}]
SA = {"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "bookbuyer"}
DEST = {"kind": "ServiceAccount", "name": "bookstore", "namespace": "bookstore"}
RULES = [{"kind": "HTTPRouteGroup", "name": "bookstore-routes", "matches": ["buy-books"]}]
TT_SPEC = {"destination": DEST, "rules": RULES, "sources": [SA]}
MATCH = {"name": "buy-books", "pathRegex": "/buy", "methods": ["GET", "POST"]}
HEADERS_MAP = {"user-agent": ".*Firefox.*", "cookie": "^(.*?;)?(type=insider)(;.*)?$"}
HEADERS_LIST = [{"user-agent": ".*Firefox.*"}, {"cookie": "^(.*?;)?(type=insider)(;.*)?$"}]

REAL_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "bookstore",
        "namespace": "bookstore",
        "uid": "0b4c5d1e-4f3a-4c2b-9a7e-1d2c3b4a5f60",
        "resourceVersion": "48213",
        "creationTimestamp": "2024-03-01T10:00:00Z",
        "labels": {"app": "bookstore", "app.kubernetes.io/part-of": "bookstore-demo", "tier": ""},
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": '{"apiVersion":"v1","kind":"Service"}\n',
        },
        "managedFields": [
            {
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {}},
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "time": "2024-03-01T10:00:00Z",
            },
        ],
    },
    "spec": {
        "clusterIP": "10.96.12.34",
        "clusterIPs": ["10.96.12.34"],
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [
            {"name": "http", "port": 14001, "protocol": "TCP", "targetPort": 14001, "appProtocol": "http"},
            {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": "metrics"},
        ],
        "selector": {"app": "bookstore"},
        "sessionAffinity": "None",
        "type": "ClusterIP",
    },
    "status": {"loadBalancer": {}},
}

REAL_SLICE = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "bookstore-x7k2p",
        "generateName": "bookstore-",
        "namespace": "bookstore",
        "generation": 3,
        "labels": {
            "kubernetes.io/service-name": "bookstore",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        },
        "ownerReferences": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": "bookstore",
                "uid": "0b4c5d1e-4f3a-4c2b-9a7e-1d2c3b4a5f60",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    },
    "addressType": "IPv4",
    "endpoints": [
        {
            "addresses": ["10.244.0.12"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": "kind-control-plane",
            "zone": "z1",
            "targetRef": {"kind": "Pod", "name": "bookstore-v1-5d9f", "namespace": "bookstore", "uid": "u"},
        },
    ],
    "ports": [{"name": "http", "port": 14001, "protocol": "TCP", "appProtocol": "http"}],
}

VALID: list[Any] = [
    pytest.param(
        ts(
            A1,
            {
                "service": "bookstore",
                "backends": [
                    {"service": "bookstore-v1", "weight": "500m"},
                    {"service": "bookstore-v2", "weight": 1},
                    {"service": "bookstore-v3", "weight": 0.25},
                    {"service": "bookstore-v4", "weight": "1k"},
                ],
            },
        ),
        id="TrafficSplit-v1alpha1-quantity-weights",
    ),
    pytest.param(
        ts(A2, {"service": "bookstore.bookstore-ns", "backends": BACKENDS}), id="TrafficSplit-v1alpha2"
    ),
    pytest.param(
        ts(A2, {"service": "bookstore", "backends": [{"service": "v2", "weight": 100.0}]}),
        id="TrafficSplit-v1alpha2-integral-float-weight",
    ),
    pytest.param(
        ts(
            A3,
            {
                "service": "bookstore",
                "backends": BACKENDS,
                "matches": [{"kind": "HTTPRouteGroup", "name": "firefox-users"}],
            },
        ),
        id="TrafficSplit-v1alpha3-matches",
    ),
    pytest.param(
        {
            **ts(A4, {"service": "bookstore", "backends": [{"service": "v1", "weight": 0}]}),
            "status": {"anything": ["goes"]},
        },
        id="TrafficSplit-v1alpha4-zero-weight-and-status",
    ),
    pytest.param(
        tt(A1, {"destination": {**DEST, "port": 8080}, "specs": RULES, "sources": [SA]}),
        id="TrafficTarget-v1alpha1-top-level",
    ),
    pytest.param(
        tt(A1, {"destination": DEST, "specs": [{"kind": "TCPRoute", "name": "tcp"}], "sources": [SA]}),
        id="TrafficTarget-v1alpha1-no-port",
    ),
    pytest.param(
        tt(A2, {"spec": {**TT_SPEC, "destination": {**DEST, "port": 14001}}}),
        id="TrafficTarget-v1alpha2-port",
    ),
    pytest.param(
        tt(
            A3,
            {
                "spec": {
                    **TT_SPEC,
                    "rules": [
                        *RULES,
                        {"kind": "TCPRoute", "name": "tcp"},
                        {"kind": "UDPRoute", "name": "udp"},
                    ],
                }
            },
        ),
        id="TrafficTarget-v1alpha3-all-rule-kinds",
    ),
    pytest.param(
        tt(
            A3,
            {
                "spec": {
                    "destination": {"kind": "ServiceAccount", "name": "bookstore"},
                    "rules": RULES,
                    "sources": [{"kind": "ServiceAccount", "name": "b"}],
                }
            },
        ),
        id="TrafficTarget-v1alpha3-namespaces-omitted",
    ),
    pytest.param(
        specs(_HRG, A1, {"matches": [MATCH, {"name": "all", "pathRegex": ".*", "methods": ["*"]}]}),
        id="HTTPRouteGroup-v1alpha1",
    ),
    pytest.param(
        specs(_HRG, A1, {"matches": [{**MATCH, "headers": HEADERS_LIST}]}),
        id="HTTPRouteGroup-v1alpha1-headers-list",
    ),
    pytest.param(
        specs(_HRG, A2, {"matches": [{"name": "ff", "headers": HEADERS_LIST}]}),
        id="HTTPRouteGroup-v1alpha2-headers-list",
    ),
    pytest.param(
        specs(_HRG, A2, {"matches": [{"name": "ff", "headers": HEADERS_MAP}]}),
        id="HTTPRouteGroup-v1alpha2-headers-map",
    ),
    pytest.param(
        specs(_HRG, A3, {"spec": {"matches": [{"name": "ff", "headers": HEADERS_MAP}]}}),
        id="HTTPRouteGroup-v1alpha3-headers-map",
    ),
    pytest.param(
        specs(_HRG, A3, {"spec": {"matches": [{"name": "ff", "headers": HEADERS_LIST}]}}),
        id="HTTPRouteGroup-v1alpha3-headers-list",
    ),
    pytest.param(
        specs(_HRG, A4, {"spec": {"matches": [{**MATCH, "headers": HEADERS_MAP}]}}),
        id="HTTPRouteGroup-v1alpha4-headers-map",
    ),
    pytest.param(
        specs(_HRG, A4, {"spec": {"matches": [{**MATCH, "headers": HEADERS_LIST}]}}),
        id="HTTPRouteGroup-v1alpha4-headers-list",
    ),
    pytest.param(specs(_HRG, A4, {"spec": {"matches": []}}), id="HTTPRouteGroup-v1alpha4-no-matches"),
    pytest.param(specs("TCPRoute", A1, {}), id="TCPRoute-v1alpha1"),
    pytest.param(specs("TCPRoute", A1, {"status": {}}), id="TCPRoute-v1alpha1-status"),
    pytest.param(specs("TCPRoute", A2, {}), id="TCPRoute-v1alpha2"),
    pytest.param(specs("TCPRoute", A3, {"spec": {}}), id="TCPRoute-v1alpha3-empty-spec"),
    pytest.param(specs("TCPRoute", A3, {}), id="TCPRoute-v1alpha3-no-spec"),
    pytest.param(
        specs("TCPRoute", A4, {"spec": {"matches": {"ports": [3306, 6446]}}}), id="TCPRoute-v1alpha4"
    ),
    pytest.param(
        specs("TCPRoute", A4, {"spec": {"matches": {"ports": []}}}), id="TCPRoute-v1alpha4-all-ports"
    ),
    pytest.param(
        specs("UDPRoute", A4, {"spec": {"matches": {"ports": [53, 65535]}}}), id="UDPRoute-v1alpha4"
    ),
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "bookstore", "labels": {"openservicemesh.io/monitored-by": "osm"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        },
        id="Namespace",
    ),
    pytest.param(REAL_SERVICE, id="Service-as-read-from-a-cluster"),
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        },
        id="Service-ExternalName",
    ),
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {
                "clusterIP": "None",
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                    {"name": "sctp", "port": 9999, "protocol": "SCTP"},
                ],
            },
        },
        id="Service-headless-multi-protocol",
    ),
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "bookbuyer", "namespace": "bookbuyer"},
            "secrets": [{"name": "bookbuyer-token-abcde"}],
            "automountServiceAccountToken": False,
        },
        id="ServiceAccount",
    ),
    pytest.param(REAL_SLICE, id="EndpointSlice-as-read-from-a-cluster"),
    pytest.param({**REAL_SLICE, "endpoints": None, "ports": None}, id="EndpointSlice-null-lists"),
    pytest.param({**REAL_SLICE, "ports": [{"name": "", "port": 80}]}, id="EndpointSlice-unnamed-port"),
]


@pytest.mark.parametrize("obj", VALID)
def test_valid_examples_are_accepted(obj: dict[str, Any]) -> None:
    validator = schemas.validator_for(obj["apiVersion"], obj["kind"])
    assert validator is not None
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
    assert errors == []


def with_path(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of obj with the dotted path (list indices as numbers) set to value."""
    out = copy.deepcopy(obj)
    node: Any = out
    keys: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


def without(obj: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node: Any = out
    keys: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return out


TS4 = ts(A4, {"service": "bookstore", "backends": BACKENDS})
TT3 = tt(A3, {"spec": TT_SPEC})
TT1 = tt(A1, {"destination": DEST, "specs": RULES, "sources": [SA]})
HRG4 = specs(_HRG, A4, {"spec": {"matches": [MATCH]}})
TCP4 = specs("TCPRoute", A4, {"spec": {"matches": {"ports": [80]}}})
SVC = REAL_SERVICE

INVALID: list[Any] = [
    # TrafficSplit
    pytest.param(
        with_path(TS4, "spec.backends.0.weight", -10),
        "$.spec.backends[0].weight",
        "minimum",
        id="TrafficSplit-negative-weight",
    ),
    pytest.param(
        with_path(ts(A2, TS4["spec"]), "spec.backends.0.weight", 0.5),
        "$.spec.backends[0].weight",
        "type",
        id="TrafficSplit-v1alpha2-fractional-weight",
    ),
    pytest.param(
        with_path(ts(A3, TS4["spec"]), "spec.backends.1.weight", 33.3),
        "$.spec.backends[1].weight",
        "type",
        id="TrafficSplit-v1alpha3-fractional-weight",
    ),
    pytest.param(
        with_path(TS4, "spec.backends.0.weight", "50"),
        "$.spec.backends[0].weight",
        "type",
        id="TrafficSplit-v1alpha4-string-weight",
    ),
    pytest.param(
        with_path(ts(A1, TS4["spec"]), "spec.backends.0.weight", "-500m"),
        "$.spec.backends[0].weight",
        "anyOf",
        id="TrafficSplit-v1alpha1-negative-quantity",
    ),
    pytest.param(
        with_path(ts(A1, TS4["spec"]), "spec.backends.0.weight", "half"),
        "$.spec.backends[0].weight",
        "anyOf",
        id="TrafficSplit-v1alpha1-not-a-quantity",
    ),
    pytest.param(
        with_path(TS4, "spec.backends", []), "$.spec.backends", "minItems", id="TrafficSplit-no-backends"
    ),
    pytest.param(
        with_path(TS4, "spec.service", ""),
        "$.spec.service",
        "minLength",
        id="TrafficSplit-empty-root-service",
    ),
    pytest.param(
        with_path(TS4, "spec.backends.0", {"service": "bookstore-v1", "weigth": 90}),
        "$.spec.backends[0]",
        "additionalProperties",
        id="TrafficSplit-typo-weigth",
    ),
    pytest.param(
        with_path(TS4, "spec.backends.0", {"service": "bookstore-v1", "weigth": 90}),
        "$.spec.backends[0]",
        "required",
        id="TrafficSplit-typo-weigth-leaves-weight-missing",
    ),
    pytest.param(
        with_path(ts(A2, TS4["spec"]), "spec.matches", [{"kind": _HRG, "name": "x"}]),
        "$.spec",
        "additionalProperties",
        id="TrafficSplit-v1alpha2-has-no-matches",
    ),
    pytest.param(
        with_path(TS4, "spec.matches", [{"kind": "TCPRoute", "name": "x"}]),
        "$.spec.matches[0].kind",
        "enum",
        id="TrafficSplit-match-kind",
    ),
    pytest.param(without(TS4, "spec"), "$", "required", id="TrafficSplit-no-spec"),
    pytest.param({**TS4, "spce": {}}, "$", "additionalProperties", id="TrafficSplit-unknown-top-level-field"),
    pytest.param({**TS4, "status": "ok"}, "$.status", "type", id="TrafficSplit-status-not-an-object"),
    # TrafficTarget
    pytest.param(
        with_path(TT3, "spec.sources", []),
        "$.spec.sources",
        "minItems",
        id="TrafficTarget-v1alpha3-empty-sources",
    ),
    pytest.param(
        with_path(TT3, "spec.rules", []), "$.spec.rules", "minItems", id="TrafficTarget-v1alpha3-empty-rules"
    ),
    pytest.param(
        with_path(TT1, "sources", []), "$.sources", "minItems", id="TrafficTarget-v1alpha1-empty-sources"
    ),
    pytest.param(with_path(TT1, "specs", []), "$.specs", "minItems", id="TrafficTarget-v1alpha1-empty-specs"),
    pytest.param(
        without(tt(A2, {"spec": TT_SPEC}), "spec.sources"),
        "$.spec",
        "required",
        id="TrafficTarget-v1alpha2-missing-sources",
    ),
    pytest.param(
        with_path(TT3, "spec.sources.0.kind", "Group"),
        "$.spec.sources[0].kind",
        "const",
        id="TrafficTarget-source-kind-not-ServiceAccount",
    ),
    pytest.param(
        with_path(TT3, "spec.destination.kind", "Service"),
        "$.spec.destination.kind",
        "const",
        id="TrafficTarget-destination-kind-not-ServiceAccount",
    ),
    pytest.param(
        with_path(tt(A2, {"spec": TT_SPEC}), "spec.destination.port", 0),
        "$.spec.destination.port",
        "minimum",
        id="TrafficTarget-v1alpha2-port-0",
    ),
    pytest.param(
        with_path(tt(A2, {"spec": TT_SPEC}), "spec.destination.port", 65536),
        "$.spec.destination.port",
        "maximum",
        id="TrafficTarget-v1alpha2-port-65536",
    ),
    pytest.param(
        with_path(TT1, "destination.port", 80.5),
        "$.destination.port",
        "type",
        id="TrafficTarget-v1alpha1-fractional-port",
    ),
    pytest.param(
        with_path(TT3, "spec.destination.port", 8080),
        "$.spec.destination",
        "additionalProperties",
        id="TrafficTarget-v1alpha3-has-no-port",
    ),
    pytest.param(
        with_path(tt(A2, {"spec": TT_SPEC}), "spec.rules.0.kind", "UDPRoute"),
        "$.spec.rules[0].kind",
        "enum",
        id="TrafficTarget-v1alpha2-no-UDPRoute",
    ),
    pytest.param(
        with_path(TT3, "spec.sources.0.namespace", "Book_Buyer"),
        "$.spec.sources[0].namespace",
        "pattern",
        id="TrafficTarget-bad-namespace",
    ),
    pytest.param(
        with_path(TT3, "spec.sources.0", {**SA, "serviceAccount": "x"}),
        "$.spec.sources[0]",
        "additionalProperties",
        id="TrafficTarget-unknown-source-field",
    ),
    pytest.param(
        tt(A1, {"spec": TT_SPEC}),
        "$",
        "additionalProperties",
        id="TrafficTarget-v1alpha1-is-not-nested-in-spec",
    ),
    # HTTPRouteGroup
    pytest.param(
        with_path(HRG4, "spec.matches.0.methods", ["GET", "FETCH"]),
        "$.spec.matches[0].methods[1]",
        "enum",
        id="HTTPRouteGroup-unknown-method",
    ),
    pytest.param(
        with_path(HRG4, "spec.matches.0.headers", {"x-canary": 1}),
        "$.spec.matches[0].headers",
        "anyOf",
        id="HTTPRouteGroup-header-regex-not-a-string",
    ),
    pytest.param(
        with_path(HRG4, "spec.matches.0.headers", "x-canary: true"),
        "$.spec.matches[0].headers",
        "anyOf",
        id="HTTPRouteGroup-headers-a-string",
    ),
    pytest.param(
        with_path(HRG4, "spec.matches.0", {"pathRegex": "/"}),
        "$.spec.matches[0]",
        "required",
        id="HTTPRouteGroup-match-without-name",
    ),
    pytest.param(
        with_path(HRG4, "spec.matches.0.pathregex", "/"),
        "$.spec.matches[0]",
        "additionalProperties",
        id="HTTPRouteGroup-typo-pathregex",
    ),
    pytest.param(without(HRG4, "spec"), "$", "required", id="HTTPRouteGroup-v1alpha4-no-spec"),
    pytest.param(
        specs(_HRG, A1, {"spec": {"matches": [MATCH]}}),
        "$",
        "additionalProperties",
        id="HTTPRouteGroup-v1alpha1-has-no-spec",
    ),
    # TCPRoute / UDPRoute
    pytest.param(
        with_path(TCP4, "spec.matches.ports", [0]), "$.spec.matches.ports[0]", "minimum", id="TCPRoute-port-0"
    ),
    pytest.param(
        with_path(TCP4, "spec.matches.ports", [80, 65536]),
        "$.spec.matches.ports[1]",
        "maximum",
        id="TCPRoute-port-65536",
    ),
    pytest.param(
        with_path(TCP4, "spec.matches.ports", ["80"]),
        "$.spec.matches.ports[0]",
        "type",
        id="TCPRoute-port-string",
    ),
    pytest.param(
        with_path(TCP4, "spec.matches", {}), "$.spec.matches", "required", id="TCPRoute-matches-without-ports"
    ),
    pytest.param(
        specs("UDPRoute", A4, {"spec": {"matches": {"ports": [-53]}}}),
        "$.spec.matches.ports[0]",
        "minimum",
        id="UDPRoute-negative-port",
    ),
    pytest.param(
        specs("TCPRoute", A3, {"spec": {"matches": {"ports": [80]}}}),
        "$.spec",
        "additionalProperties",
        id="TCPRoute-v1alpha3-spec-is-empty",
    ),
    pytest.param(
        specs("TCPRoute", A2, {"spec": {}}), "$", "additionalProperties", id="TCPRoute-v1alpha2-has-no-spec"
    ),
    # metadata (shared)
    pytest.param(without(TS4, "metadata.name"), "$.metadata", "required", id="metadata-no-name"),
    pytest.param(
        with_path(TS4, "metadata.name", "Bookstore_Split"),
        "$.metadata.name",
        "pattern",
        id="metadata-name-not-dns-subdomain",
    ),
    pytest.param(
        with_path(TS4, "metadata.name", "a" * 254),
        "$.metadata.name",
        "maxLength",
        id="metadata-name-too-long",
    ),
    pytest.param(
        with_path(TS4, "metadata.namespace", "a.b"),
        "$.metadata.namespace",
        "pattern",
        id="metadata-namespace-not-dns-label",
    ),
    pytest.param(
        with_path(TS4, "metadata.lables", {"app": "x"}),
        "$.metadata",
        "additionalProperties",
        id="metadata-typo-lables",
    ),
    pytest.param(
        with_path(TS4, "metadata.labels", {"version": 2}),
        "$.metadata.labels.version",
        "type",
        id="metadata-label-value-not-a-string",
    ),
    pytest.param(
        with_path(TS4, "metadata.labels", {"bad key!": "x"}),
        "$.metadata.labels",
        "pattern",
        id="metadata-label-key",
    ),
    pytest.param(
        with_path(TS4, "metadata.annotations", {"note": True}),
        "$.metadata.annotations.note",
        "type",
        id="metadata-annotation-value-not-a-string",
    ),
    # core kinds
    pytest.param(
        with_path(SVC, "spec.ports.0.port", 0), "$.spec.ports[0].port", "minimum", id="Service-port-0"
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.port", 70000), "$.spec.ports[0].port", "maximum", id="Service-port-70000"
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.port", "80"), "$.spec.ports[0].port", "type", id="Service-port-string"
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.protocol", "HTTP"),
        "$.spec.ports[0].protocol",
        "enum",
        id="Service-protocol-HTTP",
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.targetPort", 0),
        "$.spec.ports[0].targetPort",
        "oneOf",
        id="Service-targetPort-0",
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.targetPort", "8080"),
        "$.spec.ports[0].targetPort",
        "oneOf",
        id="Service-targetPort-digits-as-string",
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.targetPort", "http-metrics-port"),
        "$.spec.ports[0].targetPort",
        "oneOf",
        id="Service-targetPort-name-too-long",
    ),
    pytest.param(
        with_path(SVC, "spec.ports.0.name", "HTTP"), "$.spec.ports[0].name", "pattern", id="Service-port-name"
    ),
    pytest.param(without(SVC, "spec.ports.0.port"), "$.spec.ports[0]", "required", id="Service-port-missing"),
    pytest.param(
        with_path(SVC, "metadata.name", "1bookstore"),
        "$.metadata.name",
        "pattern",
        id="Service-name-not-dns-1035",
    ),
    pytest.param(
        with_path(SVC, "metadata.name", "book.store"),
        "$.metadata.name",
        "pattern",
        id="Service-name-with-dot",
    ),
    pytest.param(
        with_path(SVC, "spec.ipFamilies", ["IPv5"]), "$.spec.ipFamilies[0]", "enum", id="Service-ipFamily"
    ),
    pytest.param(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n" * 64}},
        "$.metadata.name",
        "maxLength",
        id="Namespace-name-too-long",
    ),
    pytest.param(
        with_path(REAL_SLICE, "ports.0.port", 0), "$.ports[0].port", "minimum", id="EndpointSlice-port-0"
    ),
    pytest.param(
        with_path(REAL_SLICE, "ports.0.protocol", "tcp"),
        "$.ports[0].protocol",
        "enum",
        id="EndpointSlice-protocol-lower-case",
    ),
    pytest.param(
        with_path(REAL_SLICE, "addressType", "IP"), "$.addressType", "enum", id="EndpointSlice-address-type"
    ),
    pytest.param(without(REAL_SLICE, "addressType"), "$", "required", id="EndpointSlice-no-address-type"),
    pytest.param(
        with_path(REAL_SLICE, "endpoints.0.addresses", []),
        "$.endpoints[0].addresses",
        "minItems",
        id="EndpointSlice-endpoint-without-address",
    ),
]


@pytest.mark.parametrize(("obj", "json_path", "keyword"), INVALID)
def test_invalid_examples_are_rejected(obj: dict[str, Any], json_path: str, keyword: str) -> None:
    validator = schemas.validator_for(obj["apiVersion"], obj["kind"])
    assert validator is not None
    found = {(e.json_path, e.validator) for e in validator.iter_errors(obj)}
    assert (json_path, keyword) in found


def test_apiversion_and_kind_are_pinned() -> None:
    validator = schemas.validator_for("access.smi-spec.io/v1alpha3", "TrafficTarget")
    assert validator is not None
    other = {**TT3, "apiVersion": "access.smi-spec.io/v1alpha2", "kind": "TrafficTargets"}
    found = {(e.json_path, e.validator) for e in validator.iter_errors(other)}
    assert found == {("$.apiVersion", "const"), ("$.kind", "const")}


def test_core_kinds_accept_unknown_fields() -> None:
    validator = schemas.validator_for("v1", "Service")
    assert validator is not None
    obj = with_path(REAL_SERVICE, "spec.healthCheckNodePort", 30000)
    obj["spec"]["ports"][0]["futureField"] = {"x": 1}
    assert validator.is_valid(obj)


# --------------------------------------------------------------------------- CRD compatibility


def test_every_crd_version_has_a_schema() -> None:
    assert set(CRD_KEYS) <= schemas.known_kinds()


@pytest.mark.integration
@pytest.mark.parametrize("key", CRD_KEYS, ids=[f"{k}-{v.split('/')[1]}" for v, k in CRD_KEYS])
def test_crd_fields_exist_in_our_schema(
    key: tuple[str, str], crd_versions: dict[tuple[str, str], dict[str, Any]]
) -> None:
    ours = schemas.schema_document(*key)
    missing = property_paths(crd_schema(crd_versions[key])) - property_paths(ours)
    assert not missing, f"fields the CRD declares but gitmesh's schema lacks: {sorted(missing)}"


HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.mark.integration
@pytest.mark.parametrize("key", CRD_KEYS, ids=[f"{k}-{v.split('/')[1]}" for v, k in CRD_KEYS])
def test_objects_the_crd_accepts_are_accepted_or_a_listed_tightening(
    key: tuple[str, str], crd_versions: dict[tuple[str, str], dict[str, Any]]
) -> None:
    api_version, kind = key
    version = api_version.split("/")[1]
    crd = crd_schema(crd_versions[key])
    crd_validator = jsonschema.Draft202012Validator(crd)
    ours = schemas.validator_for(api_version, kind)
    assert ours is not None

    @HYPOTHESIS
    @given(from_schema(bounded(crd)))
    def check(body: dict[str, Any]) -> None:
        assert crd_validator.is_valid(body)
        obj = wrap(api_version, kind, body)
        unexplained = [
            f"{e.json_path} [{e.validator}]: {e.message}"
            for e in ours.iter_errors(obj)
            if not is_tightening(kind, version, e)
        ]
        assert not unexplained, "the CRD accepts this but gitmesh rejects it:\n" + "\n".join(unexplained)

    check()


@pytest.mark.parametrize("tightening", TIGHTENINGS, ids=lambda t: f"{t.kind}-{t.paths[0]}-{t.keywords[0]}")
def test_each_tightening_names_real_fields_and_keywords(tightening: Tightening) -> None:
    """A stale entry (a field renamed, a keyword dropped) would silently excuse nothing; catch it."""
    for version in tightening.versions:
        group = {"TrafficSplit": "split", "TrafficTarget": "access"}.get(tightening.kind, "specs")
        doc = schemas.schema_document(f"{group}.smi-spec.io/{version}", tightening.kind)
        assert doc is not None, (tightening.kind, version)
        declared = property_paths(doc)
        present = [p for p in tightening.paths if p in declared]
        assert present, f"{tightening.kind} {version}: none of {tightening.paths} exists"
        for path in present:
            keywords = keywords_at(doc, path) | keywords_at(doc, path.rpartition(".")[0])
            assert set(tightening.keywords) & keywords, (version, path, tightening.keywords)


def keywords_at(doc: dict[str, Any], path: str) -> set[str]:
    """JSON Schema keywords used by the schema node(s) at a field path (the root for '')."""
    nodes = [doc]
    for segment in re.findall(r"[^.\[\]]+|\[\*\]", path):
        following: list[dict[str, Any]] = []
        for node in expand(nodes):
            if segment == "[*]":
                if isinstance(node.get("items"), dict):
                    following.append(node["items"])
            elif segment in node.get("properties", {}):
                following.append(node["properties"][segment])
        nodes = following
    return {k for node in expand(nodes) for k in node}


def expand(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        out.append(node)
        for combinator in ("allOf", "anyOf", "oneOf"):
            out.extend(expand(node.get(combinator, [])))
    return out


def test_readme_lists_the_same_tightenings() -> None:
    text = README.read_text()
    block = text.split("<!-- tightenings:start -->")[1].split("<!-- tightenings:end -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]
    documented = {tuple(cell.strip() for cell in row.strip("|").split("|")) for row in rows}
    expected = {readme_row(t) for t in TIGHTENINGS}
    assert documented == expected


def readme_row(t: Tightening) -> tuple[str, ...]:
    return (
        t.kind,
        ", ".join(t.versions),
        ", ".join(f"`{p}`" for p in t.paths),
        ", ".join(f"`{k}`" for k in t.keywords),
        t.reason,
    )


# --------------------------------------------------------------------------- hygiene of the schema files


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


ALL_DOCS = sorted(EXPECTED_KINDS)


@pytest.mark.parametrize("key", ALL_DOCS, ids=[f"{k}-{v}" for v, k in ALL_DOCS])
def test_every_property_has_a_description(key: tuple[str, str]) -> None:
    doc = schemas.schema_document(*key)
    assert doc is not None
    undescribed = [
        f"{path}.properties.{name}"
        for path, node in walk(doc)
        if isinstance(node.get("properties"), dict) and not path.endswith(".properties")
        for name, sub in node["properties"].items()
        if "description" not in sub
    ]
    assert not undescribed


def test_objectmeta_properties_have_descriptions() -> None:
    meta = schemas.objectmeta_document()
    assert all("description" in sub for sub in meta["properties"].values())


@pytest.mark.parametrize(
    "key",
    [k for k in ALL_DOCS if k[0].split("/")[0] in SMI_GROUPS],
    ids=lambda k: f"{k[1]}-{k[0].split('/')[-1]}",
)
def test_smi_objects_are_strict_everywhere(key: tuple[str, str]) -> None:
    doc = schemas.schema_document(*key)
    assert doc is not None
    loose = [
        path
        for path, node in walk(doc)
        if "properties" in node
        and not path.endswith(".properties")
        and node.get("additionalProperties") is not False
    ]
    assert not loose


# --------------------------------------------------------------------------- Gateway API


@pytest.fixture(scope="module")
def gateway_api_dir() -> Path:
    """Gateway API's standard-channel CRDs at the pinned release, from its Go module."""
    proc = subprocess.run(
        ["bash", str(CRD_SCRIPT), "gateway-api"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{CRD_SCRIPT} gateway-api failed:\n{proc.stderr}", pytrace=False)
    return Path(proc.stdout.strip())


@pytest.mark.integration
def test_the_shipped_gateway_api_crds_are_the_pinned_release_s(gateway_api_dir: Path) -> None:
    for name in crds.OFFICIAL:
        assert (crds.OFFICIAL_DIR / name).read_bytes() == (gateway_api_dir / name).read_bytes(), name
    for crd in crds.official():
        annotations = crd["metadata"]["annotations"]
        assert annotations["gateway.networking.k8s.io/bundle-version"] == crds.GATEWAY_API_RELEASE
        assert annotations["gateway.networking.k8s.io/channel"] == "standard"


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute", "ReferenceGrant"])
def test_a_route_schema_declares_only_fields_of_the_official_crd(kind: str) -> None:
    (route,) = [c for c in crds.official() if c["spec"]["names"]["kind"] == kind]
    (v1,) = [v for v in route["spec"]["versions"] if v["name"] == "v1"]
    theirs = property_paths(v1["schema"]["openAPIV3Schema"])
    ours = property_paths(schemas.schema_document("gateway.networking.k8s.io/v1", kind))
    assert ours - theirs == set()
    # What gitmesh does not spell out is inside what it accepts unread and refuses (GM160).
    unread = ("filters[*].", "backendRefs[*].filters[*].", "status")
    left = {p for p in theirs - ours if not p.startswith(("metadata", "status"))}
    assert {p for p in left if not any(u in p for u in unread)} == set()


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_a_route_schema_takes_the_filter_types_of_the_official_crd(kind: str) -> None:
    (route,) = [c for c in crds.official() if c["spec"]["names"]["kind"] == kind]
    (v1,) = [v for v in route["spec"]["versions"] if v["name"] == "v1"]
    ours = schemas.schema_document("gateway.networking.k8s.io/v1", kind)
    assert ours is not None
    enum = ("spec", "rules", "filters", "type")

    def types(node: Any) -> Any:
        for key in enum:
            node = node["properties"][key]
            node = node.get("items", node)
        return node["enum"]

    assert types(ours) == types(v1["schema"]["openAPIV3Schema"])


def test_a_tampered_official_crd_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in crds.OFFICIAL:
        (tmp_path / name).write_bytes((crds.OFFICIAL_DIR / name).read_bytes().replace(b"v1.6.3", b"v1.6.4"))
    monkeypatch.setattr(crds, "OFFICIAL_DIR", tmp_path)
    crds._official_docs.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"is not the file of Gateway API v1\.6\.3"):
            crds.official()
    finally:
        crds._official_docs.cache_clear()
