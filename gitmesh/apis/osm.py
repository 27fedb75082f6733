"""The OSM reader: a MeshConfig's mesh-wide settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONFIG_GROUP = "config.openservicemesh.io"

# The MeshConfig settings gitmesh acts on, as (section, field) under spec; the rest are accepted as OSM
# writes them and named in a note.
MESH_CONFIG_ACTED_ON = frozenset(
    {("traffic", "enablePermissiveTrafficPolicyMode"), ("traffic", "enableEgress")}
)


def permissive(mesh_config: Mapping[str, Any]) -> bool:
    """Whether a MeshConfig turns access checks off."""
    traffic = (mesh_config.get("spec") or {}).get("traffic") or {}
    return traffic.get("enablePermissiveTrafficPolicyMode") is True


def egress_open(mesh_config: Mapping[str, Any]) -> bool:
    """Whether a MeshConfig lets pods reach what no Egress names (OSM's default: it does not)."""
    traffic = (mesh_config.get("spec") or {}).get("traffic") or {}
    return traffic.get("enableEgress") is True
