"""Which provider issues the workload certificates: the one place that knows the providers there are.

A ``Choice`` is a value: two equal choices are the same provider with the same settings, so the
server compares the one it serves with the one configured now, and switches (``switch.Switch``)
when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitmesh.certs.provider import Issuer
from gitmesh.certs.vault import VaultPki, VaultSettings

PROVIDERS = ("builtin", "vault")


@dataclass(frozen=True)
class Choice:
    provider: str = "builtin"
    vault: VaultSettings | None = None  # with provider ``vault``

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(
                f"unknown certificate provider {self.provider!r} (one of {', '.join(PROVIDERS)})"
            )
        if (self.provider == "vault") != (self.vault is not None):
            raise ValueError("the vault provider, and it alone, takes vault settings")

    def __str__(self) -> str:
        if self.vault is not None:
            return f"vault ({self.vault.address} {self.vault.mount}/issue/{self.vault.role})"
        return self.provider


def issuer(choice: Choice) -> Issuer | None:
    """The remote CA the choice names; None for the built-in CA."""
    return VaultPki(choice.vault) if choice.vault is not None else None


__all__ = ["PROVIDERS", "Choice", "issuer"]
