"""Convert SMI objects written in older versions to the version clusters serve.

gitmesh's CRDs serve one version per kind (``Kind.served`` in ``apis.kinds``): the versions
differ in layout, not just in name, and a CRD without a conversion webhook
cannot translate between layouts. So gitmesh converts before it applies, and
the plan says so. Conversion is lossless; what cannot be carried over is
refused by validation (GM130) before conversion is reached.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gitmesh.apis import smi
from gitmesh.apis.kinds import BY_NAME


def needs_conversion(obj: dict[str, Any]) -> bool:
    kind = BY_NAME.get(obj.get("kind", ""))
    return kind is not None and obj.get("apiVersion") != kind.api_version


def lost_fields(obj: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Fields set in ``obj`` that the served version cannot hold (TrafficTarget destination ports)."""
    if obj.get("kind") != "TrafficTarget" or not needs_conversion(obj):
        return []
    if smi.version(obj) == "v1alpha1":
        return [("destination", "port")] if "port" in (obj.get("destination") or {}) else []
    dest = (obj.get("spec") or {}).get("destination") or {}
    return [("spec", "destination", "port")] if "port" in dest else []


def to_served(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` in its kind's served version; objects already served, or of other kinds, as they are."""
    if not needs_conversion(obj):
        return obj
    kind = obj["kind"]
    out: dict[str, Any] = {
        "apiVersion": BY_NAME[kind].api_version,
        "kind": kind,
        "metadata": copy.deepcopy(obj["metadata"]),
    }
    if kind == "TrafficSplit":
        out["spec"] = _split_spec(obj)
    elif kind == "TrafficTarget":
        # v1alpha4 identities may carry a group; a ServiceAccount's is the core group, so it goes.
        out["spec"] = {
            "destination": {
                k: v for k, v in _target_part(obj, "destination").items() if k not in ("port", "group")
            },
            "sources": [{k: v for k, v in s.items() if k != "group"} for s in _target_part(obj, "sources")],
        }
        if not smi.allows_all_traffic(obj):
            rules = _target_part(obj, "specs" if smi.version(obj) == "v1alpha1" else "rules")
            out["spec"]["rules"] = copy.deepcopy(rules)
    elif kind == "MeshConfig":  # v1alpha1's fields are a subset of v1alpha2's, unchanged
        out["spec"] = copy.deepcopy(obj.get("spec") or {})
    elif kind == "HTTPRouteGroup":
        matches = (
            obj.get("matches") if smi.version(obj) in ("v1alpha1", "v1alpha2") else obj["spec"]["matches"]
        )
        out["spec"] = {"matches": copy.deepcopy(matches)}
    else:  # TCPRoute / UDPRoute before v1alpha4 matched every port
        out["spec"] = {"matches": {"ports": []}}
    return out


def written_path(written: Mapping[str, Any], path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where the field at ``path`` of the converted object was in ``written``, the object as written."""
    version, kind = str(written.get("apiVersion", "")).rpartition("/")[2], written.get("kind")
    if kind == "TrafficTarget" and version == "v1alpha1" and path[:1] == ("spec",) and len(path) > 1:
        return ("specs" if path[1] == "rules" else path[1], *path[2:])
    if kind == "HTTPRouteGroup" and version in ("v1alpha1", "v1alpha2") and path[:2] == ("spec", "matches"):
        return path[1:]
    return path


def _target_part(obj: dict[str, Any], key: str) -> Any:
    body = obj if smi.version(obj) == "v1alpha1" else obj.get("spec") or {}
    return body.get(key) or ([] if key != "destination" else {})


def _split_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(obj["spec"])
    backends = spec["backends"]
    weights = [smi.parse_weight(b["weight"]) for b in backends]
    for b, w in zip(backends, integer_weights(weights), strict=True):
        b["weight"] = w
    return spec


def integer_weights(weights: list[Decimal]) -> list[int]:
    """Integer weights in the same proportions: whole weights stay as written, 500m / 1500m become 1 / 3."""
    fractions = [Fraction(w) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions)) if fractions else 1
    return [int(f * scale) for f in fractions]
