"""Keeping the CA state in a file: JSON, mode 0600, replaced atomically.

With the embedded store the file sits next to it (``ca_path``); with a
cluster the same JSON is kept in a Secret by the Kubernetes backend.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Protocol

from gitmesh.certs import ca
from gitmesh.certs.authority import CaState
from gitmesh.errors import CertsError


def ca_path(store: str | Path) -> Path:
    """Where the CA of the embedded store ``store`` is kept: ``<store>.ca.json`` beside it."""
    store = Path(store)
    return store.with_name(store.name + ".ca.json")


def encode(state: CaState) -> str:
    return json.dumps(
        {
            "trust_domain": state.trust_domain,
            "signer": state.signer,
            "authorities": [
                {"cert": a.cert_pem, "key": a.key_pem, "chain": a.chain_pem} for a in state.authorities
            ],
        },
        indent=1,
    )


def decode(text: str) -> CaState:
    """CertsError, naming what is wrong, for anything that is not a CA state gitmesh wrote."""
    try:
        data: Any = json.loads(text)
        authorities = tuple(
            ca.authority_from_pem(a["cert"] + a.get("chain", ""), a["key"]) for a in data["authorities"]
        )
        state = CaState(str(data["trust_domain"]), authorities, int(data["signer"]))
    except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError and unreadable PEM are ValueErrors
        raise CertsError(f"not a gitmesh CA state: {e}") from e
    if not authorities or not 0 <= state.signer < len(authorities):
        raise CertsError("not a gitmesh CA state: no authority, or the signer is out of range")
    return state


class Keeper(Protocol):
    """Where the CA state is kept: a file here, a Secret with a cluster (``gitmesh.cluster.kube``)."""

    def load(self) -> CaState | None:
        """The state kept, or None when there is none yet."""

    def save(self, state: CaState) -> None: ...


class FileKeeper:
    """The state as a file readable by its owner only, replaced all or nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileKeeper({str(self.path)!r})"

    def load(self) -> CaState | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return decode(text)
        except CertsError as e:
            raise CertsError(f"{self.path}: {e}") from e

    def save(self, state: CaState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(encode(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def load_or_create(
    keeper: Keeper, now: datetime.datetime, trust_domain: str = ca.DEFAULT_TRUST_DOMAIN
) -> CaState:
    """The CA ``keeper`` holds; on first use a new root is generated and kept there."""
    state = keeper.load()
    if state is None:
        state = CaState(trust_domain, (ca.new_root(trust_domain, now),))
        keeper.save(state)
    return state


__all__ = ["FileKeeper", "Keeper", "ca_path", "decode", "encode", "load_or_create"]
