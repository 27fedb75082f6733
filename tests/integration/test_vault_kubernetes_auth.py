"""Vault's Kubernetes auth method, for real: gitmesh logs in to a real Vault with a ServiceAccount
token of the test kube-apiserver (Vault asks that apiserver for a TokenReview), holds the Vault token
until shortly before its lease ends, logs in again when Vault refuses it, and says clearly when the
ServiceAccount may not log in. Then real Envoy sidecars present certificates issued that way."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from gitmesh.certs.provider import ProviderError
from gitmesh.certs.vault import KubernetesAuth, VaultPki, VaultSettings
from gitmesh.demo import eventually
from tests import vault as vault_mod
from tests.integration.test_mtls_envoy import certs
from tests.integration.test_vault_pki import VaultBookstore, issuer_of
from tests.kube import KubeEnv

pytestmark = pytest.mark.integration

NAMESPACE = "vault-auth"
SPIFFE = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"
LOGIN = "logged in to Vault as role gitmesh (kubernetes auth)"


class Clock:
    """gitmesh's idea of the time, moved by the test (Vault keeps its own)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault(vault_binary: Path, tmp_path: Path, kube_env: KubeEnv) -> Iterator[vault_mod.Vault]:
    cluster = kube_env.cluster
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)  # the apiserver is shared by the session
    for account in ("gitmesh", "intruder", "vault"):
        cluster.kubectl("create", "serviceaccount", account, "-n", NAMESPACE, check=False)
    # Vault's own ServiceAccount may create TokenReviews.
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        "vault-token-reviews",
        "--clusterrole=system:auth-delegator",
        f"--serviceaccount={NAMESPACE}:vault",
        check=False,
    )
    reviewer = service_account_token(kube_env, "vault", tmp_path / "vault-sa-token").read_text()
    with vault_mod.running(vault_binary, tmp_path) as v:
        v.kubernetes_auth(cluster.server, cluster.ca_cert.read_text(), reviewer)
        yield v


def service_account_token(kube_env: KubeEnv, account: str, path: Path) -> Path:
    """A token of ``account`` from the TokenRequest API, in a file, as the kubelet would mount it."""
    made = kube_env.cluster.kubectl("create", "token", account, "-n", NAMESPACE, "--duration=1h")
    path.write_text(made.stdout.strip())
    return path


def test_logging_in_with_a_service_account_token_and_again_when_the_vault_token_ends(
    vault: vault_mod.Vault, kube_env: KubeEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gitmesh.certs.vault")
    vault.login_role("gitmesh", "gitmesh", NAMESPACE, "4s")
    jwt = service_account_token(kube_env, "gitmesh", tmp_path / "token")
    clock = Clock()
    pki = VaultPki(
        VaultSettings(vault.address, vault_mod.ROLE, kubernetes=KubernetesAuth("gitmesh", token_file=jwt)),
        clock,
    )
    cert, _, roots = pki.issue(SPIFFE, datetime.timedelta(hours=1))
    leaf = x509.load_pem_x509_certificates(cert.encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == [SPIFFE]
    assert [x509.load_pem_x509_certificate(r.encode()) for r in roots] == [
        x509.load_pem_x509_certificate(vault.root_pem.encode())
    ]
    assert caplog.text.count(LOGIN) == 1 and f"{LOGIN} for 4.0s" in caplog.text

    clock.now += 3  # within 80 % of the lease: the token held is used
    pki.issue(SPIFFE, datetime.timedelta(hours=1))
    assert caplog.text.count(LOGIN) == 1
    clock.now += 1  # past it: logged in again before Vault would refuse
    pki.issue(SPIFFE, datetime.timedelta(hours=1))
    assert caplog.text.count(LOGIN) == 2

    # Vault's lease ends while gitmesh's clock stands still: Vault refuses the token (403), gitmesh
    # logs in again at once and is given the certificate.
    def logged_in_again() -> bool:
        logins = caplog.text.count(LOGIN)
        pki.issue(SPIFFE, datetime.timedelta(hours=1))
        return caplog.text.count(LOGIN) > logins

    eventually(logged_in_again, bool, "Vault ending the token's lease", timeout=30)
    assert jwt.read_text() not in caplog.text  # the ServiceAccount token is never logged


def test_a_service_account_the_role_does_not_name_is_refused_clearly(
    vault: vault_mod.Vault, kube_env: KubeEnv, tmp_path: Path
) -> None:
    vault.login_role("gitmesh", "gitmesh", NAMESPACE, "1m")
    jwt = service_account_token(kube_env, "intruder", tmp_path / "token")
    pki = VaultPki(
        VaultSettings(vault.address, vault_mod.ROLE, kubernetes=KubernetesAuth("gitmesh", token_file=jwt))
    )
    with pytest.raises(ProviderError) as refused:
        pki.issue(SPIFFE, datetime.timedelta(hours=1))
    assert str(refused.value).startswith(
        f"vault ({vault.address} pki/issue/{vault_mod.ROLE}): cannot log in as role gitmesh "
        "(kubernetes auth): HTTP 403: service account name not authorized"
    )
    jwt.write_text("not-a-token")  # not one the apiserver made: its TokenReview says so
    with pytest.raises(ProviderError, match=r"cannot log in as role gitmesh .*HTTP 403"):
        pki.issue(SPIFFE, datetime.timedelta(hours=1))


def test_sidecars_present_certificates_vault_issued_to_a_kubernetes_login(
    vault: vault_mod.Vault, kube_env: KubeEnv, tmp_path: Path
) -> None:
    vault.login_role("gitmesh", "gitmesh", NAMESPACE, "10s")  # shorter than a renewal: logins again
    demo = VaultBookstore(tmp_path / "demo", vault, "")
    jwt = service_account_token(kube_env, "gitmesh", tmp_path / "demo" / "sa-token")
    auth = {"kubernetes": {"role": "gitmesh", "token_file": jwt.name}}
    demo.config.write_text(
        yaml.safe_dump(
            {
                "certificates": {
                    "provider": "vault",
                    "vault": {"address": vault.address, "role": vault_mod.ROLE, **auth},
                }
            }
        )
    )
    demo.token_file.unlink()  # no static token anywhere
    log = tmp_path / "demo" / "gitmesh-run.log"
    try:
        demo.start()
        assert issuer_of(demo, "bookbuyer") == ["CN=vault test root"]
        assert certs(demo, "bookstore-v1")["spiffe"] == ["spiffe://cluster.local/ns/bookstore/sa/bookstore"]
        assert demo.buy()[0] == 200
        first = certs(demo, "bookbuyer")["serials"]
        eventually(lambda: certs(demo, "bookbuyer")["serials"], lambda s: s != first, "a renewal", timeout=60)
        assert log.read_text().count(LOGIN) >= 2  # the first Vault token had ended by the renewal
        assert demo.provider_report() == {"name": "vault", "problem": None}
        assert demo.buy()[0] == 200
    except (AssertionError, TimeoutError):
        print(log.read_text()[-5000:])
        raise
    finally:
        demo.close()
