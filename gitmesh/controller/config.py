"""The controller's configuration file (``gitmesh run --config FILE``): its sources, its HTTP port and
where workload certificates come from; and the secrets the HTTP port checks requests with.

The format is documented in the README ("The controller's configuration file"); the schema
below is the one definition of it, and every problem in a file is reported at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gitmesh import durations
from gitmesh.certs.certmanager import GROUP, CertManagerSettings
from gitmesh.certs.choice import PROVIDERS, Choice
from gitmesh.certs.vault import SERVICE_ACCOUNT_TOKEN, KubernetesAuth, VaultSettings
from gitmesh.errors import ConfigError
from gitmesh.revision.layout import NAMESPACE_NAME
from gitmesh.sync.source import BasicAuth, Ref, RefKind, Source, SshAuth
from gitmesh.sync.verify import Verification

log = logging.getLogger(__name__)

DEFAULT_HTTP_ADDRESS = "127.0.0.1:9090"
MIN_SECRET_BYTES = 16  # a webhook secret or bearer token shorter than this is refused (unless allowed)

_DURATION = {"type": ["string", "number"]}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "http_address": {"type": "string", "pattern": r"^[^:\s]*:\d+$"},
        "webhook_secret_file": {"type": "string", "minLength": 1},
        "allow_short_webhook_secret": {"type": "boolean"},
        "http_token_file": {"type": "string", "minLength": 1},
        "certificates": {
            "type": "object",
            "additionalProperties": False,
            "required": ["provider"],
            "properties": {
                "provider": {"enum": list(PROVIDERS)},
                "vault": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["address", "role"],
                    "properties": {
                        "address": {"type": "string", "pattern": "^https?://"},
                        "mount": {"type": "string", "minLength": 1},
                        "role": {"type": "string", "minLength": 1},
                        "token_file": {"type": "string", "minLength": 1},
                        "kubernetes": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["role"],
                            "properties": {
                                "role": {"type": "string", "minLength": 1},
                                "mount": {"type": "string", "minLength": 1},
                                "token_file": {"type": "string", "minLength": 1},
                            },
                        },
                        "ca_file": {"type": "string", "minLength": 1},
                    },
                },
                "cert_manager": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["issuer"],
                    "properties": {
                        "issuer": {"type": "string", "minLength": 1},
                        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        "group": {"type": "string", "minLength": 1},
                        "namespace": {"type": "string", "pattern": NAMESPACE_NAME},
                    },
                },
            },
            "allOf": [
                {"if": {"properties": {"provider": {"const": "vault"}}}, "then": {"required": ["vault"]}},
                {
                    "if": {"properties": {"provider": {"const": "cert-manager"}}},
                    "then": {"required": ["cert_manager"]},
                },
            ],
        },
        "rollouts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "prometheus": {"type": "string", "pattern": "^https?://"},
                "webhook": {"type": "string", "pattern": "^https?://"},
                "push_reverts": {"type": "string", "minLength": 1},
            },
        },
        "sources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "url"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$"},
                    "url": {"type": "string", "minLength": 1},
                    "ref": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "maxProperties": 1,
                        "properties": {k.value: {"type": "string", "minLength": 1} for k in RefKind},
                    },
                    "path": {"type": "string"},
                    "namespace": {"type": "string", "pattern": NAMESPACE_NAME},
                    "interval": _DURATION,
                    "drift_interval": _DURATION,
                    "allow_empty": {"type": "boolean"},
                    "ca_file": {"type": "string", "minLength": 1},
                    "verify": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {
                            "gpg_keys_file": {"type": "string", "minLength": 1},
                            "allowed_signers_file": {"type": "string", "minLength": 1},
                        },
                    },
                    "ssh": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["key_file", "known_hosts_file"],
                        "properties": {
                            "key_file": {"type": "string", "minLength": 1},
                            "known_hosts_file": {"type": "string", "minLength": 1},
                        },
                    },
                    "auth": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["username", "password_file"],
                        "properties": {
                            "username": {"type": "string", "minLength": 1},
                            "password_file": {"type": "string", "minLength": 1},
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class RolloutSettings:
    """How the controller walks rollouts: metrics from a Prometheus (its URL) or, by default, from the
    stats of the sidecars connected to it; who hears of every phase change (a URL, POSTed JSON); a
    repository to push a revert branch to after a failure."""

    prometheus: str | None = None
    webhook: str | None = None
    push_reverts: str | None = None


@dataclass(frozen=True)
class ControllerConfig:
    sources: tuple[Source, ...]
    http_address: str | None = None  # None: the default (DEFAULT_HTTP_ADDRESS)
    webhook_secret_file: Path | None = None
    allow_short_webhook_secret: bool = False
    http_token_file: Path | None = None
    rollouts: RolloutSettings = RolloutSettings()
    certificates: Choice | None = None  # where workload certificates come from; None: the file says not


def load_config(path: Path) -> ControllerConfig:
    """Read and check a configuration file; a ConfigError lists every problem with where it is."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    problems = [
        f"  {'.'.join(str(p) for p in err.absolute_path) or '(top level)'}: {err.message}"
        for err in sorted(jsonschema.Draft202012Validator(_SCHEMA).iter_errors(data), key=str)
    ]
    if not problems:
        try:
            return _parse(data, path.parent)
        except ValueError as e:
            problems = [f"  {e}"]
    raise ConfigError(f"{path} is not a valid gitmesh configuration:\n" + "\n".join(problems))


