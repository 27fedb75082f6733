"""The OSM reader: a MeshConfig's mesh-wide settings, and a MeshRootCertificate's provider."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gitmesh.mesh.state import CertificateSettings

CONFIG_GROUP = "config.openservicemesh.io"

# The MeshConfig settings gitmesh acts on, as (section, field) under spec; the rest are accepted as OSM
# writes them and named in a note.
MESH_CONFIG_ACTED_ON = frozenset(
    {
        ("traffic", "enablePermissiveTrafficPolicyMode"),
        ("traffic", "enableEgress"),
        ("certificate", "serviceCertValidityDuration"),
        ("certificate", "certKeyBitSize"),
    }
)

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
# OSM's MeshRootCertificate provider -> gitmesh's certificate provider.
PROVIDERS = {"tresor": "builtin", "vault": "vault", "certManager": "cert-manager"}


def permissive(mesh_config: Mapping[str, Any]) -> bool:
    """Whether a MeshConfig turns access checks off."""
    traffic = (mesh_config.get("spec") or {}).get("traffic") or {}
    return traffic.get("enablePermissiveTrafficPolicyMode") is True


def egress_open(mesh_config: Mapping[str, Any]) -> bool:
    """Whether a MeshConfig lets pods reach what no Egress names (OSM's default: it does not)."""
    traffic = (mesh_config.get("spec") or {}).get("traffic") or {}
    return traffic.get("enableEgress") is True


def go_duration(text: str) -> float:
    """Seconds in a Go duration (``24h``, ``1h30m``, ``90s``); ValueError if it is not one."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Go duration (e.g. 24h, 1h30m)")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def certificate_settings(
    mesh_configs: Sequence[Mapping[str, Any]], root_certificates: Sequence[Mapping[str, Any]]
) -> CertificateSettings:
    """What the first MeshConfig's ``spec.certificate`` and the first MeshRootCertificate say (validation
    refuses a second of either, GM131 and GM133)."""
    fields: dict[str, Any] = {}
    said_by = []
    if mesh_configs and (certificate := (mesh_configs[0].get("spec") or {}).get("certificate")):
        said_by.append(_name(mesh_configs[0]))
        if (duration := certificate.get("serviceCertValidityDuration")) is not None:
            fields["lifetime_seconds"] = go_duration(str(duration))
        if (bits := certificate.get("certKeyBitSize")) is not None:
            fields["key_bits"] = int(bits)
    if root_certificates:
        spec = root_certificates[0].get("spec") or {}
        said_by.append(_name(root_certificates[0]))
        fields["trust_domain"] = spec.get("trustDomain") or "cluster.local"  # OSM's default
        fields["namespace"] = (root_certificates[0].get("metadata") or {}).get("namespace")
        ((kind, provider),) = (spec.get("provider") or {}).items()
        fields["provider"] = PROVIDERS[kind]
        if kind == "vault":
            fields["vault_address"] = f"{provider['protocol']}://{provider['host']}:{provider['port']}"
            fields["vault_role"] = provider["role"]
        elif kind == "certManager":
            fields["issuer"] = (provider["issuerGroup"], provider["issuerKind"], provider["issuerName"])
    return CertificateSettings(**fields, said_by=tuple(said_by))


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind')} {metadata.get('namespace') or ''}/{metadata.get('name')}"
