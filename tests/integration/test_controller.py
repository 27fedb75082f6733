"""`gitmesh run` as a controller against real Git (local paths, file://, HTTP with git http-backend)
and the embedded store: new commits applied, faults survived, everything recorded."""

from __future__ import annotations

import datetime
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import Sidecar, eventually, free_port
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.settings import embedded
from gitmesh.xds.bootstrap import client_tls
from gitmesh.xds.translate import Proxy
from tests import factory as f
from tests.conftest import EXAMPLE_OBJECTS, EXAMPLE_REPO, GitRepo
from tests.controller import RunningController, condition
from tests.gitserver import GitHttpServer
from tests.kube import _make_pki
from tests.sshserver import SshServer

pytestmark = pytest.mark.integration

SPLIT = (EXAMPLE_REPO / "bookstore/split.yaml").read_text()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def start(controllers: list[RunningController], workdir: Path, *args: str | Path) -> RunningController:
    c = RunningController(workdir, args).start()
    controllers.append(c)
    return c


def managed(store: Path) -> set[str]:
    backend = embedded(store)
    try:
        return {str(r) for r in backend.objects.list()}
    finally:
        backend.close()


def cli_run(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def head(repo: GitRepo) -> str:
    return repo.git("rev-parse", "HEAD").strip()


def bare_copy(repo: GitRepo, root: Path, name: str = "mesh.git") -> Path:
    """A bare repository that ``repo`` pushes to (main), as a Git host would have it."""
    bare = root / name
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(bare)], check=True)
    repo.git("remote", "add", "origin", str(bare))
    return bare


def write_token(directory: Path) -> Path:
    """A bearer token file for the controller's HTTP port (and for gitmesh reconcile)."""
    path = directory / "http-token"
    path.write_text(secrets.token_hex(32) + "\n")
    return path


def local_source(repo: GitRepo, store: Path) -> tuple[str | Path, ...]:
    return ("--repo", repo.path, "--path", "mesh", "--store", store, "--interval", "1s")


