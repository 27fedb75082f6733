"""Commit verification: is the head signed by one of the keys the source lists? Git decides.

``git verify-commit`` checks GPG signatures with gpg and SSH signatures with ``ssh-keygen -Y
verify``. It is run against a keyring of its own holding only the listed GPG keys and the
listed SSH allowed signers, so no key from the machine's own keyrings counts.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from gitmesh.errors import SourceError


class UnverifiedCommit(SourceError):
    """The commit is unsigned, or not signed by a listed key."""


@dataclass(frozen=True)
class Verification:
    """Keys whose signatures are accepted: GPG public keys (armored, one file) and/or SSH keys in
    git's allowed-signers format (``<principal> <key type> <key>`` per line)."""

    gpg_keys_file: Path | None = None
    allowed_signers_file: Path | None = None


def verify_commit(repo: git.Repo, sha: str, verification: Verification) -> None:
    """Raise UnverifiedCommit, with git's reason, unless ``sha`` carries a good signature by a listed key."""
    for path in (verification.gpg_keys_file, verification.allowed_signers_file):
        if path is not None and not path.is_file():
            raise SourceError(f"{path} does not exist or is not a file")
    with tempfile.TemporaryDirectory(prefix="gitmesh-gnupg-") as home:
        env = {**os.environ, "GNUPGHOME": home}
        if verification.gpg_keys_file is not None:
            imported = subprocess.run(
                ["gpg", "--batch", "--quiet", "--import", str(verification.gpg_keys_file)],
                env=env,
                capture_output=True,
                text=True,
            )
            if imported.returncode != 0:
                raise SourceError(
                    f"cannot read the GPG keys in {verification.gpg_keys_file}: {imported.stderr.strip()}"
                )
        signers = verification.allowed_signers_file or Path(os.devnull)
        checked = subprocess.run(
            ["git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", sha],
            cwd=repo.git_dir,
            env=env,
            capture_output=True,
            text=True,
        )
    if checked.returncode != 0:
        reason = " ".join(line.strip() for line in checked.stderr.splitlines() if line.strip())
        raise UnverifiedCommit(f"commit {sha[:12]} is not signed by a listed key: {reason or 'no signature'}")
