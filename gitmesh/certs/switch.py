"""Moving the workload certificates from one provider to another while serving: a root rotation.

A ``Switch`` is the ``WorkloadCA`` served while it is under way, in two phases; the server takes
each step only once every connected sidecar holds what the previous one sent:

1. ``trusting``: both providers' roots are in the bundle; the old provider's certificates are
   served, while the new one issues ahead (a remote provider's roots are known only from its first
   certificate);
2. ``issuing``: every identity is served the new provider's certificate (the old one's until the
   new one has it); both roots are still trusted;
3. done: the server serves the new provider alone, and its bundle drops the old root.

No sidecar ever holds a certificate that a peer does not trust.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable

from gitmesh.certs import ca
from gitmesh.certs.authority import ISSUING, TRUSTING
from gitmesh.certs.provider import WorkloadCA
from gitmesh.mesh.state import Identity


class Switch:
    """From ``old`` to ``new`` (a ``WorkloadCA`` itself); thread-safe."""

    def __init__(self, old: WorkloadCA, new: WorkloadCA) -> None:
        if old.trust_domain != new.trust_domain:
            raise ValueError(
                f"{new.provider} issues for trust domain {new.trust_domain}, {old.provider} for "
                f"{old.trust_domain}: a switch keeps the trust domain"
            )
        self.old, self.new = old, new
        self._lock = threading.Lock()
        self._phase = TRUSTING
        self._on_old: set[Identity] = set()  # identities last served the old provider's certificate

    @property
    def provider(self) -> str:
        return f"{self.new.provider} (switching from {self.old.provider}: {self.phase})"

    @property
    def phase(self) -> str:
        with self._lock:
            return self._phase

    @property
    def trust_domain(self) -> str:
        return self.new.trust_domain

    def bundle(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.old.bundle(), *self.new.bundle())))

    def current(self, identity: Identity, now: datetime.datetime) -> ca.Issued | None:
        fresh = self.new.current(identity, now)  # asked in both phases, so that it issues ahead
        with self._lock:
            if self._phase == ISSUING and fresh is not None:
                self._on_old.discard(identity)
                return fresh
            self._on_old.add(identity)
        return self.old.current(identity, now)

    def refresh(self, now: datetime.datetime) -> list[Identity]:
        renewed = self.old.refresh(now)
        fresh = self.new.refresh(now)
        if self.phase == TRUSTING:
            return renewed
        return sorted({*renewed, *fresh}, key=str)

    def expiries(self) -> dict[str, datetime.datetime]:
        served = self.old.expiries()
        if self.phase == ISSUING:
            with self._lock:
                on_old = {str(i) for i in self._on_old}
            served |= {i: at for i, at in self.new.expiries().items() if i not in on_old}
        return served

    def problem(self) -> str | None:
        return self.new.problem() or self.old.problem()

    def ready(self, identities: Iterable[Identity]) -> bool:
        """Whether the next step may be taken once the sidecars of ``identities`` hold what they were
        last sent: trusting, when the new provider's roots are known; issuing, when every one of them
        was sent the new provider's certificate."""
        if self.phase == TRUSTING:
            return bool(self.new.bundle())
        with self._lock:
            return not self._on_old.intersection(identities)

    def advance(self) -> None:
        """Trusting -> issuing (the server then sends every sidecar its certificate again)."""
        with self._lock:
            self._phase = ISSUING


__all__ = ["Switch"]
