"""Workload certificates from a real HashiCorp Vault's PKI engine: real Envoy sidecars present
certificates Vault signed, with their SPIFFE IDs, and call each other over mTLS; when Vault refuses
(a token without permission, a role that refuses the SAN) or cannot be reached, gitmesh says which
provider and why, and the sidecars keep the valid certificates they hold."""

from __future__ import annotations

import collections
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from gitmesh import demo as demo_mod
from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.settings import embedded
from tests import vault as vault_mod
from tests.bookstore import Bookstore
from tests.integration.test_mtls_envoy import Load, active_secrets, bundle_of, certs, serial_hex

pytestmark = pytest.mark.integration

LIFETIME = "30s"  # short, so that renewals (at two thirds) happen within the test


class VaultBookstore(Bookstore):
    """The bookstore demo with ``gitmesh run --config`` choosing Vault for workload certificates."""

    def __init__(
        self,
        workdir: Path,
        vault: vault_mod.Vault,
        token: str,
        provider: str = "vault",
        cert_lifetime: str = LIFETIME,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.vault = vault
        self.config = workdir / "gitmesh.yaml"
        self.token_file = workdir / "vault-token"
        self.token_file.write_text(token)
        self.choose(provider)
        super().__init__(workdir, cert_lifetime=cert_lifetime)

    def choose(self, provider: str) -> None:
        """Write the configuration with ``provider`` (``gitmesh run`` reads it again when it changes)."""
        vault = {"address": self.vault.address, "role": vault_mod.ROLE, "token_file": "vault-token"}
        section = {"provider": provider, **({"vault": vault} if provider == "vault" else {})}
        self.config.write_text(yaml.safe_dump({"certificates": section}))

    def commit(self, name: str, text: str) -> None:
        """Write ``name`` into the mesh's repository (empty text: remove it), commit and apply."""
        file = self.repo / demo_mod.MESH_PATH / name
        if text:
            file.write_text(text)
        else:
            file.unlink()
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(self.repo)]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", f"{name} changed"], check=True)
        self.apply()

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


def bundle_serials(demo: VaultBookstore, sidecar: str) -> list[str]:
    bundle = bundle_of(active_secrets(demo, sidecar)).encode()
    return sorted(format(c.serial_number, "040x") for c in x509.load_pem_x509_certificates(bundle))


def test_switching_provider_under_traffic_is_a_root_rotation_that_loses_no_request(
    tmp_path: Path, vault: vault_mod.Vault
) -> None:
    demo = VaultBookstore(tmp_path / "demo", vault, vault.root_token, provider="builtin")
    try:
        demo.start()
        keeper = demo.ca_keeper().load()
        assert keeper is not None
        builtin_root, vault_root = serial_hex(keeper.signing.root_pem), serial_hex(vault.root_pem)
        sidecars = sorted(demo.sidecars)
        assert issuer_of(demo, "bookbuyer") != ["CN=vault test root"]
        with Load(demo) as load:
            eventually(lambda: len(load.results), lambda n: n > 20, "traffic flowing")
            took = {}
            for provider, root, issuer in (
                ("vault", vault_root, "CN=vault test root"),
                ("builtin", builtin_root, issuer_of(demo, "bookbuyer")[0]),
            ):
                started, sent = time.monotonic(), len(load.results)
                demo.choose(provider)
                # Both roots are trusted by every sidecar before any holds a certificate of the new one.
                for name in sidecars:
                    eventually(
                        lambda name=name: bundle_serials(demo, name),
                        lambda b: b == sorted({builtin_root, vault_root}),
                        f"{name} trusting both roots",
                        timeout=60,
                    )
                for name in sidecars:
                    eventually(
                        lambda name=name: (issuer_of(demo, name), bundle_serials(demo, name)),
                        lambda held, root=root, issuer=issuer: held == ([issuer], [root]),
                        f"{name} holding a {provider} certificate and trusting its root alone",
                        timeout=60,
                    )
                took[provider] = time.monotonic() - started
                eventually(lambda: len(load.results), lambda n, sent=sent: n > sent + 20, "traffic after")
                eventually(
                    demo.provider_report, lambda r, p=provider: r == {"name": p, "problem": None}, "report"
                )
        counts = collections.Counter(load.results)
        print(
            f"provider switches under traffic: {len(load.results)} requests, {counts}; "
            f"builtin -> vault {took['vault']:.1f}s, vault -> builtin {took['builtin']:.1f}s"
        )
        assert counts[200] == len(load.results), counts
        assert certs(demo, "bookbuyer")["spiffe"] == ["spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"]
    except (AssertionError, TimeoutError):
        print((tmp_path / "demo" / "gitmesh-run.log").read_text()[-5000:])
        raise
    finally:
        demo.close()


