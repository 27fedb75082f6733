"""CustomResourceDefinitions for the SMI kinds and MeshConfig, rendered from gitmesh's own schemas.

Each CRD serves and stores exactly one version (``Kind.served`` in ``apis.kinds``):
the SMI versions differ in layout (TrafficTarget v1alpha1 keeps its fields at
the top level, HTTPRouteGroup moved ``matches`` under ``spec``), and serving
several would need a conversion webhook in the cluster. gitmesh converts older
versions found in Git before applying instead, and says so in the plan.

Kubernetes accepts only *structural* OpenAPI schemas, a subset of JSON Schema,
so the rendering rewrites what it cannot hold: ``const`` becomes a one-value
``enum``; ``metadata`` is left to the API server; where gitmesh accepts two
spellings (HTTPRouteGroup headers) the CRD keeps the one gitmesh writes; and
``additionalProperties: false`` is dropped because the API server already
rejects unknown fields under strict field validation.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import yaml

from gitmesh.apis.kinds import BY_NAME, KINDS
from gitmesh.plan import schema

# Gateway API's own CRDs for the Gateway API kinds gitmesh reads, shipped as that project releases
# them (standard channel), each file pinned by its sha256: gitmesh installs them as they are, since
# other controllers read the same kinds. testenv/crds.sh gateway-api fetches the release from its
# Go module, and a test holds these files to it.
GATEWAY_API_RELEASE = "v1.6.3"
OFFICIAL_DIR = Path(__file__).parent / "official"
OFFICIAL = {
    "gateway.networking.k8s.io_httproutes.yaml": (
        "a89d17ff5ed060fa0eac015524f9252bb291f616412c13ac8cb952ed9c25c5ad"
    ),
    "gateway.networking.k8s.io_referencegrants.yaml": (
        "ff8db85aaacc91fb4096975afb5782540572bf2f04842a258094cd7f50c7f38a"
    ),
    "gateway.networking.k8s.io_grpcroutes.yaml": (
        "a96b307008290c194ad346f9bb9346dd560c12e4d4e7dfbdbe7d2fb5e812d62e"
    ),
}

_DROP = frozenset({"$schema", "$id", "title", "$comment", "examples"})


def render_all() -> list[dict[str, Any]]:
    """Every CRD ``gitmesh install crds`` installs: gitmesh's own, then the official ones."""
    return [*own(), *official()]


def own() -> list[dict[str, Any]]:
    """The CRDs of the kinds gitmesh defines or installs from its own schemas."""
    return [render(kind.name) for kind in KINDS if kind.crd]


@functools.cache
def _official_docs() -> tuple[str, ...]:
    texts = []
    for name, digest in OFFICIAL.items():
        data = (OFFICIAL_DIR / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{OFFICIAL_DIR / name} is not the file of Gateway API {GATEWAY_API_RELEASE}")
        texts.append(data.decode())
    return tuple(texts)


def official() -> list[dict[str, Any]]:
    """The official CRDs, checked against their pinned digests (fresh copies: callers may edit them)."""
    return [yaml.load(text, Loader=yaml.CSafeLoader) for text in _official_docs()]


def render(name: str) -> dict[str, Any]:
    kind = BY_NAME[name]
    doc = schema.schema_document(kind.api_version, kind.name)
    if doc is None:
        raise ValueError(f"no schema for {kind.api_version} {kind.name}")
    columns = [
        {"name": c.name, "type": "string", "jsonPath": c.json_path, "description": c.description}
        for c in kind.columns
    ]
    version_entry: dict[str, Any] = {
        "name": kind.served,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": structural(doc, top=True)},
    }
    if columns:
        version_entry["additionalPrinterColumns"] = columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{kind.group}",
            "labels": {"app.kubernetes.io/part-of": "gitmesh"},
        },
        "spec": {
            "group": kind.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind.name,
                "listKind": f"{kind.name}List",
                "plural": kind.plural,
                "singular": kind.name.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["smi"] if kind.group.endswith(".smi-spec.io") else ["gitmesh"],
            },
            "versions": [version_entry],
        },
    }


def structural(node: Any, top: bool = False) -> Any:
    """A JSON Schema node rewritten into Kubernetes' structural OpenAPI subset."""
    if isinstance(node, list):
        return [structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:  # keep the array spelling: the one gitmesh normalises to and stores
        (chosen,) = [b for b in node["anyOf"] if b.get("type") == "array"]
        merged = {k: v for k, v in node.items() if k != "anyOf"} | chosen
        return structural(merged)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "const":
            out["type"] = "string" if isinstance(value, str) else "integer"
            out["enum"] = [value]
        elif key == "properties":
            props = {name: structural(sub) for name, sub in value.items()}
            if top:  # the API server owns these three
                props |= {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                }
            out["properties"] = props
        elif key == "required" and top:
            out["required"] = [r for r in value if r not in ("apiVersion", "kind", "metadata")]
        else:
            out[key] = structural(value)
    return out
