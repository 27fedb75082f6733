"""Workload certificates from a Vault-compatible PKI secrets engine (HashiCorp Vault, OpenBao).

One request per certificate: ``POST /v1/<mount>/issue/<role>`` with the SPIFFE ID as the only URI
SAN and no common name, authenticated by a token (``X-Vault-Token``). The engine makes the key;
its role decides what it signs (``allowed_uri_sans``). The trust bundle is the top of the chain
the engine returns. The token is read from its file for every request, so that a renewed token is
used without a restart, and it is never logged or shown.
"""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gitmesh.certs.provider import ProviderError

TIMEOUT_SECONDS = 10.0  # a request waits no longer; issuing runs off the serving path


@dataclass(frozen=True)
class VaultSettings:
    """Where the PKI engine is and how gitmesh authenticates to it."""

    address: str  # https://vault.example:8200
    role: str
    token_file: Path
    mount: str = "pki"
    ca_file: Path | None = None  # the CA that signed Vault's HTTPS certificate, if not a public one


class VaultPki:
    """An ``Issuer`` (``provider.Issuer``) over a Vault PKI engine's HTTP API."""

    name = "vault"

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        self._url = f"{settings.address.rstrip('/')}/v1/{settings.mount.strip('/')}/issue/{settings.role}"
        self._context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file else None

    def issue(self, spiffe_id: str, lifetime: datetime.timedelta) -> tuple[str, str, tuple[str, ...]]:
        body = {
            "uri_sans": spiffe_id,
            "exclude_cn_from_sans": True,
            "ttl": f"{int(lifetime.total_seconds())}s",
            "private_key_format": "pkcs8",
        }
        data = self._post(body)
        try:
            cert, key = str(data["certificate"]), str(data["private_key"])
            chain = [str(c) for c in data.get("ca_chain") or [data["issuing_ca"]]]
            return cert + "".join(_intermediates(chain)), key, _roots(chain)
        except (KeyError, TypeError) as e:
            raise self._error(f"its answer lacks {e}") from None
        except ValueError as e:  # a CA certificate that does not parse
            raise self._error(f"its CA chain cannot be read: {e}") from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            token = self.settings.token_file.read_text().strip()
        except OSError as e:
            raise self._error(f"cannot read the token file {self.settings.token_file}: {e.strerror}") from e
        request = urllib.request.Request(
            self._url,
            data=json.dumps(body).encode(),
            headers={"X-Vault-Token": token, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=self._context) as reply:
                answer: Any = json.load(reply)
        except urllib.error.HTTPError as e:
            raise self._error(f"HTTP {e.code}: {_vault_errors(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise self._error(f"unreachable: {reason}") from None
        except ValueError as e:
            raise self._error(f"its answer is not JSON: {e}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
            raise self._error("its answer has no data")
        data: dict[str, Any] = answer["data"]
        return data

    def _error(self, reason: str) -> ProviderError:
        where = f"{self.settings.address} {self.settings.mount}/issue/{self.settings.role}"
        return ProviderError(f"{self.name} ({where}): {reason}")


def _vault_errors(error: urllib.error.HTTPError) -> str:
    """Vault's own words (``{"errors": [...]}``), else the HTTP reason."""
    try:
        errors = json.loads(error.read() or b"{}").get("errors")
    except (ValueError, AttributeError, OSError):
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(" ".join(str(e).split()) for e in errors)  # Vault's are multi-line
    return str(error.reason)


def _self_signed(pem: str) -> bool:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.issuer == cert.subject


def _intermediates(chain: list[str]) -> list[str]:
    """What travels with the leaf: every CA certificate but a self-signed root."""
    return [c.strip() + "\n" for c in chain if not _self_signed(c)]


def _roots(chain: list[str]) -> tuple[str, ...]:
    """The bundle: the chain's self-signed root, or its top when the engine's chain stops short."""
    roots = [c for c in chain if _self_signed(c)] or chain[-1:]
    return tuple(
        x509.load_pem_x509_certificate(c.encode()).public_bytes(serialization.Encoding.PEM).decode()
        for c in roots
    )


__all__ = ["TIMEOUT_SECONDS", "VaultPki", "VaultSettings"]
