"""The controller's configuration file: what it accepts, and every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitmesh.certs.certmanager import CertManagerSettings
from gitmesh.certs.choice import Choice
from gitmesh.certs.vault import KubernetesAuth, VaultSettings
from gitmesh.controller.config import (
    CertificatesFile,
    RolloutSettings,
    load_config,
    read_http_token,
    read_webhook_secret,
)
from gitmesh.errors import ConfigError
from gitmesh.sync.source import BasicAuth, Ref, RefKind, Source, SshAuth
from gitmesh.sync.verify import Verification


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gitmesh.yaml"
    path.write_text(text)
    return path


def test_a_full_file(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
http_address: 0.0.0.0:9090
webhook_secret_file: secrets/hook
allow_short_webhook_secret: true
http_token_file: secrets/token
sources:
  - name: mesh
    url: https://git.example.com/mesh.git
    ref: {semver: ">=1.2,<2"}
    path: clusters/prod
    interval: 30s
    drift_interval: 1h
    allow_empty: true
    ca_file: ca.pem
    auth: {username: deploy, password_file: /run/secrets/git}
  - name: local
    url: repos/mesh
  - name: signed
    url: git@git.example.com:acme/mesh.git
    ssh: {key_file: keys/deploy, known_hosts_file: keys/known_hosts}
    verify: {allowed_signers_file: keys/allowed_signers}
""",
        )
    )
    assert config.http_address == "0.0.0.0:9090"
    assert config.webhook_secret_file == tmp_path / "secrets/hook"
    assert config.allow_short_webhook_secret
    assert config.http_token_file == tmp_path / "secrets/token"
    assert config.sources == (
        Source(
            "mesh",
            "https://git.example.com/mesh.git",
            Ref(RefKind.SEMVER, ">=1.2,<2"),
            "clusters/prod",
            30.0,
            3600.0,
            True,
            BasicAuth("deploy", Path("/run/secrets/git")),
            tmp_path / "ca.pem",
        ),
        Source("local", str(tmp_path / "repos/mesh")),  # relative to the file; defaults: 1m, 10m
        Source(
            "signed",
            "git@git.example.com:acme/mesh.git",
            ssh=SshAuth(tmp_path / "keys/deploy", tmp_path / "keys/known_hosts"),
            verify=Verification(None, tmp_path / "keys/allowed_signers"),
        ),
    )
    assert (config.sources[1].interval, config.sources[1].drift_interval) == (60.0, 600.0)


def test_a_default_namespace_per_source(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "sources:\n  - {name: a, url: x, namespace: team-a}\n  - {name: b, url: y}\n")
    )
    assert [s.namespace for s in config.sources] == ["team-a", ""]


def test_rollout_settings(tmp_path: Path) -> None:
    text = (
        "rollouts: {prometheus: 'http://prom:9090', webhook: 'https://chat/hook', push_reverts: repos/mesh}\n"
        "sources:\n  - {name: a, url: x}\n"
    )
    assert load_config(write(tmp_path, text)).rollouts == RolloutSettings(
        "http://prom:9090", "https://chat/hook", str(tmp_path / "repos/mesh")
    )
    assert load_config(write(tmp_path, "sources:\n  - {name: a, url: x}\n")).rollouts == RolloutSettings()


