"""A remote provider's certificates (``provider.Remote``) over a fake issuer signing with a real root:
asked for ahead of expiry, held while the CA fails, never taken for a wrong identity."""

from __future__ import annotations

import datetime

import pytest

from gitmesh.certs import ca
from gitmesh.certs.authority import CaState, MeshCA
from gitmesh.certs.provider import RETRY_AFTER, ProviderError, Remote
from gitmesh.mesh.state import Identity

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
TD = "mesh.test"
BUYER = Identity("bookbuyer", "bookbuyer")
STORE = Identity("bookstore", "bookstore")
HOUR = datetime.timedelta(hours=1)


class FakeIssuer:
    """Signs with a real root at the time it is told; refuses while ``refusal`` is set."""

    name = "fake"

    def __init__(self) -> None:
        self.root = ca.new_root(TD, NOW)
        self.now = NOW
        self.refusal: str | None = None
        self.swap_to: Identity | None = None  # sign this identity instead of the one asked for
        self.asked: list[str] = []

    def issue(self, spiffe_id: str, lifetime: datetime.timedelta) -> tuple[str, str, tuple[str, ...]]:
        self.asked.append(spiffe_id)
        if self.refusal:
            raise ProviderError(f"fake: {self.refusal}")
        ns, sa = spiffe_id.split("/ns/")[1].split("/sa/")
        issued = ca.issue(self.root, TD, self.swap_to or Identity(ns, sa), self.now, lifetime)
        return issued.cert_pem, issued.key_pem, (self.root.root_pem,)


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


def test_the_first_certificate_is_asked_for_off_the_serving_path_then_held(issuer: FakeIssuer) -> None:
    remote = Remote(issuer, TD, HOUR)
    assert remote.current(BUYER, NOW) is None  # never waits: the sidecar gets its certificate later
    assert issuer.asked == []
    assert remote.refresh(NOW) == [BUYER]
    held = remote.current(BUYER, NOW)
    assert held is not None and ca.identity_of(held.cert_pem, TD) == BUYER
    assert remote.bundle() == (issuer.root.root_pem,)
    assert remote.refresh(NOW + HOUR / 2) == []  # not due before two thirds of its lifetime
    assert remote.refresh(NOW + HOUR * 2 / 3) == [BUYER]
    assert len(issuer.asked) == 2
    assert remote.problem() is None and remote.provider == "fake"


def test_while_the_provider_fails_the_valid_certificate_is_kept_and_why_is_said(issuer: FakeIssuer) -> None:
    remote = Remote(issuer, TD, HOUR)
    remote.current(BUYER, NOW)
    remote.refresh(NOW)
    held = remote.current(BUYER, NOW)
    issuer.refusal = "unreachable: connection refused"
    due = NOW + HOUR * 3 / 4
    assert remote.refresh(due) == []
    assert remote.current(BUYER, due) == held
    assert remote.problem() == "fake: unreachable: connection refused"
    assert remote.refresh(due + RETRY_AFTER / 2) == [] and len(issuer.asked) == 2  # not hammered
    issuer.refusal = None
    assert remote.refresh(due + RETRY_AFTER) == [BUYER]
    assert remote.problem() is None
    assert remote.current(BUYER, NOW + HOUR * 2) is None  # an expired one is never sent


def test_a_certificate_for_another_identity_is_refused(issuer: FakeIssuer) -> None:
    issuer.swap_to = STORE
    remote = Remote(issuer, TD, HOUR)
    remote.current(BUYER, NOW)
    assert remote.refresh(NOW) == []
    assert remote.current(BUYER, NOW) is None
    assert remote.problem() == (
        "fake: asked for a certificate for spiffe://mesh.test/ns/bookbuyer/sa/bookbuyer, "
        "got one for bookstore/bookstore"
    )


def test_the_builtin_ca_is_a_workload_ca_that_issues_when_asked() -> None:
    mesh_ca = MeshCA(CaState(TD, (ca.new_root(TD, NOW),)), HOUR)
    issued = mesh_ca.current(BUYER, NOW)
    assert ca.identity_of(issued.cert_pem, TD) == BUYER
    assert mesh_ca.refresh(NOW) == [] and mesh_ca.refresh(NOW + HOUR) == [BUYER]
    assert mesh_ca.provider == "builtin" and mesh_ca.problem() is None
