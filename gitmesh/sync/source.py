"""A source: where the controller reads the mesh from, and how one fetch of it goes.

A source names a repository (a local path, ``file://``, HTTP(S)), a ref to follow
(a branch, a tag, the highest tag in a version range, or a pinned commit), the
directory of its manifests, and how often to look. Fetching mirrors the repository
into the cache and resolves the ref to one commit there.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from gitmesh.errors import SourceError

if TYPE_CHECKING:  # GitPython is imported when a source is fetched: describing one needs none of it
    import git

    from gitmesh.sync.git import Revision
    from gitmesh.sync.verify import Verification


class RefKind(Enum):
    BRANCH = "branch"
    TAG = "tag"
    SEMVER = "semver"
    COMMIT = "commit"


@dataclass(frozen=True)
class Ref:
    """What to follow. An empty branch means the remote's default branch (its HEAD)."""

    kind: RefKind = RefKind.BRANCH
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind is RefKind.SEMVER:
            try:
                SpecifierSet(self.value)
            except InvalidSpecifier as e:
                raise ValueError(f"semver range {self.value!r} is not valid: {e}") from None
        elif self.kind is not RefKind.BRANCH and not self.value:
            raise ValueError(f"a {self.kind.value} ref needs a value")

    def __str__(self) -> str:
        return f"{self.kind.value} {self.value}" if self.value else "the default branch"


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic authentication; the password is read from a file (a mounted secret) at each fetch."""

    username: str
    password_file: Path


@dataclass(frozen=True)
class SshAuth:
    """A deploy key, and the host keys the server may present: any other host key is refused."""

    key_file: Path
    known_hosts_file: Path


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    ref: Ref = Ref()
    path: str = ""
    interval: float = 60.0  # seconds between fetches
    drift_interval: float = 600.0  # seconds between re-plans of the applied revision
    allow_empty: bool = False  # may a revision delete everything this source applied?
    auth: BasicAuth | None = None
    ca_file: Path | None = None  # CA certificates to trust for an https:// remote (default: the system's)
    ssh: SshAuth | None = None
    verify: Verification | None = None  # apply only heads signed by these keys
    namespace: str = ""  # for objects that name none

    def __post_init__(self) -> None:
        # A local path is mirrored like any remote; its cache key must not depend on the cwd.
        if "://" not in self.url and not _scp_like(self.url):
            object.__setattr__(self, "url", os.path.abspath(self.url))
        if self.auth:
            from gitmesh.sync.git import split_credentials

            if split_credentials(self.url)[1]:
                raise ValueError("the URL carries credentials and auth is set: give them once")


def fetch(source: Source, stop: threading.Event | None = None) -> git.Repo:
    """The source's mirror, fetched now (abandoned once ``stop`` is set)."""
    from gitmesh.sync.git import mirror

    settings = []
    if source.auth:
        settings.append(("http.extraHeader", _authorization(source.auth)))
    if source.ca_file:
        settings.append(("http.sslCAInfo", str(source.ca_file)))
    ssh_options = _ssh_options(source.ssh) if source.ssh else ()
    return mirror(source.url, settings=settings, ssh_options=ssh_options, stop=stop)


def resolve(repo: git.Repo, ref: Ref) -> tuple[str, str]:
    """The commit ``ref`` names in ``repo`` now, and the name it was found under."""
    import git

    if ref.kind is RefKind.SEMVER:
        name = _highest_tag(repo, ref.value)
        target = f"refs/tags/{name}"
    elif ref.kind is RefKind.TAG:
        name, target = ref.value, f"refs/tags/{ref.value}"
    elif ref.kind is RefKind.COMMIT:
        name, target = ref.value, ref.value
    elif ref.value:
        name, target = ref.value, f"refs/heads/{ref.value}"
    else:
        name, target = _default_branch(repo), "HEAD"
    try:
        commit = repo.commit(target)
    except (git.BadName, ValueError, git.GitCommandError) as e:
        raise SourceError(f"{ref} not found in the repository") from e
    return commit.hexsha, name


def read(repo: git.Repo, source: Source, sha: str, name: str) -> Revision:
    """The source's manifests at commit ``sha`` (found as ``name``)."""
    from gitmesh.sync.git import read_revision

    return dataclasses.replace(read_revision(repo, sha, source.path, source.namespace), ref=name)


def _default_branch(repo: git.Repo) -> str:
    """The branch the remote's HEAD names (a mirror copies it), for the record."""
    try:
        return str(repo.head.reference.name)
    except (TypeError, ValueError):  # a detached HEAD
        return "HEAD"


def _highest_tag(repo: git.Repo, spec: str) -> str:
    wanted = SpecifierSet(spec)
    versions = []
    for tag in repo.tags:
        try:
            versions.append((Version(tag.name), tag.name))  # a leading "v" is accepted
        except InvalidVersion:
            continue
    matching = [(v, name) for v, name in versions if wanted.contains(v)]
    if not matching:
        raise SourceError(f"no tag matches the semver range {spec!r} ({len(versions)} version tags)")
    return max(matching)[1]


def _authorization(auth: BasicAuth) -> str:
    _files(auth.password_file)
    try:
        password = auth.password_file.read_text().strip()
    except OSError as e:
        raise SourceError(f"cannot read the password file {auth.password_file}: {e.strerror}") from e
    token = base64.b64encode(f"{auth.username}:{password}".encode()).decode()
    return f"Authorization: Basic {token}"


def _ssh_options(ssh: SshAuth) -> list[str]:
    """Only this key, only these host keys (strictly: an unknown or changed host key fails the fetch);
    the user's own ssh configuration is not read."""
    _files(ssh.key_file, ssh.known_hosts_file)
    return [
        "-F", "/dev/null",
        "-i", str(ssh.key_file),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={ssh.known_hosts_file}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip


def _files(*paths: Path) -> None:
    """Refuse paths that are not regular files: reading a pipe or a device could hold a fetch forever."""
    for path in paths:
        if not path.is_file():
            raise SourceError(f"{path} does not exist or is not a file")


def _scp_like(url: str) -> bool:
    """``user@host:path``, the SSH form without a scheme."""
    head = url.split("/", 1)[0]
    return ":" in head and not os.path.exists(url)
