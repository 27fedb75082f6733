"""Where workload certificates come from: the seam between the xDS server and a certificate authority.

A ``WorkloadCA`` gives each sidecar identity its certificate and the trust bundle. The built-in
CA (``authority.MeshCA``) is one; ``Remote`` is the other kind: a CA reached over the network
(``vault.VaultPki``) through an ``Issuer``, whose certificates are requested ahead of expiry in
``refresh`` (run off the xDS serving path) and held, so that a slow or unreachable CA never blocks
serving configuration, and sidecars keep their valid certificates while it is down.

The xDS connection itself (bootstraps, the server's certificate) stays on the built-in CA: it is
the control plane's own channel, not the mesh's traffic.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import threading
from typing import Protocol

from gitmesh.certs import ca
from gitmesh.errors import CertsError
from gitmesh.mesh.state import Identity

# After a failed request, an identity is not asked for again before this long (the CA is not hammered).
RETRY_AFTER = datetime.timedelta(seconds=5)
PARALLEL_REQUESTS = 16  # asked of a remote CA at once


class ProviderError(CertsError):
    """A certificate provider refused or could not be reached; the message names it and the reason."""


class WorkloadCA(Protocol):
    """What the xDS server asks of a certificate authority for the mesh's workloads."""

    @property
    def provider(self) -> str:
        """Its name in conditions and logs: ``builtin``, ``vault``."""

    @property
    def trust_domain(self) -> str: ...

    def bundle(self) -> tuple[str, ...]:
        """The root certificates every sidecar trusts."""

    def current(self, identity: Identity, now: datetime.datetime) -> ca.Issued | None:
        """``identity``'s certificate to send now, never waiting on a remote CA; None while it has
        none yet (it is then asked for at the next ``refresh``)."""

    def refresh(self, now: datetime.datetime) -> list[Identity]:
        """Renew what is due (this may wait on the CA); the identities whose sidecars must be sent
        what changed."""

    def expiries(self) -> dict[str, datetime.datetime]:
        """Identity (``ns/sa``) -> when its current certificate expires."""

    def problem(self) -> str | None:
        """Why the provider last failed, naming it; None when its last answer was a certificate."""


class Issuer(Protocol):
    """A remote CA's one operation and its roots."""

    name: str

    def issue(self, spiffe_id: str, lifetime: datetime.timedelta) -> tuple[str, str, tuple[str, ...]]:
        """A certificate (leaf then intermediates) and its key for ``spiffe_id``, and the CA's roots.
        ProviderError, naming the provider and the reason, when it is not given."""


class Remote:
    """Certificates from an ``Issuer``, requested ahead of expiry and held; thread-safe."""

    def __init__(
        self, issuer: Issuer, trust_domain: str, lifetime: datetime.timedelta = ca.DEFAULT_LIFETIME
    ) -> None:
        self.issuer = issuer
        self.lifetime = lifetime
        self._trust_domain = trust_domain
        self._lock = threading.Lock()
        self._held: dict[Identity, ca.Issued] = {}
        self._wanted: set[Identity] = set()
        self._failed_at: dict[Identity, datetime.datetime] = {}
        self._retuned: set[Identity] = set()  # held with another lifetime than the one asked for now
        self._bundle: tuple[str, ...] = ()
        self._problem: str | None = None

    @property
    def provider(self) -> str:
        return self.issuer.name

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    def bundle(self) -> tuple[str, ...]:
        with self._lock:
            return self._bundle

    def tune(self, lifetime: datetime.timedelta) -> None:
        """Another lifetime: every certificate held is asked for again at the next ``refresh`` (and
        served until then)."""
        with self._lock:
            if lifetime != self.lifetime:
                self.lifetime = lifetime
                self._retuned = set(self._held)

    def current(self, identity: Identity, now: datetime.datetime) -> ca.Issued | None:
        with self._lock:
            self._wanted.add(identity)
            held = self._held.get(identity)
        # An expired certificate would only fail handshakes: better none, and the sidecar waits.
        return held if held is not None and held.not_after > now else None

    def refresh(self, now: datetime.datetime) -> list[Identity]:
        with self._lock:
            due = sorted(
                (
                    i
                    for i in self._wanted
                    if (i not in self._held or i in self._retuned or ca.should_renew(self._held[i], now))
                    and now >= self._failed_at.get(i, now - RETRY_AFTER) + RETRY_AFTER
                ),
                key=str,
            )
        if not due:
            return []
        # A remote CA's answer takes a round trip (cert-manager's, a wait for its controllers):
        # several are asked at once, so that many new sidecars are not served one after another.
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
            answered = list(pool.map(lambda identity: self._renew(identity, now), due))
        return [identity for identity, ok in zip(due, answered, strict=True) if ok]

    def _renew(self, identity: Identity, now: datetime.datetime) -> bool:
        try:
            issued, roots = self._issue(identity, now)
        except ProviderError as e:
            with self._lock:
                self._failed_at[identity] = now
                self._problem = str(e)
            return False
        with self._lock:
            self._held[identity] = issued
            self._failed_at.pop(identity, None)
            self._retuned.discard(identity)
            self._bundle = roots
            self._problem = None
        return True

    def expiries(self) -> dict[str, datetime.datetime]:
        with self._lock:
            return {str(i): held.not_after for i, held in sorted(self._held.items(), key=lambda x: str(x[0]))}

    def problem(self) -> str | None:
        with self._lock:
            return self._problem

    def _issue(self, identity: Identity, now: datetime.datetime) -> tuple[ca.Issued, tuple[str, ...]]:
        wanted = ca.spiffe_id(self._trust_domain, identity)
        cert_pem, key_pem, roots = self.issuer.issue(wanted, self.lifetime)
        try:
            holder = ca.identity_of(cert_pem, self._trust_domain)
            not_after = ca.not_after(cert_pem)
        except ValueError as e:
            raise ProviderError(
                f"{self.issuer.name}: the certificate for {wanted} cannot be read: {e}"
            ) from e
        if holder != identity:  # nothing is ever served under a wrong identity
            raise ProviderError(
                f"{self.issuer.name}: asked for a certificate for {wanted}, got one for "
                f"{holder or 'no identity of trust domain ' + self._trust_domain}"
            )
        if not roots:
            raise ProviderError(f"{self.issuer.name}: gave no CA certificate to trust")
        return ca.Issued(identity, cert_pem, key_pem, now, not_after), roots


__all__ = ["PARALLEL_REQUESTS", "RETRY_AFTER", "Issuer", "ProviderError", "Remote", "WorkloadCA"]