def leaf_lifetime(demo: VaultBookstore, sidecar: str) -> float:
    """Seconds between the not-before and not-after of the leaf the sidecar holds."""
    dump = json.loads(demo.sidecars[sidecar].admin("/config_dump?resource=dynamic_active_secrets"))
    (chain,) = [
        c["secret"]["tls_certificate"]["certificate_chain"]["inline_string"]
        for c in dump["configs"]
        if "tls_certificate" in c["secret"]
    ]
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    return (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()


def mesh_root_certificate(provider: str) -> str:
    return f"""apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshRootCertificate
metadata: {{name: osm-mesh-root-certificate, namespace: bookstore}}
spec:
  trustDomain: cluster.local
  provider:
    {provider}
"""


def test_the_mesh_config_and_root_certificate_fill_in_what_the_configuration_leaves_out(
    tmp_path: Path, vault: vault_mod.Vault
) -> None:
    demo = VaultBookstore(tmp_path / "demo", vault, vault.root_token, cert_lifetime="")  # no --cert-lifetime
    address = urllib.parse.urlsplit(vault.address)
    vault_mrc = mesh_root_certificate(
        f"vault: {{host: {address.hostname}, port: {address.port}, protocol: http, role: {vault_mod.ROLE}, "
        "token: {secretKeyRef: {name: vault-token, namespace: bookstore, key: token}}}"
    )
    tresor_mrc = mesh_root_certificate(
        "tresor: {ca: {secretRef: {name: osm-ca-bundle, namespace: bookstore}}}"
    )
    try:
        demo.start()
        # Vault's certificates, 24 h (Vault backdates them 30 s), until the MeshConfig says 40 s.
        assert 86400 <= leaf_lifetime(demo, "bookbuyer") <= 86400 + 60
        demo.commit("mesh-root-certificate.yaml", vault_mrc)  # it agrees with the configuration
        demo.commit(
            "mesh-config.yaml",
            "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n"
            "metadata: {name: osm-mesh-config, namespace: bookstore}\n"
            "spec: {certificate: {serviceCertValidityDuration: 40s, certKeyBitSize: 2048}}\n",
        )
        for name in ("bookbuyer", "bookstore-v1"):
            eventually(lambda name=name: leaf_lifetime(demo, name), lambda s: s <= 40 + 60, f"{name} 40 s")
        assert issuer_of(demo, "bookbuyer") == ["CN=vault test root"]
        assert demo.buy()[0] == 200
        assert demo.provider_report() == {"name": "vault", "problem": None}

        # A MeshRootCertificate choosing another provider than the configuration is refused, named.
        demo.commit("mesh-root-certificate.yaml", tresor_mrc)
        refused = eventually(lambda: demo.provider_report().get("refused"), bool, "the refusal in the report")
        assert refused == (
            "MeshConfig bookstore/osm-mesh-config and MeshRootCertificate "
            "bookstore/osm-mesh-root-certificate not taken: it chooses builtin, the controller "
            f"configuration vault ({vault.address} pki/issue/{vault_mod.ROLE})"
        )
        status = CliRunner().invoke(cli, ["status", "--store", str(demo.store)])
        assert f"certificate settings refused: {refused}" in " ".join(status.stdout.split())
        assert issuer_of(demo, "bookbuyer") == ["CN=vault test root"] and demo.buy()[0] == 200
        demo.commit("mesh-root-certificate.yaml", "")
        eventually(lambda: demo.provider_report().get("refused"), lambda r: r is None, "the refusal gone")
    except (AssertionError, TimeoutError):
        print((tmp_path / "demo" / "gitmesh-run.log").read_text()[-5000:])
        raise
    finally:
        demo.close()
