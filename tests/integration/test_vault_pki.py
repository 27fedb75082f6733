"""Workload certificates from a real HashiCorp Vault's PKI engine: real Envoy sidecars present
certificates Vault signed, with their SPIFFE IDs, and call each other over mTLS; when Vault refuses
(a token without permission, a role that refuses the SAN) or cannot be reached, gitmesh says which
provider and why, and the sidecars keep the valid certificates they hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.settings import embedded
from tests import vault as vault_mod
from tests.bookstore import Bookstore
from tests.integration.test_mtls_envoy import active_secrets, bundle_of, certs, serial_hex

pytestmark = pytest.mark.integration

LIFETIME = "30s"  # short, so that renewals (at two thirds) happen within the test


class VaultBookstore(Bookstore):
    """The bookstore demo with ``gitmesh run --config`` choosing Vault for workload certificates."""

    def __init__(self, workdir: Path, vault: vault_mod.Vault, token: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "gitmesh.yaml"
        self.token_file = workdir / "vault-token"
        self.token_file.write_text(token)
        self.config.write_text(
            yaml.safe_dump(
                {
                    "certificates": {
                        "provider": "vault",
                        "vault": {
                            "address": vault.address,
                            "role": vault_mod.ROLE,
                            "token_file": "vault-token",
                        },
                    }
                }
            )
        )
        super().__init__(workdir, cert_lifetime=LIFETIME)

    def run_options(self) -> list[str]:
        return [*super().run_options(), "--config", str(self.config)]

    def provider_report(self) -> dict[str, Any]:
        report = embedded(self.store).state.xds.latest() or {}
        return dict(report.get("certificate_provider") or {})


@pytest.fixture
def vault(vault_binary: Path, tmp_path: Path) -> Iterator[vault_mod.Vault]:
    with vault_mod.running(vault_binary, tmp_path) as v:
        yield v


@pytest.fixture
def demo(tmp_path: Path, vault: vault_mod.Vault) -> Iterator[VaultBookstore]:
    bookstore = VaultBookstore(tmp_path / "demo", vault, vault.root_token)
    try:
        bookstore.start()
        yield bookstore
    except (AssertionError, TimeoutError):
        print((tmp_path / "demo" / "gitmesh-run.log").read_text()[-5000:])
        raise
    finally:
        bookstore.close()


def issuer_of(demo: VaultBookstore, sidecar: str) -> list[str]:
    """The issuers of the leaf certificates the sidecar holds, as RFC 4514 strings."""
    dump = json.loads(demo.sidecars[sidecar].admin("/config_dump?resource=dynamic_active_secrets"))
    chains = [
        c["secret"]["tls_certificate"]["certificate_chain"]["inline_string"]
        for c in dump["configs"]
        if "tls_certificate" in c["secret"]
    ]
    return [x509.load_pem_x509_certificates(c.encode())[0].issuer.rfc4514_string() for c in chains]


def test_sidecars_present_vault_certificates_and_keep_them_while_vault_refuses(
    demo: VaultBookstore, vault: vault_mod.Vault
) -> None:
    held = certs(demo, "bookbuyer")
    assert held["spiffe"] == ["spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"]
    bundle = x509.load_pem_x509_certificates(bundle_of(active_secrets(demo, "bookbuyer")).encode())
    assert [format(c.serial_number, "040x") for c in bundle] == [serial_hex(vault.root_pem)]  # Vault's alone
    assert issuer_of(demo, "bookstore-v1") == ["CN=vault test root"]
    assert certs(demo, "bookstore-v1")["spiffe"] == ["spiffe://cluster.local/ns/bookstore/sa/bookstore"]
    assert demo.buy()[0] == 200  # mTLS between Vault-certified sidecars, RBAC on their SPIFFE IDs
    assert demo.provider_report() == {"name": "vault", "problem": None}

    # Renewals at two thirds of the lifetime come from Vault too.
    first = held["serials"]
    eventually(lambda: certs(demo, "bookbuyer")["serials"], lambda s: s != first, "a renewal from Vault")

    # A token without permission: a clear reason, and the sidecars keep what they hold.
    demo.token_file.write_text(vault.token(["default"]))
    problem = eventually(
        lambda: demo.provider_report().get("problem"), bool, "the provider's problem in the report"
    )
    assert problem.startswith(f"vault ({vault.address} pki/issue/{vault_mod.ROLE}): HTTP 403:")
    assert "permission denied" in problem
    assert demo.buy()[0] == 200
    status = CliRunner().invoke(cli, ["status", "--store", str(demo.store)])
    assert f"certificates not renewed: {problem}" in " ".join(status.stdout.split())

    # A role that refuses the SAN (it signs another namespace only).
    demo.token_file.write_text(vault.root_token)
    eventually(lambda: demo.provider_report().get("problem"), lambda p: p is None, "Vault issuing again")
    vault.role(vault_mod.ROLE, "spiffe://cluster.local/ns/elsewhere/*")
    problem = eventually(lambda: demo.provider_report().get("problem"), bool, "the role's refusal")
    assert problem.endswith(
        "HTTP 400: URI Subject Alternative Names were provided via the API which are not valid for this role"
    )
    assert demo.buy()[0] == 200

    # Vault gone (once the role signs again, so that the sidecars hold fresh certificates).
    vault.role(vault_mod.ROLE, "spiffe://cluster.local/*")
    eventually(lambda: demo.provider_report().get("problem"), lambda p: p is None, "Vault issuing again")
    vault.stop()
    problem = eventually(
        lambda: demo.provider_report().get("problem"), lambda p: p and "unreachable" in p, "Vault unreachable"
    )
    assert problem.startswith(f"vault ({vault.address} pki/issue/{vault_mod.ROLE}): unreachable:")
    assert demo.buy()[0] == 200  # the certificates held are valid for a third of their lifetime yet