def test_workload_certificates_from_vault_or_the_builtin_ca(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
certificates:
  provider: vault
  vault: {address: "https://vault:8200", mount: mesh-pki, role: sidecars, token_file: vault-token}
""",
        )
    )
    assert config.sources == ()  # a controller that only serves the mesh
    token = tmp_path / "vault-token"
    vault = VaultSettings("https://vault:8200", "sidecars", token, "mesh-pki")
    assert config.certificates == Choice("vault", vault)
    kubernetes = (
        "certificates: {provider: vault, vault: {address: 'http://v', role: r, kubernetes: {role: g}}}"
    )
    assert load_config(write(tmp_path, kubernetes)).certificates == Choice(
        "vault", VaultSettings("http://v", "r", kubernetes=KubernetesAuth("g"))
    )
    manager = "certificates: {provider: cert-manager, cert_manager: {issuer: mesh-ca, kind: ClusterIssuer}}"
    assert load_config(write(tmp_path, manager)).certificates == Choice(
        "cert-manager", cert_manager=CertManagerSettings("mesh-ca", "ClusterIssuer")
    )
    builtin = "certificates: {provider: builtin}\nsources: [{name: a, url: x}]\n"
    assert load_config(write(tmp_path, builtin)).certificates == Choice()


def test_the_certificate_provider_is_read_again_when_the_file_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "certificates: {provider: builtin}\n")
    chosen = CertificatesFile(path, load_config(path).certificates)
    assert chosen() == Choice()
    vault = "certificates: {provider: vault, vault: {address: 'http://v:8200', role: r, token_file: t}}\n"
    path.write_text(vault)
    assert chosen() == Choice("vault", VaultSettings("http://v:8200", "r", tmp_path / "t"))
    path.write_text("certificates: {provider: vault}\n")  # broken: the last choice is kept, and why said
    assert chosen().provider == "vault"
    assert "keeping the certificate provider vault (http://v:8200 pki/issue/r)" in caplog.text
    assert "'vault' is a required property" in caplog.text
    path.write_text("certificates: {provider: builtin}  \n")
    assert chosen() == Choice()


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("sources: []\n", ["sources: [] should be non-empty"]),
        ("certificates: {provider: vault}\n", ["certificates: 'vault' is a required property"]),
        (
            "certificates: {provider: acme, vault: {address: vault:8200, role: r}}\n",
            [
                "certificates.provider: 'acme' is not one of ['builtin', 'vault', 'cert-manager']",
                "certificates.vault.address: 'vault:8200' does not match '^https?://'",
            ],
        ),
        ("certificates: {provider: cert-manager}\n", ["certificates: 'cert_manager' is a required property"]),
        (
            "certificates: {provider: vault, vault: {address: 'http://v', role: r}}\n",
            ["certificates.vault: give token_file or kubernetes (Vault's Kubernetes auth), one of them"],
        ),
        (
            "certificates: {provider: vault, vault: {address: 'http://v', role: r, token_file: t, "
            "kubernetes: {role: gitmesh}}}\n",
            ["certificates.vault: give token_file or kubernetes (Vault's Kubernetes auth), one of them"],
        ),
        (
            "certificates: {provider: vault, vault: {address: 'http://v', role: r, kubernetes: {mount: k}}}",
            ["certificates.vault.kubernetes: 'role' is a required property"],
        ),
        (
            "sources:\n  - {name: a, url: x, ref: {branch: main, tag: v1}, colour: red}\n",
            [
                "sources.0: Additional properties are not allowed ('colour' was unexpected)",
                "sources.0.ref: {'branch': 'main', 'tag': 'v1'} has too many properties",
            ],
        ),
        ("sources:\n  - {name: a, url: x, ref: {semver: 'not a range'}}\n", ["sources.0: semver range"]),
        ("sources:\n  - {name: a, url: x, interval: soon}\n", ["sources.0: 'soon' is not a duration"]),
        (
            "sources:\n  - {name: a, url: x}\n  - {name: a, url: y}\n",
            ["the name(s) a are used more than once"],
        ),
        ("sources: [\n", ["is not valid YAML"]),
        ("sources:\n  - {name: a, url: x, verify: {}}\n", ["sources.0.verify: {} should be non-empty"]),
        (
            "sources:\n  - {name: a, url: x, namespace: Team_A}\n",
            ["sources.0.namespace: 'Team_A' does not match"],
        ),
        (
            "rollouts: {prometheus: 'prom:9090'}\nsources:\n  - {name: a, url: x}\n",
            ["rollouts.prometheus: 'prom:9090' does not match"],
        ),
    ],
)
def test_problems_are_listed_with_where_they_are(tmp_path: Path, text: str, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    for problem in problems:
        assert problem in str(e.value)


@pytest.mark.parametrize(
    ("content", "allow_short", "problem"),
    [
        (b"", False, "is empty"),
        (b" \n\t\n", True, "is empty"),
        (b"fifteen-bytes-x\n", False, "is 15 bytes, fewer than 16"),
    ],
)
def test_empty_or_short_secrets_are_refused_without_showing_them(
    tmp_path: Path, content: bytes, allow_short: bool, problem: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"the webhook secret in {path} {problem}") as e:
        read_webhook_secret(path, allow_short)
    assert "openssl rand -hex 32" in str(e.value)
    if content.strip():
        assert content.strip().decode() not in str(e.value)
    with pytest.raises(ConfigError, match=f"the HTTP token in {path} {problem}"):
        read_http_token(path)


def test_a_short_webhook_secret_only_when_allowed_and_a_token_never(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"  short\n")
    assert read_webhook_secret(path, allow_short=True) == b"short"
    with pytest.raises(ConfigError, match="--allow-short-webhook-secret"):
        read_webhook_secret(path, allow_short=False)
    with pytest.raises(ConfigError) as e:
        read_http_token(path)
    assert "allow" not in str(e.value)
    path.write_bytes(b"0123456789abcdef\n")
    assert read_http_token(path) == read_webhook_secret(path, allow_short=False) == b"0123456789abcdef"


def test_an_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the HTTP token in .*: No such file or directory"):
        read_http_token(tmp_path / "missing")