def test_each_new_commit_is_applied_and_recorded(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    c = start(
        controllers, tmp_path, "--repo", mesh.path, "--path", "mesh", "--store", store, "--interval", "1s"
    )
    first = c.wait_applied(head(mesh))
    assert condition(first, "Ready") == ("True", "ReconciliationSucceeded")
    assert (
        first["history"][0]["summary"]
        == f"{EXAMPLE_OBJECTS} to create, 0 to update, 0 to delete, 0 unchanged."
    )
    assert c.get("/readyz")[0] == 200
    shift = SPLIT.replace("weight: 75", "weight: 10").replace("weight: 25", "weight: 90")
    second = mesh.commit("shift", {"mesh/bookstore/split.yaml": shift})
    record = c.wait_applied(second)
    assert (
        record["history"][0]["summary"]
        == f"0 to create, 1 to update, 0 to delete, {EXAMPLE_OBJECTS - 1} unchanged."
    )
    assert [h["revision"] for h in record["history"]] == [second, first["lastAppliedRevision"]]
    # Polls that find no new commit reconcile nothing: still exactly two reconciles.
    eventually(lambda: c.metric('gitmesh_fetches_total{source="default"}'), lambda n: n >= 4, "more polls")
    assert len(c.status()["default"]["history"]) == 2  # type: ignore[index]
    assert c.metric('gitmesh_reconciles_total{result="applied",source="default"}') == 2
    # The same record is in the store, for gitmesh status and gitmesh history.
    history = cli_run("history", "--store", store)
    assert f"{second[:12]}  applied" in history
    status = json.loads(cli_run("status", "--store", store, "--output", "json"))
    (source,) = status["sources"]
    assert source["revision"] == second
    assert source["controller"]["conditions"][0]["status"] == "True"


def test_a_broken_commit_between_two_good_ones_is_never_applied(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    c = start(
        controllers, tmp_path, "--repo", mesh.path, "--path", "mesh", "--store", store, "--interval", "1s"
    )
    good = head(mesh)
    c.wait_applied(good)
    before = managed(store)
    broken = mesh.commit("broken", {"mesh/bookstore/split.yaml": SPLIT.replace("weight: 25", "weight: -25")})
    record = c.wait_result(broken, "invalid")
    assert "GM020 spec.backends[1].weight" in record["history"][0]["summary"]
    assert condition(record, "Ready") == ("False", "ValidationFailed")
    assert condition(record, "Stalled") == ("True", "ValidationFailed")
    assert record["lastAppliedRevision"] == good
    assert record["lastAttemptedRevision"] == broken
    assert managed(store) == before
    assert "invalid" in cli_run("status", "--store", store)
    fixed = mesh.commit(
        "fixed",
        {
            "mesh/extra.yaml": f.dump(f.service_account("bookstore", "late")),
            "mesh/bookstore/split.yaml": SPLIT,
        },
    )
    record = c.wait_applied(fixed)
    assert condition(record, "Ready") == ("True", "ReconciliationSucceeded")
    assert condition(record, "Stalled")[0] == "False"
    assert [h["result"] for h in record["history"]] == ["applied", "invalid", "applied"]
    assert managed(store) == before | {"ServiceAccount/bookstore/late"}


def test_a_force_push_makes_the_new_head_the_desired_state(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    base = head(mesh)
    server = GitHttpServer(tmp_path / "served").start()
    bare_copy(mesh, tmp_path / "served")
    extra = mesh.commit("extra", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "extra"))})
    mesh.git("push", "-q", "origin", "main")
    try:
        c = start(
            controllers,
            tmp_path,
            "--repo",
            server.url("mesh.git"),
            "--branch",
            "main",
            "--path",
            "mesh",
            "--store",
            store,
            "--interval",
            "1s",
        )
        c.wait_applied(extra)
        assert "ServiceAccount/bookstore/extra" in managed(store)
        # History rewritten: the extra commit is gone, another takes its place.
        mesh.git("reset", "-q", "--hard", base)
        other = mesh.commit("other", {"mesh/other.yaml": f.dump(f.service_account("bookstore", "other"))})
        mesh.git("push", "-q", "--force", "origin", "main")
        record = c.wait_applied(other)
        assert (
            record["history"][0]["summary"]
            == f"1 to create, 0 to update, 1 to delete, {EXAMPLE_OBJECTS} unchanged."
        )
        now = managed(store)
        assert "ServiceAccount/bookstore/other" in now
        assert "ServiceAccount/bookstore/extra" not in now
    finally:
        server.stop()


@pytest.mark.parametrize("credentials", [None, ("deploy", "s3cret")], ids=["anonymous", "basic-auth"])
def test_the_remote_goes_down_and_comes_back(
    mesh: GitRepo,
    store: Path,
    tmp_path: Path,
    controllers: list[RunningController],
    credentials: tuple[str, str] | None,
) -> None:
    server = GitHttpServer(tmp_path / "served", credentials).start()
    bare_copy(mesh, tmp_path / "served")
    auth = ""
    if credentials:
        (tmp_path / "password").write_text(credentials[1] + "\n")
        auth = f"    auth: {{username: {credentials[0]}, password_file: password}}\n"
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n  - name: mesh\n    url: {server.url('mesh.git')}\n    ref: {{branch: main}}\n"
        f"    path: mesh\n    interval: 1s\n{auth}"
    )
    try:
        c = start(controllers, tmp_path, "--config", config, "--store", store)
        c.wait_applied(head(mesh), "mesh")
        good = managed(store)
        server.stop()
        change = mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
        mesh.git("push", "-q", "origin", "main")  # to the host's disk: its HTTP side is down
        record = c.wait(
            lambda s: bool(s) and condition(s["mesh"], "Ready") == ("False", "FetchFailed"),
            "the fetch failure reported",
        )["mesh"]
        assert condition(record, "Reconciling") == ("True", "ProgressingWithRetry")
        assert c.metric('gitmesh_fetch_errors_total{source="mesh"}') >= 1
        assert managed(store) == good
        server.start()
        record = c.wait_applied(change, "mesh")
        assert condition(record, "Ready") == ("True", "ReconciliationSucceeded")
        assert managed(store) == good | {"ServiceAccount/bookstore/late"}
    finally:
        server.stop()


