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
from gitmesh.certs.provider import Issuer
from gitmesh.certs.vault import VaultPki, VaultSettings
from gitmesh.mesh.state import CertificateSettings

PROVIDERS = ("builtin", "vault")


@dataclass(frozen=True)
class Choice:
    provider: str = "builtin"
    vault: VaultSettings | None = None  # with provider ``vault``

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise ValueError(f"unknown certificate provider {self.provider!r} (one of {known})")
        if (self.provider == "vault") != (self.vault is not None):
            raise ValueError("the vault provider, and it alone, takes vault settings")

    def __str__(self) -> str:
        if self.vault is not None:
            return f"vault ({self.vault.address} {self.vault.mount}/issue/{self.vault.role})"
        return self.provider


@dataclass(frozen=True)
class Decision:
    """What is served: the provider, the certificates' lifetime and key strength, and why the mesh's
    objects were not taken (None when nothing was refused)."""

    choice: Choice
    lifetime: datetime.timedelta = ca.DEFAULT_LIFETIME
    key_bits: int | None = None  # the RSA size asked for; None: ECDSA P-256, gitmesh's own
    refused: str | None = None


def issuer(choice: Choice) -> Issuer | None:
    """The remote CA the choice names; None for the built-in CA."""
    return VaultPki(choice.vault) if choice.vault is not None else None


def combine(
    configured: Choice | None,
    lifetime: datetime.timedelta | None,
    mesh: CertificateSettings,
    trust_domain: str,
) -> Decision:
    """The controller's configuration (``configured``: its provider, None when it names none;
    ``lifetime``: None when not given) with what the mesh's objects say filled in."""
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
        elif configured is None and mesh.provider != "builtin":
            conflicts.append(f"it chooses {_said(wanted)}, which gitmesh does not provide")
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
    return Decision(choice, lifetime or ca.DEFAULT_LIFETIME, mesh.key_bits)


def _wanted(mesh: CertificateSettings) -> tuple[str, ...]:
    """What of a provider the mesh's objects name, comparable with ``_wanted_of``."""
    if mesh.provider == "vault":
        return ("vault", str(mesh.vault_address), str(mesh.vault_role))
    return (str(mesh.provider), *(mesh.issuer or ()))


def _wanted_of(choice: Choice) -> tuple[str, ...]:
    if choice.vault is not None:
        return ("vault", choice.vault.address.rstrip("/"), choice.vault.role)
    return (choice.provider,)


def _said(wanted: tuple[str, ...]) -> str:
    provider, *settings = wanted
    return f"{provider} ({' '.join(settings)})" if settings else provider


__all__ = ["PROVIDERS", "Choice", "Decision", "combine", "issuer"]
