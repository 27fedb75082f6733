"""The mesh CA's state (its roots, which one signs, where a rotation stands) and the certificates
it has issued.

A root rotation moves through three states, each a ``CaState`` value, and
every step is taken only once every sidecar holds what the previous one sent:

1. ``trusting``: the new root is added to the trust bundle; the old one still signs;
2. ``issuing``: the new root signs, every certificate is reissued; both are trusted;
3. steady again: the old root is retired from the bundle.

At no point does a sidecar hold a certificate its peers do not trust.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass, replace

from gitmesh.certs import ca
from gitmesh.mesh.state import Identity

STEADY = "steady"
TRUSTING = "trusting new root"
ISSUING = "issuing from new root"


@dataclass(frozen=True)
class CaState:
    trust_domain: str
    authorities: tuple[ca.Authority, ...]  # oldest first; the trust bundle is their roots
    signer: int = 0  # the authority that issues now

    @property
    def signing(self) -> ca.Authority:
        return self.authorities[self.signer]

    @property
    def phase(self) -> str:
        if len(self.authorities) == 1:
            return STEADY
        return ISSUING if self.signer == len(self.authorities) - 1 else TRUSTING

    def bundle(self) -> tuple[str, ...]:
        """The root certificates every sidecar trusts, without repeats (two intermediates may share one)."""
        return tuple(dict.fromkeys(a.root_pem for a in self.authorities))


def begin_rotation(state: CaState, new: ca.Authority) -> CaState:
    """Step 1: trust ``new`` alongside the current root. ValueError if a rotation is under way."""
    if state.phase != STEADY:
        raise ValueError(f"a rotation is already under way ({state.phase})")
    return replace(state, authorities=(*state.authorities, new))


def advance(state: CaState) -> CaState:
    """The next step of a rotation; a steady state stays as it is."""
    if state.phase == TRUSTING:
        return replace(state, signer=len(state.authorities) - 1)
    if state.phase == ISSUING:
        return replace(state, authorities=state.authorities[-1:], signer=0)
    return state


class MeshCA:
    """Issues and remembers one certificate per identity; thread-safe. The built-in provider of
    workload certificates (``provider.WorkloadCA``): issuing is local and quick, so it is done when
    a certificate is asked for."""

    provider = "builtin"

    def __init__(
        self, state: CaState, lifetime: datetime.timedelta = ca.DEFAULT_LIFETIME, key_bits: int | None = None
    ) -> None:
        self.lifetime = lifetime
        self.key_bits = key_bits  # see ca.workload_key
        self._lock = threading.Lock()
        self._state = state
        self._issued: dict[Identity, tuple[ca.Issued, ca.Authority]] = {}

    @property
    def state(self) -> CaState:
        return self._state

    @property
    def trust_domain(self) -> str:
        return self._state.trust_domain

    def bundle(self) -> tuple[str, ...]:
        return self._state.bundle()

    def set_state(self, state: CaState) -> None:
        """A new CA state (a rotation step, or read back from the store); certificates the new
        signer did not issue become due."""
        with self._lock:
            self._state = state

    def tune(self, lifetime: datetime.timedelta, key_bits: int | None) -> None:
        """Another lifetime or key strength: every certificate is issued again when next asked for."""
        with self._lock:
            if (lifetime, key_bits) != (self.lifetime, self.key_bits):
                self.lifetime, self.key_bits = lifetime, key_bits
                self._issued.clear()

    def certificate(self, identity: Identity, now: datetime.datetime, server_name: str = "") -> ca.Issued:
        """``identity``'s current certificate: the one issued before, unless it is due.
        ``server_name``: see ``ca.issue`` (give the same one every time for an identity)."""
        with self._lock:
            held = self._issued.get(identity)
            if held is not None and not self._is_due(held, now):
                return held[0]
            signer = self._state.signing
            issued = ca.issue(
                signer,
                self._state.trust_domain,
                identity,
                now,
                self.lifetime,
                server_name=server_name,
                key_bits=self.key_bits,
            )
            self._issued[identity] = (issued, signer)
            return issued

    def current(self, identity: Identity, now: datetime.datetime) -> ca.Issued:
        return self.certificate(identity, now)

    def refresh(self, now: datetime.datetime) -> list[Identity]:
        """The identities due: sending their sidecars what changed issues their new certificates."""
        return self.due(now)

    def problem(self) -> None:
        return None

    def due(self, now: datetime.datetime) -> list[Identity]:
        """Identities whose certificate should be renewed, or reissued by the current signer."""
        with self._lock:
            return sorted(
                (i for i, held in self._issued.items() if self._is_due(held, now)), key=lambda i: str(i)
            )

    def expiries(self) -> dict[str, datetime.datetime]:
        """Identity (``ns/sa``) -> when its current workload certificate expires: for status and metrics."""
        with self._lock:
            return {
                str(i): held[0].not_after for i, held in sorted(self._issued.items(), key=lambda x: str(x[0]))
            }

    def _is_due(self, held: tuple[ca.Issued, ca.Authority], now: datetime.datetime) -> bool:
        return held[1] != self._state.signing or ca.should_renew(held[0], now)


__all__ = ["ISSUING", "STEADY", "TRUSTING", "CaState", "MeshCA", "advance", "begin_rotation"]