def fetch_failure(c: RunningController, source: str) -> str:
    """Once ``source`` has made a first attempt: that its fetch failed, and the message saying why."""
    record = c.wait(lambda s: bool(s) and s[source]["conditions"], f"{source}'s first attempt")[source]
    assert condition(record, "Ready") == ("False", "FetchFailed")
    return str(next(x["message"] for x in record["conditions"] if x["type"] == "Ready"))


def test_wrong_credentials_are_a_fetch_error_that_names_the_remote(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    server = GitHttpServer(tmp_path / "served", ("deploy", "right")).start()
    bare_copy(mesh, tmp_path / "served")
    (tmp_path / "password").write_text("hunter2\n")
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n  - name: mesh\n    url: {server.url('mesh.git')}\n    path: mesh\n"
        "    auth: {username: deploy, password_file: password}\n"
    )
    try:
        c = start(controllers, tmp_path, "--config", config, "--store", store)
        message = fetch_failure(c, "mesh")
        assert server.url("mesh.git") in message
        assert "hunter2" not in message and managed(store) == set()
        assert "Cloning into" not in message
        status = cli_run("status", "--store", store)
        assert "source mesh" in status and "Ready       False FetchFailed" in status
    finally:
        server.stop()


def test_webhooks_must_be_signed_and_a_signed_push_fetches_at_once(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    secret = b"a-webhook-secret-of-32-bytes-000"
    (tmp_path / "secret").write_bytes(secret + b"\n")
    token = write_token(tmp_path)
    bare = bare_copy(mesh, tmp_path / "served")
    url = f"file://{bare}"
    c = start(
        controllers,
        tmp_path,
        "--repo",
        url,
        "--branch",
        "main",
        "--path",
        "mesh",
        "--store",
        store,
        "--interval",
        "1h",
        "--webhook-secret-file",
        tmp_path / "secret",
        "--http-token-file",
        token,
    )
    c.wait_applied(head(mesh))
    first = mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    mesh.git("push", "-q", "origin", "main")
    push = {"ref": "refs/heads/main", "repository": {"clone_url": url, "default_branch": "main"}}
    assert c.hook(push, None)[0] == 401
    assert c.hook(push, b"not-the-secret")[0] == 401
    assert c.metric('gitmesh_webhooks_total{result="rejected"}') == 2
    # Nothing was triggered: the commit is applied only when asked for, and the record says by whom.
    cli_run("reconcile", "default", "--controller", f"http://127.0.0.1:{c.http_port}", "--token-file", token)
    record = c.wait_applied(first)
    assert record["history"][0]["trigger"] == "manual"
    second = mesh.commit("again", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "later"))})
    mesh.git("push", "-q", "origin", "main")
    assert c.hook({**push, "ref": "refs/heads/other"}, secret) == (200, {"triggered": []})
    assert c.hook(push, secret) == (202, {"triggered": ["default"]})
    record = c.wait_applied(second)
    assert record["history"][0]["trigger"] == "webhook"
    third = mesh.commit("generic", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "latest"))})
    mesh.git("push", "-q", "origin", "main")
    assert c.hook({"source": "default"}, secret, github=False) == (202, {"triggered": ["default"]})
    c.wait_applied(third)


def big_repo(tmp_path: Path) -> tuple[GitRepo, str]:
    repo = GitRepo(tmp_path / "big")
    objs = [f.namespace("big")] + [f.service_account("big", f"sa-{i}") for i in range(3000)]
    return repo, repo.commit("big", {"all.yaml": f.dump(*objs)})


