"""Which provider serves (``choice.combine``): the controller's configuration has the last word, the
mesh's objects (OSM's MeshRootCertificate, MeshConfig ``spec.certificate``) fill in what it leaves
out, and a disagreement is refused with the objects and the reason named."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gitmesh.apis import osm, read
from gitmesh.certs import ca
from gitmesh.certs.certmanager import CertManagerSettings
from gitmesh.certs.choice import Choice, Decision, combine
from gitmesh.certs.vault import VaultSettings
from gitmesh.mesh.state import CertificateSettings

TD = "cluster.local"
HOUR = datetime.timedelta(hours=1)
VAULT = Choice("vault", VaultSettings("https://vault.example:8200", "sidecars", Path("token")))


def mesh_config(certificate: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "config.openservicemesh.io/v1alpha2",
        "kind": "MeshConfig",
        "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
        "spec": {"certificate": certificate},
    }


def root_certificate(provider: dict[str, Any], trust_domain: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "config.openservicemesh.io/v1alpha2",
        "kind": "MeshRootCertificate",
        "metadata": {"name": "osm-mesh-root-certificate", "namespace": "osm-system"},
        "spec": {"provider": provider, **({"trustDomain": trust_domain} if trust_domain else {})},
    }


VAULT_MRC = root_certificate(
    {
        "vault": {
            "host": "vault.example",
            "port": 8200,
            "protocol": "https",
            "role": "sidecars",
            "token": {"secretKeyRef": {"name": "vault", "namespace": "osm-system", "key": "token"}},
        }
    }
)
TRESOR_MRC = root_certificate(
    {"tresor": {"ca": {"secretRef": {"name": "osm-ca", "namespace": "osm-system"}}}}
)


def settings(*objects: dict[str, Any]) -> CertificateSettings:
    return read.mesh(objects).certificates


def test_the_mesh_objects_are_read_as_osm_writes_them() -> None:
    read_back = settings(
        mesh_config({"serviceCertValidityDuration": "1h30m", "certKeyBitSize": 4096}), VAULT_MRC
    )
    assert read_back == CertificateSettings(
        provider="vault",
        vault_address="https://vault.example:8200",
        vault_role="sidecars",
        trust_domain="cluster.local",
        namespace="osm-system",
        lifetime_seconds=5400,
        key_bits=4096,
        said_by=(
            "MeshConfig osm-system/osm-mesh-config",
            "MeshRootCertificate osm-system/osm-mesh-root-certificate",
        ),
    )
    manager = root_certificate(
        {
            "certManager": {
                "issuerName": "mesh-ca",
                "issuerKind": "ClusterIssuer",
                "issuerGroup": "cert-manager.io",
            }
        }
    )
    assert settings(manager).issuer == ("cert-manager.io", "ClusterIssuer", "mesh-ca")
    assert settings() == CertificateSettings()


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), ("500ms", 0.5)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert osm.go_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "1d", "h", "1h 30m"])
def test_what_is_not_a_go_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Go duration"):
        osm.go_duration(text)


def test_without_a_configured_provider_the_mesh_objects_choose() -> None:
    assert combine(None, None, CertificateSettings(), TD) == Decision(Choice())
    tuned = settings(mesh_config({"serviceCertValidityDuration": "1h", "certKeyBitSize": 4096}), TRESOR_MRC)
    assert combine(None, None, tuned, TD) == Decision(Choice("builtin"), HOUR, 4096)


def test_the_configuration_agreeing_with_the_objects_takes_their_lifetime() -> None:
    objects = settings(mesh_config({"serviceCertValidityDuration": "1h", "certKeyBitSize": 2048}), VAULT_MRC)
    assert combine(VAULT, None, objects, TD) == Decision(VAULT, HOUR, 2048)
    assert combine(VAULT, HOUR, objects, TD) == Decision(VAULT, HOUR, 2048)


@pytest.mark.parametrize(
    ("configured", "lifetime", "objects", "reason"),
    [
        (
            Choice(),
            None,
            (VAULT_MRC,),
            "it chooses vault (https://vault.example:8200 sidecars), the controller configuration builtin",
        ),
        (
            Choice("vault", VaultSettings("https://vault.example:8200", "other", Path("t"))),
            None,
            (VAULT_MRC,),
            "it chooses vault (https://vault.example:8200 sidecars), the controller configuration "
            "vault (https://vault.example:8200 pki/issue/other)",
        ),
        (
            None,
            None,
            (VAULT_MRC,),
            "gitmesh reads Vault's credentials from its own configuration only (certificates.vault)",
        ),
        (
            None,
            None,
            (
                root_certificate(
                    {"tresor": {"ca": {"secretRef": {"name": "c", "namespace": "n"}}}}, "example.org"
                ),
            ),
            "its trust domain is example.org, gitmesh's cluster.local",
        ),
        (
            None,
            HOUR,
            (mesh_config({"serviceCertValidityDuration": "24h", "certKeyBitSize": 2048}),),
            "its certificate lifetime is 86400s, gitmesh run's --cert-lifetime 3600s",
        ),
    ],
)
def test_a_disagreement_is_refused_and_the_configuration_kept(
    configured: Choice | None,
    lifetime: datetime.timedelta | None,
    objects: tuple[dict[str, Any], ...],
    reason: str,
) -> None:
    decided = combine(configured, lifetime, settings(*objects), TD)
    assert decided.choice == (configured or Choice())
    assert decided.lifetime == (lifetime or ca.DEFAULT_LIFETIME) and decided.key_bits is None
    assert decided.refused is not None
    assert decided.refused.startswith(f"{' and '.join(settings(*objects).said_by)} not taken: ")
    assert reason in decided.refused


@pytest.mark.parametrize(
    ("bits", "curve"),
    [
        (None, "secp256r1"),
        (2048, "secp256r1"),
        (3072, "secp256r1"),
        (4096, "secp384r1"),
        (7680, "secp384r1"),
        (15360, "secp521r1"),
    ],
)
def test_key_strength_is_never_below_the_rsa_size_asked_for(bits: int | None, curve: str) -> None:
    key = ca.workload_key(bits)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == curve


def test_a_cert_manager_issuer_is_taken_where_there_is_a_cluster() -> None:
    manager = settings(
        root_certificate(
            {
                "certManager": {
                    "issuerName": "mesh-ca",
                    "issuerKind": "Issuer",
                    "issuerGroup": "cert-manager.io",
                }
            }
        )
    )
    wanted = Choice(
        "cert-manager", cert_manager=CertManagerSettings("mesh-ca", "Issuer", namespace="osm-system")
    )
    assert combine(None, None, manager, TD, cluster=True) == Decision(wanted)
    assert combine(wanted, None, manager, TD, cluster=True) == Decision(wanted)  # the same: agreed
    alone = combine(None, None, manager, TD)
    assert alone.choice == Choice() and alone.refused == (
        "cert-manager (Issuer osm-system/mesh-ca) issues in a cluster, and gitmesh run has none; "
        "the built-in CA issues"
    )
