"""Webhook events: is a request really from the Git host, and which sources does it concern?

Pure functions over the request's headers and body; the controller's HTTP port calls them.
Two forms are understood: GitHub's ``push`` event, and a generic JSON body naming a source
(``{"source": "mesh"}``) or a repository and, optionally, a ref
(``{"repository": "https://git.example.com/mesh.git", "ref": "refs/heads/main"}``).
Both are signed the GitHub way: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body, hex>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from gitmesh.sync.source import RefKind, Source

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"


class BadEvent(ValueError):
    """A signed request whose body is not an event gitmesh understands."""


@dataclass(frozen=True)
class Push:
    """Something changed: in these repositories (normalised URLs) at ``ref`` (empty: any ref), or in
    the source named ``source``."""

    repositories: frozenset[str] = frozenset()
    ref: str = ""
    default_branch: str = ""
    source: str = ""


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """The header carries the body's HMAC under ``secret``; compared in constant time."""
    return bool(header) and hmac.compare_digest(signature(secret, body), header or "")


def parse(event: str | None, body: bytes) -> Push | None:
    """The push a verified request announces; None for an event that asks for nothing (GitHub's ping)."""
    try:
        payload = json.loads(body)
    except ValueError as e:
        raise BadEvent(f"the body is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise BadEvent("the body is not a JSON object")
    if event is not None:
        if event == "ping":
            return None
        if event != "push":
            raise BadEvent(f"GitHub event {event!r} is not handled (only push)")
        repo = payload.get("repository")
        if not isinstance(repo, dict):
            raise BadEvent("a push event without a repository")
        urls = {repo.get(k) for k in ("clone_url", "git_url", "ssh_url", "html_url", "url")}
        return Push(
            repositories=frozenset(normalise(u) for u in urls if isinstance(u, str) and u),
            ref=str(payload.get("ref") or ""),
            default_branch=str(repo.get("default_branch") or ""),
        )
    if isinstance(payload.get("source"), str):
        return Push(source=payload["source"])
    if isinstance(payload.get("repository"), str):
        return Push(
            repositories=frozenset({normalise(payload["repository"])}), ref=str(payload.get("ref", ""))
        )
    raise BadEvent('expected {"source": NAME} or {"repository": URL, "ref": REF}')


def concerns(push: Push, source: Source) -> bool:
    """Whether ``push`` may have moved what ``source`` follows."""
    if push.source:
        return push.source == source.name
    if normalise(source.url) not in push.repositories:
        return False
    ref = source.ref
    if not push.ref:
        return ref.kind is not RefKind.COMMIT
    if ref.kind is RefKind.BRANCH:
        return push.ref == f"refs/heads/{ref.value or push.default_branch}"
    if ref.kind is RefKind.TAG:
        return push.ref == f"refs/tags/{ref.value}"
    return ref.kind is RefKind.SEMVER and push.ref.startswith("refs/tags/")


_SCP = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.*)$")


def normalise(url: str) -> str:
    """One spelling per repository: host and path, without scheme, user, port, ``.git`` or slashes.
    ``https://github.com/o/r.git``, ``git@github.com:o/r`` and ``ssh://git@github.com/o/r`` agree."""
    if "://" in url:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        path = parts.path
    elif m := _SCP.match(url):
        host, path = m.group(1).lower(), "/" + m.group(2)
    else:
        host, path = "", url
    path = path.rstrip("/").removesuffix(".git").rstrip("/")
    return f"{host}{path}" if host else path