def test_sigterm_during_an_apply_lets_it_finish(
    tmp_path: Path, store: Path, controllers: list[RunningController]
) -> None:
    repo, sha = big_repo(tmp_path)
    c = start(controllers, tmp_path, "--repo", repo.path, "--store", store, "--log-format", "json")
    eventually(lambda: c.log.read_text(), lambda log: '"message": "applying default@' in log, "the apply")
    assert c.stop() == 0
    backend = embedded(store)
    assert (len(backend.objects.list()), len(backend.state.inventories.get("default"))) == (3001, 3001)
    (record,) = backend.state.records.all()
    assert (record.last_applied, record.history[0].result) == (sha, "applied")
    lines = [json.loads(line) for line in c.log.read_text().splitlines() if line.startswith("{")]
    applied = [line for line in lines if line["message"].startswith("applied default@")]
    assert applied and applied[0]["revision"] == sha and applied[0]["source"] == "default"


def test_a_controller_killed_mid_apply_converges_after_a_restart(
    tmp_path: Path, store: Path, controllers: list[RunningController]
) -> None:
    repo, sha = big_repo(tmp_path)
    args = ("--repo", repo.path, "--store", store, "--interval", "1s")
    first = start(controllers, tmp_path, *args)
    eventually(lambda: first.log.read_text(), lambda log: "applying default@" in log, "the apply starting")
    first.kill()
    second = start(controllers, tmp_path, *args)
    record = second.wait_applied(sha)
    backend = embedded(store)
    # Every object written exactly once: the store's counter counts each write.
    assert (len(backend.objects.list()), len(backend.state.inventories.get("default"))) == (3001, 3001)
    assert backend.objects.watch().version() == "3001"
    assert record["history"][0]["result"] in ("applied", "unchanged")


