"""`gitmesh certs init` and `gitmesh certs rotate` against the embedded store's CA file."""

from __future__ import annotations

import datetime
from pathlib import Path

from click.testing import CliRunner

from gitmesh.certs import ca
from gitmesh.certs.authority import TRUSTING
from gitmesh.certs.store import FileKeeper, ca_path
from gitmesh.cli import cli

NOW = datetime.datetime.now(datetime.UTC)


def gitmesh(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_init_takes_your_own_root_once(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    root = ca.new_root("corp.example", NOW)
    (tmp_path / "ca.pem").write_text(root.cert_pem)
    (tmp_path / "ca.key").write_text(root.key_pem)
    code, output = gitmesh(
        "certs", "init", "--store", store, "--trust-domain", "corp.example",
        "--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.key"),
    )  # fmt: skip
    assert code == 0, output
    kept = FileKeeper(ca_path(store)).load()
    assert kept is not None and kept.trust_domain == "corp.example" and kept.signing == root
    code, output = gitmesh("certs", "init", "--store", store)
    assert code == 2 and "exists already" in output


def test_init_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(ca.new_root("a", NOW).cert_pem)
    (tmp_path / "ca.key").write_text(ca.new_root("a", NOW).key_pem)
    code, output = gitmesh(
        "certs", "init", "--store", str(tmp_path / "store.db"),
        "--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.key"),
    )  # fmt: skip
    assert code == 2 and "does not belong" in output
    assert FileKeeper(ca_path(tmp_path / "store.db")).load() is None  # nothing kept


def test_rotate_records_a_new_root_beside_the_old_and_refuses_a_second(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    code, output = gitmesh("certs", "rotate", "--store", store)
    assert code == 2 and "no mesh CA yet" in output
    assert gitmesh("certs", "init", "--store", store)[0] == 0
    before = FileKeeper(ca_path(store)).load()
    assert before is not None
    code, output = gitmesh("certs", "rotate", "--store", store)
    assert code == 0, output
    rotating = FileKeeper(ca_path(store)).load()
    assert rotating is not None and rotating.phase == TRUSTING
    assert rotating.authorities[0] == before.signing and len(rotating.bundle()) == 2
    code, output = gitmesh("certs", "rotate", "--store", store)
    assert code == 2 and "already under way" in output


def test_waiting_for_a_rotation_no_gitmesh_run_completes_fails(tmp_path: Path) -> None:
    store = str(tmp_path / "store.db")
    assert gitmesh("certs", "init", "--store", store)[0] == 0
    code, output = gitmesh("certs", "rotate", "--store", store, "--wait", "1")
    assert code == 1 and "still under way after 1s" in output
    kept = FileKeeper(ca_path(store)).load()
    assert kept is not None and kept.phase == TRUSTING  # recorded: gitmesh run takes it up when it starts
