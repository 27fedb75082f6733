"""A real HashiCorp Vault for the tests: built by ``testenv/build.sh vault``, run in dev mode (in
memory, unsealed, a root token the test chooses) on a free loopback port, with the PKI secrets
engine mounted at ``pki`` and a root CA generated in it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gitmesh.demo import free_port
from tests.kube import BUILD_SCRIPT

TRUST_DOMAIN = "cluster.local"
ROLE = "sidecars"  # signs any SPIFFE ID of the trust domain, nothing else


def build() -> Path:
    """The ``vault`` binary (built on first use, then cached)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "vault"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"testenv/build.sh vault failed:\n{proc.stderr[-5000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "vault"
    assert os.access(binary, os.X_OK), binary
    return binary


class Vault:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self.root_token = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.workdir / "vault.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self.root_token}",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    "-dev-no-store-token",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.workdir)},
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.call("GET", "sys/health").get("initialized"):
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"vault did not start:\n{(self.workdir / 'vault.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        self.call("POST", "sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
        root = self.call(
            "POST",
            "pki/root/generate/internal",
            {"common_name": "vault test root", "ttl": "87600h", "key_type": "ec", "key_bits": 256},
        )
        self.root_pem: str = root["data"]["certificate"]
        self.role(ROLE, f"spiffe://{TRUST_DOMAIN}/*")

    def role(self, name: str, allowed_uri_sans: str) -> None:
        """A role issuing client-and-server EC certificates with URI SANs matching ``allowed_uri_sans``."""
        self.call(
            "POST",
            f"pki/roles/{name}",
            {
                "allowed_uri_sans": allowed_uri_sans,
                "require_cn": False,
                "key_type": "ec",
                "key_bits": 256,
                "server_flag": True,
                "client_flag": True,
                "max_ttl": "720h",
            },
        )

    def kubernetes_auth(self, server: str, ca_pem: str, reviewer_jwt: str) -> None:
        """Vault's Kubernetes auth method at ``auth/kubernetes``, checking tokens with TokenReviews
        at ``server`` (as ``reviewer_jwt``, who may create them)."""
        self.call("POST", "sys/auth/kubernetes", {"type": "kubernetes"})
        self.call(
            "POST",
            "auth/kubernetes/config",
            {
                "kubernetes_host": server,
                "kubernetes_ca_cert": ca_pem,
                "token_reviewer_jwt": reviewer_jwt,
                "disable_local_ca_jwt": True,  # Vault runs outside any pod
            },
        )

    def login_role(self, name: str, service_account: str, namespace: str, ttl: str) -> None:
        """A Kubernetes auth role for one ServiceAccount, whose tokens may issue from ``ROLE`` for ``ttl``."""
        self.call(
            "PUT",
            "sys/policies/acl/issue-sidecars",
            {"policy": f'path "pki/issue/{ROLE}" {{ capabilities = ["create", "update"] }}'},
        )
        self.call(
            "POST",
            f"auth/kubernetes/role/{name}",
            {
                "bound_service_account_names": service_account,
                "bound_service_account_namespaces": namespace,
                "token_policies": "issue-sidecars",
                "token_ttl": ttl,
                "token_max_ttl": ttl,
            },
        )

    def token(self, policies: list[str]) -> str:
        """A new token with ``policies`` (``default`` alone may not issue)."""
        created = self.call("POST", "auth/token/create", {"policies": policies})
        return str(created["auth"]["client_token"])

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.address}/v1/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"X-Vault-Token": self.root_token},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                text = reply.read()
        except urllib.error.HTTPError as e:  # with Vault's own words
            raise RuntimeError(f"vault {method} {path}: HTTP {e.code}: {e.read().decode()}") from None
        return json.loads(text) if text else {}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(binary: Path, workdir: Path) -> Iterator[Vault]:
    vault = Vault(binary, workdir)
    try:
        vault.start()
        yield vault
    finally:
        vault.stop()


__all__ = ["ROLE", "TRUST_DOMAIN", "Vault", "build", "running"]