def test_a_commit_deleting_everything_is_refused_without_the_allow_flag(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    args = ("--repo", mesh.path, "--path", "mesh", "--store", store, "--interval", "1s")
    c = start(controllers, tmp_path, *args)
    c.wait_applied(head(mesh))
    mesh.remove("mesh")
    empty = mesh.commit("empty", {"mesh/.keep.yaml": ""})
    record = c.wait_result(empty, "refused")
    assert f"would delete all {EXAMPLE_OBJECTS} objects" in record["history"][0]["summary"]
    assert condition(record, "Stalled") == ("True", "ApplyRefused")
    assert len(managed(store)) == EXAMPLE_OBJECTS
    assert c.stop() == 0
    allowed = start(controllers, tmp_path, *args, "--allow-empty")
    allowed.wait_applied(empty)
    assert managed(store) == set()


def test_a_suspended_source_is_left_alone_until_resumed(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    token = write_token(tmp_path)
    c = start(controllers, tmp_path, *local_source(mesh, store), "--http-token-file", token)
    c.wait_applied(head(mesh))
    cli_run("suspend", "default", "--store", store)
    assert "suspended   yes" in cli_run("status", "--store", store)
    skipped = 'gitmesh_suspended_runs_total{source="default"}'
    eventually(lambda: c.metric(skipped), lambda n: n >= 1, "a run skipped")
    fetches = c.metric('gitmesh_fetches_total{source="default"}')
    change = mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    cli_run("reconcile", "default", "--controller", f"http://127.0.0.1:{c.http_port}", "--token-file", token)
    seen = c.metric(skipped)
    # Runs go on (polls, the request) without fetching: the new commit is not applied while suspended.
    eventually(lambda: c.metric(skipped), lambda n: n >= seen + 2, "two more runs skipped")
    assert c.metric('gitmesh_fetches_total{source="default"}') == fetches
    assert "ServiceAccount/bookstore/late" not in managed(store)
    cli_run("resume", "default", "--store", store)
    c.wait_applied(change)


def test_reconcile_wait_prints_the_reconcile_it_caused(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    token = write_token(tmp_path)
    c = start(
        controllers, tmp_path, *local_source(mesh, store), "--http-token-file", token, "--interval", "1h"
    )
    c.wait_applied(head(mesh))
    change = mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
    controller = ["--controller", f"http://127.0.0.1:{c.http_port}", "--token-file", str(token)]
    waited = CliRunner().invoke(cli, ["reconcile", "default", *controller, "--wait", "-o", "json"])
    assert waited.exit_code == 0, waited.output
    doc = json.loads(waited.stdout)
    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "gitmesh/cli/schemas/reconcile.schema.json").read_text()
    )
    jsonschema.validate(doc, schema)
    assert (doc["reconcile"]["revision"], doc["reconcile"]["result"], doc["reconcile"]["trigger"]) == (
        change,
        "applied",
        "manual",
    )
    assert "ServiceAccount/bookstore/late" in managed(store)
    text = CliRunner().invoke(cli, ["reconcile", "default", *controller, "--wait"])
    assert text.exit_code == 0 and f"unchanged {change[:12]}" in text.stdout, text.output  # nothing new
    unknown = CliRunner().invoke(cli, ["reconcile", "nope", *controller, "--wait"])
    assert unknown.exit_code == 1 and "no source 'nope'" in unknown.output


def test_sources_from_a_config_file_follow_tags_in_a_version_range(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    mesh.git("tag", "v1.0.0")
    v11 = mesh.commit("1.1", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "v11"))})
    mesh.git("tag", "v1.1.0")
    mesh.commit("2.0", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "v2"))})
    mesh.git("tag", "v2.0.0")
    other = GitRepo(tmp_path / "other")
    pinned = other.commit("theirs", {"ns.yaml": f.dump(f.namespace("theirs"))})
    other.commit("later", {"ns.yaml": f.dump(f.namespace("theirs"), f.namespace("later"))})
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n"
        f"  - {{name: mesh, url: {mesh.path}, path: mesh, ref: {{semver: '>=1.0,<2'}}, interval: 1s}}\n"
        f"  - {{name: theirs, url: 'file://{other.path}', ref: {{commit: {pinned}}}, interval: 1s}}\n"
    )
    c = start(controllers, tmp_path, "--config", config, "--store", store)
    record = c.wait_applied(v11, "mesh")
    assert record["history"][0]["ref"] == "v1.1.0"
    c.wait_applied(pinned, "theirs")
    names = managed(store)
    assert {"ServiceAccount/bookstore/v11", "Namespace/theirs"} <= names
    assert "Namespace/later" not in names and "ServiceAccount/bookstore/v2" not in names
    # A new tag in the range moves the source.
    mesh.git("checkout", "-q", "v1.1.0")
    v12 = mesh.commit("1.2", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "v12"))})
    mesh.git("tag", "v1.2.0")
    c.wait_applied(v12, "mesh")


def test_a_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        "sources:\n  - {name: Mesh, url: x, ref: {branch: a, tag: b}, interval: soon}\n  - {url: y}\n"
    )
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--store", str(tmp_path / "s.db")])
    assert result.exit_code == 1
    assert "is not a valid gitmesh configuration" in result.output
    assert "sources.0.name: 'Mesh' does not match" in result.output
    assert "sources.0.ref: {'branch': 'a', 'tag': 'b'} has too many properties" in result.output
    assert "sources.1: 'name' is a required property" in result.output


