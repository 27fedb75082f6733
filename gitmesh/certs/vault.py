"""Workload certificates from a Vault-compatible PKI secrets engine (HashiCorp Vault, OpenBao).

One request per certificate: ``POST /v1/<mount>/issue/<role>`` with the SPIFFE ID as the only URI
SAN and no common name, authenticated by a token (``X-Vault-Token``). The engine makes the key;
its role decides what it signs (``allowed_uri_sans``). The trust bundle is the top of the chain
the engine returns.

The token is either read from its file for every request, so that a renewed token is used without
a restart, or got by logging in with Vault's Kubernetes auth method (``POST /v1/auth/<mount>/login``
with gitmesh's ServiceAccount token, which Vault checks with a TokenReview): held until shortly
before its lease ends, then got again, and got again at once when Vault refuses it. No token is
ever logged or shown.
"""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitmesh.certs import ca
from gitmesh.certs.provider import ProviderError

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0  # a request waits no longer; issuing runs off the serving path
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# A login's token is got again once this share of its lease has passed (a request never races its end).
RELOGIN_AT = 0.8


@dataclass(frozen=True)
class KubernetesAuth:
    """Vault's Kubernetes auth method: log in as ``role`` with the ServiceAccount token in ``token_file``."""

    role: str
    mount: str = "kubernetes"
    token_file: Path = SERVICE_ACCOUNT_TOKEN


@dataclass(frozen=True)
class VaultSettings:
    """Where the PKI engine is and how gitmesh authenticates to it: a token in ``token_file``, or
    ``kubernetes`` auth."""

    address: str  # https://vault.example:8200
    role: str
    token_file: Path | None = None
    mount: str = "pki"
    ca_file: Path | None = None  # the CA that signed Vault's HTTPS certificate, if not a public one
    kubernetes: KubernetesAuth | None = None

    def __post_init__(self) -> None:
        if (self.token_file is None) == (self.kubernetes is None):
            raise ValueError("Vault takes a token_file or kubernetes auth, one of them")


class VaultPki:
    """An ``Issuer`` (``provider.Issuer``) over a Vault PKI engine's HTTP API."""

    name = "vault"

    def __init__(self, settings: VaultSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._base = settings.address.rstrip("/")
        self._url = f"{self._base}/v1/{settings.mount.strip('/')}/issue/{settings.role}"
        self._context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file else None
        self._clock = clock
        self._lock = threading.Lock()
        self._login: tuple[str, float] | None = None  # the token got by logging in, and when to get another

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
            return cert + "".join(ca.without_roots(chain)), key, ca.top_of(chain)
        except (KeyError, TypeError) as e:
            raise self._error(f"its answer lacks {e}") from None
        except ValueError as e:  # a CA certificate that does not parse
            raise self._error(f"its CA chain cannot be read: {e}") from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = _call(self._url, body, self._token(), self._context)
        except _Refused as e:
            if e.code != 403 or self.settings.kubernetes is None:
                raise self._error(str(e)) from None
            with self._lock:  # revoked, or its lease cut short: log in again, once
                self._login = None
            try:
                answer = _call(self._url, body, self._token(), self._context)
            except _Refused as again:
                raise self._error(str(again)) from None
        data = answer.get("data")
        if not isinstance(data, dict):
            raise self._error("its answer has no data")
        return data

    def _token(self) -> str:
        auth = self.settings.kubernetes
        if auth is None:
            assert self.settings.token_file is not None  # one of the two, VaultSettings says
            return _read(self.settings.token_file, "token file", self._error)
        with self._lock:
            if self._login is not None and self._clock() < self._login[1]:
                return self._login[0]
            jwt = _read(auth.token_file, "ServiceAccount token", self._error)
            url = f"{self._base}/v1/auth/{auth.mount.strip('/')}/login"
            try:
                answer = _call(url, {"role": auth.role, "jwt": jwt}, None, self._context)
            except _Refused as e:
                raise self._error(f"cannot log in as role {auth.role} ({auth.mount} auth): {e}") from None
            login = answer.get("auth")
            if not isinstance(login, dict) or not login.get("client_token"):
                raise self._error(f"logging in as role {auth.role} gave no token")
            lease = float(login.get("lease_duration") or 0)
            # A lease of 0 never ends: the token is kept until Vault refuses it.
            renew_at = self._clock() + lease * RELOGIN_AT if lease else float("inf")
            self._login = (str(login["client_token"]), renew_at)
            log.info(
                "logged in to Vault as role %s (%s auth) for %ss", auth.role, auth.mount, lease or "ever"
            )
            return self._login[0]

    def _error(self, reason: str) -> ProviderError:
        where = f"{self.settings.address} {self.settings.mount}/issue/{self.settings.role}"
        return ProviderError(f"{self.name} ({where}): {reason}")


class _Refused(Exception):
    """Vault answered with an error, or could not be reached; the reason as people read it."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.code = code


def _read(path: Path, what: str, error: Callable[[str], ProviderError]) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise error(f"cannot read the {what} {path}: {e.strerror}") from e


def _call(
    url: str, body: dict[str, Any], token: str | None, context: ssl.SSLContext | None
) -> dict[str, Any]:
    """POST ``body`` as JSON (with ``token``, if any); Vault's JSON answer. _Refused otherwise."""
    headers = {"Content-Type": "application/json", **({"X-Vault-Token": token} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as reply:
            answer: Any = json.load(reply)
    except urllib.error.HTTPError as e:
        raise _Refused(f"HTTP {e.code}: {_vault_errors(e)}", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise _Refused(f"unreachable: {reason}") from None
    except ValueError as e:
        raise _Refused(f"its answer is not JSON: {e}") from None
    if not isinstance(answer, dict):
        raise _Refused("its answer is not a JSON object")
    return answer


def _vault_errors(error: urllib.error.HTTPError) -> str:
    """Vault's own words (``{"errors": [...]}``), else the HTTP reason."""
    try:
        errors = json.loads(error.read() or b"{}").get("errors")
    except (ValueError, AttributeError, OSError):
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(" ".join(str(e).split()) for e in errors)  # Vault's are multi-line
    return str(error.reason)


__all__ = [
    "RELOGIN_AT",
    "SERVICE_ACCOUNT_TOKEN",
    "TIMEOUT_SECONDS",
    "KubernetesAuth",
    "VaultPki",
    "VaultSettings",
]