def _parse(data: dict[str, Any], base: Path) -> ControllerConfig:
    sources = []
    for i, s in enumerate(data.get("sources", [])):
        where = f"sources.{i}"
        ((kind, value),) = (s.get("ref") or {"branch": ""}).items()
        auth, ssh, verify = s.get("auth"), s.get("ssh"), s.get("verify")
        try:
            sources.append(
                Source(
                    name=s["name"],
                    url=_relative_to(base, s["url"]),
                    ref=Ref(RefKind(kind), value),
                    path=s.get("path", ""),
                    interval=durations.seconds(s.get("interval", "1m")),
                    drift_interval=durations.seconds(s.get("drift_interval", "10m")),
                    allow_empty=s.get("allow_empty", False),
                    auth=BasicAuth(auth["username"], base / auth["password_file"]) if auth else None,
                    ca_file=base / s["ca_file"] if "ca_file" in s else None,
                    ssh=SshAuth(base / ssh["key_file"], base / ssh["known_hosts_file"]) if ssh else None,
                    verify=_verification(base, verify) if verify else None,
                    namespace=s.get("namespace", ""),
                )
            )
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    names = [s.name for s in sources]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"sources: the name(s) {', '.join(dupes)} are used more than once")
    secret, token = data.get("webhook_secret_file"), data.get("http_token_file")
    rollouts = data.get("rollouts") or {}
    reverts = rollouts.get("push_reverts")
    certificates = data.get("certificates") or {}
    vault = certificates.get("vault") if certificates.get("provider") == "vault" else None
    kubernetes = (vault or {}).get("kubernetes")
    if vault and ("token_file" in vault) == bool(kubernetes):
        raise ValueError(
            "certificates.vault: give token_file or kubernetes (Vault's Kubernetes auth), one of them"
        )
    vault_settings = (
        VaultSettings(
            vault["address"],
            vault["role"],
            base / vault["token_file"] if "token_file" in vault else None,
            vault.get("mount", "pki"),
            base / vault["ca_file"] if "ca_file" in vault else None,
            KubernetesAuth(
                kubernetes["role"],
                kubernetes.get("mount", "kubernetes"),
                base / kubernetes["token_file"] if "token_file" in kubernetes else SERVICE_ACCOUNT_TOKEN,
            )
            if kubernetes
            else None,
        )
        if vault
        else None
    )
    return ControllerConfig(
        tuple(sources),
        data.get("http_address"),
        base / secret if secret else None,
        data.get("allow_short_webhook_secret", False),
        base / token if token else None,
        RolloutSettings(
            rollouts.get("prometheus"), rollouts.get("webhook"), reverts and _relative_to(base, reverts)
        ),
        Choice(certificates["provider"], vault_settings, _cert_manager(certificates))
        if certificates
        else None,
    )


class CertificatesFile:
    """The certificate provider a configuration file chooses (None: it names none), read again
    whenever the file changes (``gitmesh run`` switches to it while serving). A file that no longer
    loads keeps the last choice, and says why once."""

    def __init__(self, path: Path, first: Choice | None) -> None:
        self.path = path
        self._lock = threading.Lock()  # called from the serving loop and from status readers
        self._choice = first
        self._seen = self._stamp()

    def __call__(self) -> Choice | None:
        with self._lock:
            stamp = self._stamp()
            if stamp != self._seen:
                self._seen = stamp
                try:
                    self._choice = load_config(self.path).certificates
                except ConfigError as e:
                    log.error("keeping the certificate provider %s: %s", self._choice or "builtin", e)
            return self._choice

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


def read_webhook_secret(path: Path, allow_short: bool) -> bytes:
    """The HMAC key webhooks are signed with; a short one only when the user says so."""
    return _read_secret(
        path,
        "webhook secret",
        0 if allow_short else MIN_SECRET_BYTES,
        " (or keep it with --allow-short-webhook-secret, allow_short_webhook_secret: true in the file)",
    )


def read_http_token(path: Path) -> bytes:
    """The bearer token that lets a client ask the controller for a reconcile."""
    return _read_secret(path, "HTTP token", MIN_SECRET_BYTES, "")


def _read_secret(path: Path, what: str, min_bytes: int, allow_hint: str) -> bytes:
    """The secret in ``path`` without surrounding whitespace, refused when empty (anyone could sign
    with an empty key) or shorter than ``min_bytes`` (it could be guessed). Errors never show it."""
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} in {path}: {e.strerror}") from e
    if not secret:
        raise ConfigError(f"the {what} in {path} is empty; make one with: openssl rand -hex 32")
    if len(secret) < min_bytes:
        raise ConfigError(
            f"the {what} in {path} is {len(secret)} bytes, fewer than {min_bytes}; make a longer one "
            f"with: openssl rand -hex 32{allow_hint}"
        )
    return secret


def _cert_manager(certificates: dict[str, Any]) -> CertManagerSettings | None:
    found = certificates.get("cert_manager")
    if certificates["provider"] != "cert-manager" or not found:
        return None
    return CertManagerSettings(
        found["issuer"],
        found.get("kind", "Issuer"),
        found.get("group", GROUP),
        found.get("namespace", CertManagerSettings.namespace),
    )


def _verification(base: Path, verify: dict[str, str]) -> Verification:
    gpg, ssh = verify.get("gpg_keys_file"), verify.get("allowed_signers_file")
    return Verification(base / gpg if gpg else None, base / ssh if ssh else None)


def _relative_to(base: Path, url: str) -> str:
    """A local path in the file is relative to the file; a URL is left as it is."""
    return url if "://" in url or "@" in url.split("/", 1)[0] else str(base / url)