def test_an_ssh_remote_with_a_deploy_key_and_a_checked_host_key(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    server = SshServer(tmp_path / "ssh").start()
    bare = bare_copy(mesh, tmp_path / "served")
    # An impostor's host key for the same address: what a man in the middle would present.
    impostor = SshServer(tmp_path / "impostor")
    (tmp_path / "impostor_known_hosts").write_text(
        impostor.known_hosts.read_text().replace(f":{impostor.port}]", f":{server.port}]")
    )
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n"
        f"  - name: mesh\n    url: {server.url(bare)}\n    path: mesh\n    interval: 1s\n"
        f"    ssh: {{key_file: {server.deploy_key}, known_hosts_file: {server.known_hosts}}}\n"
        f"  - name: trusting\n    url: {server.url(bare)}\n    path: mesh\n"
        f"    ssh: {{key_file: {server.deploy_key}, known_hosts_file: impostor_known_hosts}}\n"
    )
    try:
        c = start(controllers, tmp_path, "--config", config, "--store", store)
        c.wait_applied(head(mesh), "mesh")
        assert "Host key verification failed" in fetch_failure(c, "trusting")
        assert c.status()["trusting"]["lastAppliedRevision"] is None  # type: ignore[index]
        change = mesh.commit("more", {"mesh/extra.yaml": f.dump(f.service_account("bookstore", "late"))})
        mesh.git("push", "-q", "origin", "main")
        c.wait_applied(change, "mesh")
    finally:
        server.stop()


@pytest.fixture
def gnupg_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A keyring of this test's own (a short path: gpg-agent's socket lives in it)."""
    home = Path(tempfile.mkdtemp(prefix="gm-gpg-"))
    home.chmod(0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    yield home
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def gpg_key(name: str) -> str:
    """A new signing key in $GNUPGHOME; its fingerprint."""
    uid = f"{name} <{name}@example.com>"
    gpg = ["gpg", "--batch", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", uid, "ed25519", "sign", "never"], check=True, capture_output=True
    )
    listing = subprocess.run(
        [*gpg, "--with-colons", "--list-secret-keys", uid], check=True, capture_output=True, text=True
    ).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def ssh_key(path: Path) -> Path:
    """A new SSH key pair; the public key's file."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def signed_commit(repo: GitRepo, message: str, key: str | Path) -> str:
    """A commit signed with a GPG key (a fingerprint) or an SSH key (a public key's file)."""
    ssh = ("-c", "gpg.format=ssh") if isinstance(key, Path) else ()
    repo.write({f"mesh/{message}.yaml": f.dump(f.service_account("bookstore", message))})
    repo.git("add", "-A")
    repo.git(*ssh, "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-m", message)
    return head(repo)


def test_only_heads_signed_by_a_listed_key_are_applied(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController], gnupg_home: Path
) -> None:
    release, stranger = gpg_key("release"), gpg_key("stranger")  # both in the keyring gitmesh sees
    exported = subprocess.run(["gpg", "--armor", "--export", release], check=True, capture_output=True)
    (tmp_path / "release.asc").write_bytes(exported.stdout)
    deployer, outsider = ssh_key(tmp_path / "deployer"), ssh_key(tmp_path / "outsider")
    (tmp_path / "allowed_signers").write_text(f"deployer@example.com {deployer.read_text()}")
    first = signed_commit(mesh, "by-deployer", deployer)
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n  - name: mesh\n    url: {mesh.path}\n    path: mesh\n    interval: 1s\n"
        "    verify: {gpg_keys_file: release.asc, allowed_signers_file: allowed_signers}\n"
    )
    c = start(controllers, tmp_path, "--config", config, "--store", store)
    c.wait_applied(first, "mesh")
    unsigned = mesh.commit("unsigned", {"mesh/unsigned.yaml": f.dump(f.service_account("bookstore", "u"))})
    record = c.wait_result(unsigned, "unverified", "mesh")
    assert condition(record, "Stalled") == ("True", "VerificationFailed")
    assert f"commit {unsigned[:12]} is not signed by a listed key" in record["history"][0]["summary"]
    c.wait_result(signed_commit(mesh, "by-outsider", outsider), "unverified", "mesh")
    c.wait_result(signed_commit(mesh, "by-stranger", stranger), "unverified", "mesh")
    assert managed(store) & {"ServiceAccount/bookstore/u", "ServiceAccount/bookstore/by-stranger"} == set()
    record = c.wait_applied(signed_commit(mesh, "by-release", release), "mesh")
    assert condition(record, "Ready") == ("True", "ReconciliationSucceeded")
    assert {"ServiceAccount/bookstore/u", "ServiceAccount/bookstore/by-release"} <= managed(store)
    assert "Ready       True ReconciliationSucceeded" in cli_run("status", "--store", store)


