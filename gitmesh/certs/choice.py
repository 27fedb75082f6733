"""Which provider issues the workload certificates, and how: the one place that knows the providers.

A ``Choice`` is a value: two equal choices are the same provider with the same settings, so the
server compares the one it serves with the one chosen now, and switches (``switch.Switch``) when
they differ. What is chosen comes from two places, put together by ``combine``: the controller's
configuration (its ``certificates`` section and ``--cert-lifetime``) and the mesh's own objects
(OSM's MeshRootCertificate and MeshConfig ``spec.certificate``). The configuration has the last
word: the objects fill in what it leaves out, and where the two disagree the objects' settings are
not taken, and the server says why.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from gitmesh.certs import ca
from gitmesh.certs.certmanager import CertManager, CertManagerSettings, Requests
from gitmesh.certs.provider import Issuer
from gitmesh.certs.vault import VaultPki, VaultSettings
from gitmesh.mesh.state import CertificateSettings

PROVIDERS = ("builtin", "vault", "cert-manager")


@dataclass(frozen=True)
class Choice:
    provider: str = "builtin"
    vault: VaultSettings | None = None  # with provider ``vault``
    cert_manager: CertManagerSettings | None = None  # with provider ``cert-manager``

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise ValueError(f"unknown certificate provider {self.provider!r} (one of {known})")
        if (self.provider == "vault") != (self.vault is not None):
            raise ValueError("the vault provider, and it alone, takes vault settings")
        if (self.provider == "cert-manager") != (self.cert_manager is not None):
            raise ValueError("the cert-manager provider, and it alone, takes cert-manager settings")

    def __str__(self) -> str:
        if self.vault is not None:
            return f"vault ({self.vault.address} {self.vault.mount}/issue/{self.vault.role})"
        if self.cert_manager is not None:
            return f"cert-manager ({self.cert_manager})"
        return self.provider


@dataclass(frozen=True)
class Decision:
    """What is served: the provider, the certificates' lifetime and key strength, and why what was
    chosen is not (the mesh's objects' settings, or cert-manager without a cluster; None when
    nothing was refused)."""

    choice: Choice
    lifetime: datetime.timedelta = ca.DEFAULT_LIFETIME
    key_bits: int | None = None  # the RSA size asked for; None: ECDSA P-256, gitmesh's own
    refused: str | None = None


def issuer(choice: Choice, requests: Requests | None, key_bits: int | None = None) -> Issuer | None:
    """The remote CA the choice names; None for the built-in CA. ``requests``: the cluster's
    CertificateRequests (``combine`` chooses cert-manager only where there are some)."""
    if choice.vault is not None:
        return VaultPki(choice.vault)
    if choice.cert_manager is not None and requests is not None:
        return CertManager(choice.cert_manager, requests, key_bits)
    return None


def combine(
    configured: Choice | None,
    lifetime: datetime.timedelta | None,
    mesh: CertificateSettings,
    trust_domain: str,
    cluster: bool = False,
) -> Decision:
    """The controller's configuration (``configured``: its provider, None when it names none;
    ``lifetime``: None when not given) with what the mesh's objects say filled in; ``cluster``:
    whether gitmesh run has one (cert-manager issues only there)."""
    conflicts = []
    choice = configured or Choice()
    if mesh.trust_domain is not None and mesh.trust_domain != trust_domain:
        conflicts.append(f"its trust domain is {mesh.trust_domain}, gitmesh's {trust_domain}")
    if mesh.provider is not None:
        wanted = _wanted(mesh)
        if configured is not None and wanted != _wanted_of(configured):
            conflicts.append(f"it chooses {_said(wanted)}, the controller configuration {configured}")
        elif configured is None and mesh.provider == "vault":
            conflicts.append(
                f"it chooses {_said(wanted)}; gitmesh reads Vault's credentials from its own "
                "configuration only (certificates.vault), not from a Secret a repository names"
            )

    if (
        mesh.lifetime_seconds is not None
        and lifetime is not None
        and mesh.lifetime_seconds != lifetime.total_seconds()
    ):
        conflicts.append(
            f"its certificate lifetime is {mesh.lifetime_seconds:g}s, gitmesh run's --cert-lifetime "
            f"{lifetime.total_seconds():g}s"
        )
    if conflicts:
        return Decision(
            choice,
            lifetime or ca.DEFAULT_LIFETIME,
            refused=f"{' and '.join(mesh.said_by)} not taken: {'; '.join(conflicts)}",
        )
    if lifetime is None and mesh.lifetime_seconds is not None:
        lifetime = datetime.timedelta(seconds=mesh.lifetime_seconds)
    if configured is None and mesh.issuer is not None:
        group, kind, name = mesh.issuer
        choice = Choice(
            "cert-manager", cert_manager=CertManagerSettings(name, kind, group, mesh.namespace or "")
        )
    if choice.cert_manager is not None and not cluster:
        refused = f"{choice} issues in a cluster, and gitmesh run has none; the built-in CA issues"
        return Decision(Choice(), lifetime or ca.DEFAULT_LIFETIME, mesh.key_bits, refused)
    return Decision(choice, lifetime or ca.DEFAULT_LIFETIME, mesh.key_bits)


def _wanted(mesh: CertificateSettings) -> tuple[str, ...]:
    """What of a provider the mesh's objects name, comparable with ``_wanted_of``."""
    if mesh.provider == "vault":
        return ("vault", str(mesh.vault_address), str(mesh.vault_role))
    return (str(mesh.provider), *(mesh.issuer or ()))


def _wanted_of(choice: Choice) -> tuple[str, ...]:
    if choice.vault is not None:
        return ("vault", choice.vault.address.rstrip("/"), choice.vault.role)
    if choice.cert_manager is not None:
        return (
            "cert-manager",
            choice.cert_manager.group,
            choice.cert_manager.kind,
            choice.cert_manager.issuer,
        )
    return (choice.provider,)


def _said(wanted: tuple[str, ...]) -> str:
    provider, *settings = wanted
    return f"{provider} ({' '.join(settings)})" if settings else provider


__all__ = ["PROVIDERS", "Choice", "Decision", "combine", "issuer"]
