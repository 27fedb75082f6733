"""Gateway API for mesh (GAMMA): routes whose parent is a Service.

A GAMMA route attaches to a Service (``parentRefs: [{group: "", kind: Service, name, port}]``) and
sends that Service's traffic to its rules' weighted ``backendRefs``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

GROUP = "gateway.networking.k8s.io"

# A backendRef without a weight has weight 1 (Gateway API v1, HTTPBackendRef.weight).
_DEFAULT_WEIGHT = 1


def service_parents(obj: dict[str, Any]) -> tuple[str, ...]:
    """The names of the Services a route attaches to, as written, in order."""
    return tuple(
        str(p.get("name", ""))
        for p in obj.get("spec", {}).get("parentRefs") or ()
        if p.get("group", "") == "" and p.get("kind") == "Service"
    )


def route_shares(obj: dict[str, Any]) -> tuple[str, dict[str, Decimal]]:
    """The Service a route attaches to, and each backend's share in percent of its catch-all rule.

    The catch-all rule is the first without ``matches`` (it takes every request the others leave),
    else the first rule: that is the split a weight change (a rollout step) moves. A backend named
    twice in the rule has the sum of its weights.
    """
    parents = service_parents(obj)
    rules = obj.get("spec", {}).get("rules") or []
    rule = next((r for r in rules if not r.get("matches")), rules[0] if rules else {})
    weights: dict[str, Decimal] = {}
    for ref in rule.get("backendRefs") or ():
        name = str(ref.get("name", ""))
        weights[name] = weights.get(name, Decimal(0)) + Decimal(int(ref.get("weight", _DEFAULT_WEIGHT)))
    total = sum(weights.values(), Decimal(0))
    shares = {n: (w * 100 / total if total else Decimal(0)) for n, w in weights.items()}
    return (parents[0] if parents else ""), shares