def test_the_http_port_reports_health_and_the_sidecars_served(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    token = write_token(tmp_path)
    c = start(controllers, tmp_path, *local_source(mesh, store), "--http-token-file", token)
    assert c.get("/healthz") == (200, b"ok\n")
    c.wait_applied(head(mesh))
    assert c.get("/readyz") == (200, b"ok\n")
    unknown = CliRunner().invoke(
        cli, ["reconcile", "nope", "--controller", f"http://127.0.0.1:{c.http_port}", "--token-file", token]
    )
    assert unknown.exit_code == 1
    assert "refused: no source 'nope'" in unknown.output
    # A real Envoy connects to the ADS server: the metrics count it, and its going.
    ports = (free_port(), free_port(), free_port())
    proxy = Proxy(Identity("bookbuyer", "bookbuyer"), ServiceRef("bookbuyer", "bookbuyer"), *ports)
    now = datetime.datetime.now(datetime.UTC)
    ca_state = embedded(store).state.ca.load()  # the controller made the mesh CA at start
    sidecar = Sidecar(proxy, c.xds_port, tmp_path, client_tls(ca_state, proxy.identity, now))
    try:
        eventually(lambda: c.metric("gitmesh_xds_connected_proxies"), lambda n: n == 1, "the sidecar counted")
        assert c.metric("gitmesh_xds_nacks") == 0
        # The certificate it was served: valid now, expiring within the default lifetime (24 h).
        expiry = eventually(
            lambda: c.metric('gitmesh_certificate_expiry_timestamp_seconds{identity="bookbuyer/bookbuyer"}'),
            bool,
            "the certificate's expiry reported",
        )
        assert now.timestamp() < expiry <= now.timestamp() + 24 * 3600 + 60
    finally:
        sidecar.close()
    eventually(lambda: c.metric("gitmesh_xds_connected_proxies"), lambda n: n == 0, "the sidecar gone")


def test_a_taken_http_port_is_a_clear_error(mesh: GitRepo, store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "gitmesh", "run", *local_source(mesh, store), "--http-address", address],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"error: cannot serve HTTP on {address}: Address already in use" in result.stderr


def test_an_https_remote_is_trusted_only_with_its_ca(
    mesh: GitRepo, store: Path, tmp_path: Path, controllers: list[RunningController]
) -> None:
    pki = _make_pki(tmp_path)  # a CA of the test's own, and a certificate for 127.0.0.1
    server = GitHttpServer(
        tmp_path / "served", ("deploy", "s3cret"), (pki.serving_cert, pki.serving_key)
    ).start()
    bare_copy(mesh, tmp_path / "served")
    (tmp_path / "password").write_text("s3cret\n")
    url = server.url("mesh.git")
    auth = "auth: {username: deploy, password_file: password}"
    config = tmp_path / "gitmesh.yaml"
    config.write_text(
        f"sources:\n"
        f"  - {{name: mesh, url: '{url}', path: mesh, interval: 1s, ca_file: {pki.ca_cert}, {auth}}}\n"
        f"  - {{name: untrusted, url: '{url}', path: mesh, interval: 1s, {auth}}}\n"
    )
    try:
        c = start(controllers, tmp_path, "--config", config, "--store", store)
        c.wait_applied(head(mesh), "mesh")
        assert "certificate" in fetch_failure(c, "untrusted")
    finally:
        server.stop()
