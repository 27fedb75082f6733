"""A switch of provider (``switch.Switch``) over the built-in CA and a remote provider with a fake
issuer signing with a real root: both roots trusted before either side's certificates move, the new
provider's certificate served once it has it, ready only when every identity was sent one."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gitmesh import serve
from gitmesh.certs import ca
from gitmesh.certs.authority import ISSUING, TRUSTING, CaState, MeshCA
from gitmesh.certs.choice import Choice, Decision
from gitmesh.certs.provider import Remote
from gitmesh.certs.switch import Switch
from gitmesh.certs.vault import VaultSettings
from tests.certs.test_provider import BUYER, HOUR, NOW, STORE, TD, FakeIssuer


def builtin() -> MeshCA:
    return MeshCA(CaState(TD, (ca.new_root(TD, NOW),)), HOUR)


def issuer_root(issued: ca.Issued | None) -> str:
    assert issued is not None
    return x509_issuer(issued.cert_pem)


def x509_issuer(pem: str) -> str:
    return x509.load_pem_x509_certificate(pem.encode()).issuer.rfc4514_string()


def test_builtin_to_remote_trusts_both_then_issues_from_the_remote() -> None:
    old, fake = builtin(), FakeIssuer()
    switch = Switch(old, Remote(fake, TD, HOUR))
    assert switch.phase == TRUSTING and switch.provider == "fake (switching from builtin: trusting new root)"
    served = switch.current(BUYER, NOW)
    assert served == old.current(BUYER, NOW)  # the old provider's, while the new one's roots are unknown
    assert not switch.ready({BUYER})  # the remote has not answered: its roots are not known
    assert switch.bundle() == old.bundle()
    assert switch.refresh(NOW) == []  # the remote's certificate is not served yet
    assert switch.ready({BUYER})
    assert switch.bundle() == (*old.bundle(), fake.root.root_pem)
    assert switch.current(BUYER, NOW) == served

    switch.advance()
    assert switch.phase == ISSUING
    assert not switch.ready({BUYER})  # sent the old provider's certificate last
    fresh = switch.current(BUYER, NOW)
    assert fresh is not None and fresh != served and ca.identity_of(fresh.cert_pem, TD) == BUYER
    assert x509_issuer(fresh.cert_pem) == x509_issuer(fake.root.cert_pem)
    assert switch.ready({BUYER})
    # A new identity waits on the remote with the old provider's certificate: not ready till it has one.
    assert issuer_root(switch.current(STORE, NOW)) == x509_issuer(old.state.signing.cert_pem)
    assert not switch.ready({BUYER, STORE})
    assert switch.refresh(NOW) == [STORE]
    assert switch.current(STORE, NOW) is not None and switch.ready({BUYER, STORE})
    assert switch.bundle() == (*old.bundle(), fake.root.root_pem)  # both, until the server drops the old


def test_remote_to_builtin_has_the_new_roots_at_once() -> None:
    fake = FakeIssuer()
    old = Remote(fake, TD, HOUR)
    old.current(BUYER, NOW)
    old.refresh(NOW)
    new = builtin()
    switch = Switch(old, new)
    assert switch.ready({BUYER}) and switch.bundle() == (fake.root.root_pem, *new.bundle())
    assert switch.current(BUYER, NOW) == old.current(BUYER, NOW)
    switch.advance()
    assert switch.current(BUYER, NOW) == new.current(BUYER, NOW)
    assert switch.expiries() == new.expiries()


def test_a_problem_of_either_provider_is_said_and_the_trust_domain_is_kept() -> None:
    fake = FakeIssuer()
    fake.refusal = "HTTP 403: permission denied"
    switch = Switch(builtin(), Remote(fake, TD, HOUR))
    switch.current(BUYER, NOW)
    switch.refresh(NOW)
    assert switch.problem() == "fake: HTTP 403: permission denied"
    assert not switch.ready({BUYER})  # no roots from a provider that refuses: the switch waits
    with pytest.raises(ValueError, match="a switch keeps the trust domain"):
        Switch(builtin(), Remote(fake, "other.test", HOUR))


def test_a_switch_to_a_provider_that_never_issues_is_abandoned_for_a_new_choice() -> None:
    publisher = serve.MeshPublisher()
    builtin = Decision(Choice())
    unreachable = Decision(Choice("vault", VaultSettings("http://127.0.0.1:9", "sidecars", Path("token"))))
    serving = serve._follow_switch(publisher, serve._Serving(builtin), unreachable, [], None)
    assert isinstance(publisher.workload, Switch) and serving == serve._Serving(unreachable, builtin)
    # It has no roots to trust yet: the switch waits in its first step, the built-in CA issuing.
    assert serve._follow_switch(publisher, serving, unreachable, [], None) == serving
    assert publisher.workload.phase == TRUSTING
    # The configuration goes back: nothing of the other provider was served, so it is let go.
    serving = serve._follow_switch(publisher, serving, builtin, [], None)
    assert publisher.workload is publisher.ca and serving == serve._Serving(builtin)
