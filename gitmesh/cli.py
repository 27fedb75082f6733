"""The ``gitmesh`` command. Commands parse options, call one pipeline function, and print.

Exit codes: 0 success; 1 an error (invalid revision, refused apply, ...);
2 a usage error, or, with ``plan --detailed-exitcode``, a plan with changes.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import click
import yaml
from rich.console import Console
from rich.text import Text

from gitmesh import pipeline
from gitmesh.cluster.backend import ClusterBackend, SourceStatus
from gitmesh.cluster.local import DEFAULT_PATH, LocalBackend
from gitmesh.cluster.records import SourceRecord
from gitmesh.controller.config import (
    DEFAULT_HTTP_ADDRESS,
    ControllerConfig,
    RolloutSettings,
    duration,
    load_config,
)
from gitmesh.errors import GitmeshError
from gitmesh.plan import crds, encode, render
from gitmesh.plan.diagnostics import CODES
from gitmesh.plan.model import Action
from gitmesh.plan.validate import Validated
from gitmesh.sync.git import Revision, open_repo, read_directory, read_revision
from gitmesh.sync.source import BasicAuth, Ref, RefKind, Source, SshAuth

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where the manifests come from: a directory argument, or --repo/--ref/--path."""
    f = click.argument("directory", required=False, type=click.Path(file_okay=False))(f)
    f = click.option("--repo", help="Git repository: a local path or a URL.")(f)
    f = click.option("--ref", default="HEAD", show_default=True, help="Branch, tag or commit to read.")(f)
    f = click.option(
        "--path", "subdir", default="", help="Directory of the manifests inside the repository."
    )(f)
    return f


@dataclass(frozen=True)
class BackendChoice:
    """Where objects live: a cluster when one is named (or gitmesh runs in one), else the embedded store."""

    store: str
    kubeconfig: str | None
    context: str | None

    def open(self) -> ClusterBackend:
        from gitmesh.cluster import kube  # the Kubernetes client takes a while to import: only when used

        if self.kubeconfig or self.context or kube.in_cluster():
            return kube.KubeBackend.connect(self.kubeconfig, self.context)
        return LocalBackend(self.store)


def _backend_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--store / --kubeconfig / --context, handed to the command as one ``target``."""

    @functools.wraps(f)
    def wrapper(*args: Any, store: str, kubeconfig: str | None, context: str | None, **kwargs: Any) -> Any:
        return f(*args, target=BackendChoice(store, kubeconfig, context), **kwargs)

    wrapper = click.option(
        "--store",
        type=click.Path(dir_okay=False),
        default=str(DEFAULT_PATH),
        show_default=True,
        help="The embedded store, used when no cluster is given.",
    )(wrapper)
    wrapper = click.option(
        "--kubeconfig",
        envvar="KUBECONFIG",
        help="Apply to the cluster of this kubeconfig (default: $KUBECONFIG).",
    )(wrapper)
    return click.option("--context", help="The kubeconfig context to use (default: its current one).")(
        wrapper
    )


def _source_name_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--source",
        "source_name",
        default="default",
        show_default=True,
        help="Name of this source: it owns what it applies, and prunes only that.",
    )(f)


def _webhook_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--webhook",
        envvar="GITMESH_ROLLOUT_WEBHOOK",
        help="POST a JSON notice of every rollout phase change here.",
    )(f)


def _reports_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """The one place a GitmeshError becomes a message and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except GitmeshError as e:
            err.print(Text("error: ", style="bold red") + Text(str(e)))
            sys.exit(1)

    return wrapper


def _revision(directory: str | None, repo: str | None, ref: str, subdir: str) -> Revision:
    if directory and repo:
        raise click.UsageError("give a DIRECTORY or --repo, not both")
    if repo:
        return read_revision(open_repo(repo), ref, subdir)
    return read_directory(directory or ".")


def _report(validated: Validated, revision: Revision, output: str) -> None:
    diagnostics = validated.diagnostics
    if output == "json":
        click.echo(render.diagnostics_json(diagnostics))
    elif output == "github":
        if diagnostics:
            click.echo(render.diagnostics_github(diagnostics))
    elif diagnostics:
        render.diagnostics_text(err, diagnostics, {f.path: f.data for f in revision.files})


@click.group(context_settings={"auto_envvar_prefix": "GITMESH", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gitmesh")
def cli() -> None:
    """GitOps for an SMI service mesh: validate, plan and apply mesh manifests from Git."""


@cli.command()
@_source_options
@click.option("--output", type=click.Choice(["human", "json", "github"]), default="human", show_default=True)
@_reports_errors
def validate(directory: str | None, repo: str | None, ref: str, subdir: str, output: str) -> None:
    """Check manifests: schemas and cross-object meaning. Exit 1 on any error."""
    revision = _revision(directory, repo, ref, subdir)
    validated = pipeline.check(revision)
    _report(validated, revision, output)
    if output == "human":
        err.print(f"{len(validated.desired)} objects valid in {len(revision.files)} files ({revision.short})")
    sys.exit(0 if validated.ok else 1)


@cli.command()
@_source_options
@_backend_options
@_source_name_option
@click.option("--base", help="Plan against another Git ref instead of the backend (needs --repo).")
@click.option("--head", help="With --base: the ref to plan (default: --ref).")
@click.option("--output", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option(
    "-o", "--out", "out_file", type=click.Path(dir_okay=False), help="Save the plan for gitmesh apply."
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@click.option("--show-unchanged", is_flag=True, help="List unchanged objects too.")
@_reports_errors
def plan(
    directory: str | None,
    repo: str | None,
    ref: str,
    subdir: str,
    target: BackendChoice,
    source_name: str,
    base: str | None,
    head: str | None,
    output: str,
    out_file: str | None,
    detailed_exitcode: bool,
    show_unchanged: bool,
) -> None:
    """Show what applying the manifests would change, and what it does to traffic."""
    if base:
        if not repo:
            raise click.UsageError("--base needs --repo")
        git_repo = open_repo(repo)
        base_rev = read_revision(git_repo, base, subdir)
        revision = read_revision(git_repo, head or ref, subdir)
        backend = LocalBackend(":memory:")
        base_checked = pipeline.check(base_rev)
        if not base_checked.ok:
            err.print(f"[yellow]note:[/] base {base} has errors; planning against an empty mesh")
        else:
            pipeline.apply(pipeline.plan(base_rev, base_checked, backend, source_name), backend)
    else:
        revision = _revision(directory, repo, ref, subdir)
        backend = target.open()
    validated = pipeline.check(revision)
    if not validated.ok:
        _report(validated, revision, "human")
        sys.exit(1)
    result = pipeline.plan(revision, validated, backend, source_name)
    notes = [] if base else _rollout_notes(result, backend)
    if out_file:
        Path(out_file).write_text(encode.dumps(result))
    if output == "json":
        click.echo(encode.dumps(result), nl=False)
    elif output == "markdown":
        click.echo(render.plan_markdown(result), nl=False)
    else:
        if validated.diagnostics:
            _report(validated, revision, "human")
        render.plan_text(out, result, show_unchanged=show_unchanged)
        for line in notes:
            out.print(line, soft_wrap=True)
        if out_file:
            out.print(f"Saved the plan to {out_file}. Apply exactly it with: gitmesh apply {out_file}")
    sys.exit(2 if detailed_exitcode and result.has_changes else 0)


@cli.command()
@click.argument("plan_or_directory", required=False)
@click.option("--repo", help="Git repository: a local path or a URL.")
@click.option("--ref", default="HEAD", show_default=True, help="Branch, tag or commit to read.")
@click.option("--path", "subdir", default="", help="Directory of the manifests inside the repository.")
@_backend_options
@_source_name_option
@click.option("--allow-empty", is_flag=True, help="Allow a revision that deletes every object gitmesh owns.")
@click.option("--force-conflicts", is_flag=True, help="Take over fields another field manager owns.")
@_webhook_option
@_reports_errors
def apply(
    plan_or_directory: str | None,
    repo: str | None,
    ref: str,
    subdir: str,
    target: BackendChoice,
    source_name: str,
    allow_empty: bool,
    force_conflicts: bool,
    webhook: str | None,
) -> None:
    """Apply a saved plan (a plan file), or plan and apply a directory or --repo revision."""
    backend = target.open()
    if plan_or_directory and Path(plan_or_directory).is_file():
        result = encode.loads(Path(plan_or_directory).read_text())
    else:
        revision = _revision(plan_or_directory, repo, ref, subdir)
        validated = pipeline.check(revision)
        if not validated.ok:
            _report(validated, revision, "human")
            backend.record_error(
                source_name, f"revision {revision.short} is invalid: {len(validated.errors)} error(s)"
            )
            sys.exit(1)
        result = pipeline.plan(revision, validated, backend, source_name)
        render.plan_text(out, result)
    err.print(
        f"Applying {sum(c.manifest is not None for c in result.changes)} objects "
        f"and {result.counts[Action.DELETE]} deletes to {backend.describe()}..."
    )
    from gitmesh.rollout import driver

    prepared = driver.prepare(result, backend, time.time())
    try:
        pipeline.apply(prepared.plan, backend, allow_empty=allow_empty, force_conflicts=force_conflicts)
    except GitmeshError as e:
        backend.record_error(result.source, str(e))
        raise
    driver.begin(prepared, backend, driver.webhook(webhook))
    out.print(f"[bold green]Applied.[/] {result.summary()}")
    for ref, note in prepared.notes.items():
        out.print(f"Rollout of {ref.namespace}/{ref.name}: {note}", soft_wrap=True)


@cli.command()
@_backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_reports_errors
def status(target: BackendChoice, output: str) -> None:
    """Each source's applied revision, object counts and last error; the sidecars gitmesh run serves."""
    backend = target.open()
    statuses = backend.status()
    records = {r.source: r for r in backend.records()}
    suspended = backend.suspended()
    # Sources the controller knows but that never applied anything (their first fetch failed, ...).
    known = {s.source for s in statuses}
    statuses += [SourceStatus(name) for name in sorted((records.keys() | suspended) - known)]
    if output == "json":
        rows = [
            {
                "source": s.source,
                "revision": s.revision,
                "ref": s.ref,
                "applied_at": s.applied_at.isoformat() if s.applied_at else None,
                "objects": dict(s.objects),
                "last_error": s.last_error or None,
                "last_error_at": s.last_error_at.isoformat() if s.last_error_at else None,
                "suspended": s.source in suspended,
                "controller": records[s.source].to_json() if s.source in records else None,
            }
            for s in statuses
        ]
        sidecars = backend.xds_report()
        click.echo(
            json.dumps({"backend": backend.describe(), "sources": rows, "sidecars": sidecars}, indent=2)
        )
        return
    if not statuses:
        out.print(f"Nothing applied yet to {backend.describe()}.")
    for s in statuses:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(s.objects.items()))
        applied = s.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.applied_at else "never"
        out.print(Text(f"source {s.source}", style="bold"))
        out.print(f"  revision    {s.revision or '-'} ({s.ref or '-'})", soft_wrap=True)
        out.print(f"  applied     {applied}")
        out.print(
            f"  objects     {sum(s.objects.values())}" + (f": {counts}" if counts else ""), soft_wrap=True
        )
        if s.last_error:
            when = s.last_error_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.last_error_at else ""
            out.print(
                Text("  last error  ", style="bold red") + Text(f"{s.last_error} ({when})"), soft_wrap=True
            )
        else:
            out.print("  last error  none")
        if s.source in suspended:
            out.print(Text("  suspended   yes (gitmesh resume to reconcile again)", style="yellow"))
        if s.source in records:
            _print_conditions(records[s.source])
    _print_xds(backend)


class Duration(click.ParamType):
    """A length of time: a number and a unit, s, m, h or d (``90s``, ``24h``)."""

    name = "duration"
    _UNITS: ClassVar[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime.timedelta):
            return value
        text = str(value).strip()
        if len(text) < 2 or text[-1] not in self._UNITS or not text[:-1].isdigit() or int(text[:-1]) == 0:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 24h or 7d", param, ctx)
        return datetime.timedelta(seconds=int(text[:-1]) * self._UNITS[text[-1]])


def _print_conditions(record: SourceRecord) -> None:
    """The controller's view: Flux-style conditions and the last attempted revision."""
    out.print(f"  attempted   {record.last_attempted or '-'}")
    for c in record.conditions:
        when = c.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        style = "green" if c.status == (c.type == "Ready") else "red"
        line = Text(f"  {c.type:<11} ") + Text(str(c.status), style=style) + Text(f" {c.reason}: {c.message}")
        out.print(line + Text(f" (since {when})", style="dim"), soft_wrap=True)


@cli.command("run")
@_backend_options
@click.option("--xds-address", default="127.0.0.1:15010", show_default=True, help="Where to serve ADS.")
@click.option(
    "--cert-lifetime",
    type=Duration(),
    default="24h",
    show_default=True,
    help="How long workload certificates are valid; each is renewed at two thirds of it.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="The controller's sources and HTTP port, from a YAML file (see the README).",
)
@click.option("--repo", help="One source: its repository (a path, file://, http(s):// URL).")
@click.option("--branch", help="Follow this branch (default: the repository's default branch).")
@click.option("--tag", help="Follow this tag.")
@click.option("--semver", help="Follow the highest tag in this version range, e.g. '>=1.2,<2'.")
@click.option("--commit", help="Stay on this commit.")
@click.option("--path", "subdir", default="", help="Directory of the manifests inside the repository.")
@click.option("--interval", default="1m", show_default=True, help="How often to fetch.")
@click.option("--drift-interval", default="10m", show_default=True, help="How often to look for drift.")
@click.option("--allow-empty", is_flag=True, help="Let a revision delete everything the source applied.")
@click.option("--username", help="HTTP(S) basic authentication: the user (with --password-file).")
@click.option("--password-file", type=click.Path(dir_okay=False), help="HTTP(S) basic authentication.")
@click.option(
    "--ca-file", type=click.Path(dir_okay=False), help="HTTPS: the CA certificates to trust for the remote."
)
@click.option("--ssh-key-file", type=click.Path(dir_okay=False), help="SSH: the deploy key.")
@click.option(
    "--known-hosts-file",
    type=click.Path(dir_okay=False),
    help="SSH: the host keys the server may present (needed with --ssh-key-file).",
)
@_source_name_option
@click.option(
    "--http-address",
    help=f"The controller's HTTP port (default with sources: {DEFAULT_HTTP_ADDRESS}; without: none).",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The secret webhooks are signed with (HMAC-SHA256); without it, webhooks are refused.",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--rollout-prometheus",
    help="Rollouts read their metrics from this Prometheus (URL); default: the connected sidecars' stats.",
)
@click.option("--rollout-webhook", help="POST every rollout phase change to this URL (JSON).")
@click.option(
    "--rollout-push-reverts",
    help="After a failed rollout, push a revert commit to branch gitmesh/rollback/<sha> of this repository.",
)
@_reports_errors
def run_command(
    target: BackendChoice,
    xds_address: str,
    cert_lifetime: datetime.timedelta,
    config_file: str | None,
    repo: str | None,
    branch: str | None,
    tag: str | None,
    semver: str | None,
    commit: str | None,
    subdir: str,
    interval: str,
    drift_interval: str,
    allow_empty: bool,
    username: str | None,
    password_file: str | None,
    ca_file: str | None,
    ssh_key_file: str | None,
    known_hosts_file: str | None,
    source_name: str,
    http_address: str | None,
    webhook_secret_file: str | None,
    log_format: str,
    rollout_prometheus: str | None,
    rollout_webhook: str | None,
    rollout_push_reverts: str | None,
) -> None:
    """Keep the backend in step with Git (with sources) and serve its mesh to Envoy sidecars over ADS."""
    from gitmesh.controller import logs
    from gitmesh.controller.run import Settings, run

    refs = {k: v for k, v in {"branch": branch, "tag": tag, "semver": semver, "commit": commit}.items() if v}
    if bool(username) != bool(password_file):
        raise click.UsageError("--username and --password-file go together")
    if bool(ssh_key_file) != bool(known_hosts_file):
        raise click.UsageError("--ssh-key-file needs --known-hosts-file (and the other way round)")
    if config_file and (repo or refs or subdir or allow_empty or username or ca_file or ssh_key_file):
        raise click.UsageError("give --config or --repo (with its options), not both")
    if config_file and (rollout_prometheus or rollout_webhook or rollout_push_reverts):
        raise click.UsageError("with --config, rollout settings go in its rollouts section")
    if refs and not repo:
        raise click.UsageError(f"--{next(iter(refs))} needs --repo")
    if len(refs) > 1:
        raise click.UsageError(f"give one of --branch, --tag, --semver, --commit; not {', '.join(refs)}")
    if config_file:
        config = load_config(Path(config_file))
    else:
        auth = BasicAuth(username, Path(password_file)) if username and password_file else None
        ssh = (
            SshAuth(Path(ssh_key_file), Path(known_hosts_file)) if ssh_key_file and known_hosts_file else None
        )
        extra = {"auth": auth, "ssh": ssh, "ca_file": Path(ca_file) if ca_file else None}
        sources = (
            (_one_source(repo, refs, subdir, interval, drift_interval, allow_empty, source_name, extra),)
            if repo
            else ()
        )
        config = ControllerConfig(
            sources, rollouts=RolloutSettings(rollout_prometheus, rollout_webhook, rollout_push_reverts)
        )
    secret_file = webhook_secret_file or config.webhook_secret_file
    settings = Settings(
        sources=config.sources,
        xds_address=xds_address,
        http_address=http_address or config.http_address,
        webhook_secret=Path(secret_file).read_bytes().strip() if secret_file else None,
        cert_lifetime=cert_lifetime,
        rollouts=config.rollouts,
    )
    logs.setup(log_format)
    backend = target.open()
    if isinstance(backend, LocalBackend):
        mesh: Any = backend
        store = backend.path

        def open_backend() -> ClusterBackend:
            return LocalBackend(store)
    else:
        mesh = _cluster_watch(backend)

        def open_backend() -> ClusterBackend:
            return backend  # the Kubernetes client is safe to share between threads

    names = ", ".join(s.name for s in settings.sources) or "none"
    err.print(f"Serving ADS on {xds_address} from {backend.describe()}; sources: {names}")
    run(settings, open_backend, mesh, backend.ca_keeper())


def _one_source(
    repo: str,
    refs: dict[str, str],
    subdir: str,
    interval: str,
    drift_interval: str,
    allow_empty: bool,
    name: str,
    extra: dict[str, Any],
) -> Source:
    ((kind, value),) = (refs or {"branch": ""}).items()
    try:
        return Source(
            name=name,
            url=repo,
            ref=Ref(RefKind(kind), value),
            path=subdir,
            interval=duration(interval),
            drift_interval=duration(drift_interval),
            allow_empty=allow_empty,
            **extra,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _cluster_watch(backend: ClusterBackend) -> Any:
    from gitmesh.cluster.kube import KubeBackend
    from gitmesh.cluster.watch import MeshWatch

    assert isinstance(backend, KubeBackend)
    return MeshWatch(backend).start()


@cli.command("reconcile")
@click.argument("source")
@click.option(
    "--controller",
    default=f"http://{DEFAULT_HTTP_ADDRESS}",
    show_default=True,
    help="The running controller's HTTP port.",
)
@_reports_errors
def reconcile_command(source: str, controller: str) -> None:
    """Ask the running controller (gitmesh run) to fetch and reconcile SOURCE now."""
    import urllib.error
    import urllib.request

    url = f"{controller.rstrip('/')}/sources/{source}/reconcile"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10):
            pass
    except urllib.error.HTTPError as e:
        with e:
            detail = json.loads(e.read() or b"{}").get("error", e.reason)
        raise GitmeshError(f"the controller at {controller} refused: {detail}") from None
    except OSError as e:
        raise GitmeshError(f"cannot reach the controller at {controller}: {e}") from None
    out.print(f"Reconciling {source} now; see gitmesh history {source}.")


@cli.command("suspend")
@click.argument("source")
@_backend_options
@_reports_errors
def suspend_command(source: str, target: BackendChoice) -> None:
    """Stop reconciling SOURCE (marked in the backend: the controller leaves it alone until resumed)."""
    target.open().set_suspended(source, True)
    out.print(f"Suspended {source}.")


@cli.command("resume")
@click.argument("source")
@_backend_options
@_reports_errors
def resume_command(source: str, target: BackendChoice) -> None:
    """Reconcile SOURCE again (from its next fetch; gitmesh reconcile SOURCE for now)."""
    target.open().set_suspended(source, False)
    out.print(f"Resumed {source}.")


@cli.command("history")
@click.argument("source", required=False)
@_backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_reports_errors
def history_command(source: str | None, target: BackendChoice, output: str) -> None:
    """The last reconciles of each source (or of SOURCE), newest first."""
    records = [r for r in target.open().records() if source is None or r.source == source]
    if source is not None and not records:
        raise GitmeshError(f"no reconciles recorded for source {source!r}")
    if output == "json":
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    for record in records:
        out.print(Text(f"source {record.source}", style="bold"))
        for r in record.history:
            when = r.started_at.strftime("%Y-%m-%d %H:%M:%S")
            style = "red" if r.result in ("invalid", "refused", "failed") else ""
            out.print(
                Text(f"  {when}  {r.revision[:12]}  {r.result:<9} {r.duration:6.2f}s  ")
                + Text(r.summary, style=style)
                + Text(f"  ({r.ref}; {r.trigger})", style="dim"),
                soft_wrap=True,
            )


@cli.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=".gitmesh/demo",
    show_default=True,
    help="Where the demo keeps its Git repo, store and logs.",
)
@click.option(
    "--live",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Then keep running this many seconds, applying each new commit of the demo repo.",
)
@_reports_errors
def demo_command(workdir: str, live: int) -> None:
    """Run the bookstore mesh for real: apps, Envoy sidecars, gitmesh run; send traffic, show what happens."""
    from gitmesh import demo

    n = len(demo.APPS)
    out.print(f"Starting the bookstore mesh in {workdir}: {n} apps, {n} Envoy sidecars, gitmesh run ...")
    with demo.running(Path(workdir)) as d:
        out.print(f"  gitmesh run serves ADS on 127.0.0.1:{d.xds_port}; the demo repo is {d.repo}\n")
        _show_shares(d, d.applied)
        spiffe, expires = d.sidecars["bookbuyer"].certificate()
        out.print(f"bookbuyer  -> bookstore over mTLS         as {spiffe} (certificate expires {expires})")
        status, _ = d.buy("/admin")
        out.print(f"bookbuyer  -> bookstore /admin          {status}  (no HTTPRouteGroup match allows it)")
        status, _ = d.buy(caller="bookthief")
        out.print(
            f"bookthief  -> bookstore /books-bought   {status}  (refused: no TrafficTarget names bookthief)"
        )
        shares = "  ".join(f"{name} {share:.0%}" for name, share in d.tcp_shares().items())
        out.print(f"bookwarehouse -> mysql (TCP, 200 connections)  {shares}")
        answer = d.query("bookthief") or "closed, nothing received"
        out.print(
            f"bookthief  -> mysql (TCP)              {answer}  (refused: only bookwarehouse has a TCPRoute)"
        )
        if not live:
            out.print("\nRun `gitmesh demo --live 600` to keep it running and change the split by a commit.")
            return
        split = d.repo / demo.MESH_PATH / "bookstore" / "split.yaml"
        out.print(f"\nLive for {live}s: edit the weights in {split}, commit, and watch. Ctrl-C stops.")
        deadline = time.monotonic() + live
        with contextlib.suppress(KeyboardInterrupt):
            while time.monotonic() < deadline:
                time.sleep(1)
                if d.head() != d.applied:
                    try:
                        d.applied = d.apply()
                    except (ValueError, GitmeshError) as e:
                        out.print(Text(f"not applied: {e}", style="red"))
                        d.applied = d.head()
                        continue
                    time.sleep(1)  # the sidecars take the new config within a second
                    _show_shares(d, d.applied)


def _print_xds(backend: ClusterBackend) -> None:
    """What gitmesh run last reported of its sidecars: how many are connected, what they rejected."""
    report = backend.xds_report()
    if not report:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["at"]))
    out.print(Text("sidecars", style="bold"))
    out.print(f"  connected   {len(report['proxies'])} (as of {when})")
    for nack in report["nacks"]:
        at = time.strftime("%H:%M:%S", time.gmtime(nack["at"]))
        what = f"{nack['type']} version {nack['version']} by {nack['proxy']} at {at}"
        out.print(Text(f"  rejected    {what}: {nack['message']}", style="red"))
    for identity, expires in sorted(report.get("certificates", {}).items()):
        out.print(f"  certificate {identity} expires {expires}")


def _show_shares(d: Any, revision: str) -> None:
    shares = "  ".join(f"{name} {share:.0%}" for name, share in d.shares().items())
    out.print(Text(f"bookbuyer  -> bookstore (200 requests)  {shares}   (revision {revision[:12]})"))


@cli.command("bootstrap")
@click.option("--namespace", required=True, help="The sidecar's identity: its ServiceAccount's namespace.")
@click.option("--service-account", required=True, help="The sidecar's identity: its ServiceAccount.")
@click.option("--service", required=True, help="The Service whose endpoint this sidecar fronts.")
@click.option("--service-namespace", help="The Service's namespace (default: --namespace).")
@click.option("--app-port", type=click.IntRange(1, 65535), required=True, help="Where the app listens.")
@click.option(
    "--outbound-port",
    type=click.IntRange(1, 65535),
    default=15001,
    show_default=True,
    help="Where the app sends its outbound calls (http://127.0.0.1:PORT, Host: the service).",
)
@click.option(
    "--inbound-port",
    type=click.IntRange(1, 65535),
    default=15006,
    show_default=True,
    help="Where the mesh reaches the app: the service's endpoints point here.",
)
@click.option(
    "--inbound-address",
    default="127.0.0.1",
    show_default=True,
    help="The address the inbound listener binds: the one the service's endpoints name.",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="SERVICE[.NAMESPACE]:PORT=LOCAL_PORT",
    help="A TCP service port the app calls at 127.0.0.1:LOCAL_PORT (TCP has no Host). Repeatable.",
)
@click.option("--admin-port", type=click.IntRange(0, 65535), default=15000, show_default=True)
@click.option("--xds-address", default="127.0.0.1:15010", show_default=True, help="gitmesh's ADS server.")
@click.option("--delta", is_flag=True, help="Use incremental (delta) xDS instead of state of the world.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write it to this file, readable by its owner only (it holds a private key), not to stdout.",
)
@_backend_options
@_reports_errors
def bootstrap_command(
    target: BackendChoice,
    output: str | None,
    namespace: str,
    service_account: str,
    service: str,
    service_namespace: str | None,
    app_port: int,
    outbound_port: int,
    inbound_port: int,
    inbound_address: str,
    upstreams: tuple[str, ...],
    admin_port: int,
    xds_address: str,
    delta: bool,
) -> None:
    """Print the Envoy bootstrap for one sidecar (run it with: envoy -c FILE).

    It holds a certificate for the identity, from the mesh CA of the store or cluster, with which
    the sidecar proves who it is to gitmesh's xDS server."""
    from gitmesh.certs import store
    from gitmesh.mesh.state import ServiceRef
    from gitmesh.smi import Identity
    from gitmesh.xds.bootstrap import bootstrap, client_tls, parse_upstream
    from gitmesh.xds.translate import Proxy

    host, _, port = xds_address.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT", param_hint="--xds-address")
    try:
        parsed = tuple(sorted(parse_upstream(u, service_namespace or namespace) for u in upstreams))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--upstream") from e
    proxy = Proxy(
        Identity(namespace, service_account),
        ServiceRef(service_namespace or namespace, service),
        app_port,
        outbound_port,
        inbound_port,
        parsed,
        inbound_address,
    )
    now = datetime.datetime.now(datetime.UTC)
    ca_state = store.load_or_create(target.open().ca_keeper(), now)
    tls = client_tls(ca_state, proxy.identity, now)
    config = bootstrap(proxy, xds_host=host, xds_port=int(port), admin_port=admin_port, delta=delta, tls=tls)
    text = json.dumps(config, indent=2)
    if output:
        write_private(Path(output), text + "\n")
    else:
        click.echo(text)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


@cli.group()
def certs() -> None:
    """The mesh certificate authority: its roots, and rotating them."""


def _ca_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--ca-cert",
        type=click.Path(exists=True, dir_okay=False),
        help="A CA certificate of your own (PEM): a root, or an intermediate and its chain to the root.",
    )(f)
    return click.option(
        "--ca-key", type=click.Path(exists=True, dir_okay=False), help="Its private key (PEM)."
    )(f)


def _authority(ca_cert: str | None, ca_key: str | None, trust_domain: str) -> Any:
    from gitmesh.certs import ca

    if bool(ca_cert) != bool(ca_key):
        raise click.UsageError("give --ca-cert and --ca-key together")
    if ca_cert and ca_key:
        try:
            return ca.authority_from_pem(Path(ca_cert).read_text(), Path(ca_key).read_text())
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--ca-cert/--ca-key") from e
    return ca.new_root(trust_domain, datetime.datetime.now(datetime.UTC))


@certs.command("init")
@_backend_options
@_ca_options
@click.option("--trust-domain", default="cluster.local", show_default=True, help="The SPIFFE trust domain.")
@_reports_errors
def certs_init(target: BackendChoice, ca_cert: str | None, ca_key: str | None, trust_domain: str) -> None:
    """Make the mesh CA, from a new root or your own CA (gitmesh run makes one on first use)."""
    from gitmesh.certs.authority import CaState

    keeper = target.open().ca_keeper()
    if keeper.load() is not None:
        raise click.UsageError("the mesh CA exists already; `gitmesh certs rotate` replaces its root")
    keeper.save(CaState(trust_domain, (_authority(ca_cert, ca_key, trust_domain),)))
    out.print(f"Mesh CA for trust domain {trust_domain} kept in {keeper}")


@certs.command("rotate")
@_backend_options
@_ca_options
@click.option(
    "--wait",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seconds to wait for gitmesh run to finish the rotation (0: start it and return).",
)
@_reports_errors
def certs_rotate(target: BackendChoice, ca_cert: str | None, ca_key: str | None, wait: int) -> None:
    """Replace the root without downtime: gitmesh run adds the new root to every sidecar's bundle,
    then reissues every certificate from it, then retires the old root, each step once every
    connected sidecar has taken the previous one."""
    from gitmesh.certs import authority

    keeper = target.open().ca_keeper()
    current = keeper.load()
    if current is None:
        raise click.UsageError("there is no mesh CA yet: `gitmesh certs init` or `gitmesh run` makes one")
    new = _authority(ca_cert, ca_key, current.trust_domain)
    try:
        keeper.save(authority.begin_rotation(current, new))
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    out.print("Rotation started: the new root is trusted alongside the old one.")
    deadline = time.monotonic() + wait
    announced = False
    while wait and time.monotonic() < deadline:
        phase = getattr(keeper.load(), "phase", None)
        if phase == authority.ISSUING and not announced:
            out.print("Every sidecar trusts the new root: reissuing every certificate from it.")
            announced = True
        if phase == authority.STEADY:
            out.print("Rotation done: the old root is retired.")
            return
        time.sleep(0.5)
    if wait:
        raise GitmeshError(f"the rotation is still under way after {wait}s (is gitmesh run running?)")


@cli.group()
def install() -> None:
    """Install what gitmesh needs in a cluster."""


@install.command("crds")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The cluster's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@click.option("--print", "print_only", is_flag=True, help="Print the CRDs as YAML instead of applying them.")
@_reports_errors
def install_crds(kubeconfig: str | None, context: str | None, print_only: bool) -> None:
    """The SMI CustomResourceDefinitions, rendered from gitmesh's schemas (one served version each)."""
    rendered = crds.render_all()
    if print_only:
        click.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)
        return
    from gitmesh.cluster import kube

    backend = kube.KubeBackend.connect(kubeconfig, context)
    for name in backend.install_crds(rendered):
        out.print(f"{name} established")


@cli.command()
@click.argument("code")
def explain(code: str) -> None:
    """Explain a diagnostic code, e.g. gitmesh explain GM104; gitmesh explain rollout: the rollout policy."""
    if code.lower() == "rollout":
        from gitmesh.plan.policy import DOC

        click.echo(DOC)
        return
    entry = CODES.get(code.upper())
    if entry is None:
        raise click.BadParameter(f"unknown code; known: {', '.join(CODES)}", param_hint="CODE")
    out.print(f"[bold]{entry.code}[/] ({entry.severity.value}): {entry.title}\n\n{entry.explanation}")


def _rollout_notes(result: Any, backend: ClusterBackend) -> list[str]:
    """The rollouts under way, and what this plan does to each (for gitmesh plan)."""
    from gitmesh.rollout import driver, render

    prepared = driver.prepare(result, backend, time.time())
    rollouts = driver.load(backend)
    lines = []
    for split, r in sorted(rollouts.items()):
        if r.phase.active:
            lines.append(
                f"Rollout under way: {split} {r.phase}, step {r.step + 1} of {len(r.steps)}, "
                f"now {render.weights_text(r.weights)} toward {render.weights_text(r.target)}"
            )
    lines += [
        f"Rollout of {ref.namespace}/{ref.name}: this revision {note}" for ref, note in prepared.notes.items()
    ]
    return (["", "[bold]Rollouts[/]", *(f"  {line}" for line in lines)]) if lines else []


@cli.group()
def rollout() -> None:
    """Progressive traffic shifts: see them, move them by hand, run them (gitmesh explain rollout)."""


@rollout.command("status")
@click.argument("split", required=False)
@_backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_reports_errors
def rollout_status(split: str | None, target: BackendChoice, output: str) -> None:
    """Every rollout (or SPLIT's, as name or namespace/name): weights, step, last analysis and why."""
    from gitmesh.rollout import driver, render

    rollouts = {
        k: r for k, r in sorted(driver.load(target.open()).items()) if split in (None, k, k.partition("/")[2])
    }
    if output == "json":
        click.echo(json.dumps({k: driver.event(r) for k, r in rollouts.items()}, indent=2))
        return
    if not rollouts:
        out.print("No rollouts." if split is None else f"No rollout of {split}.")
    for r in rollouts.values():
        for line in render.status_lines(r, time.time()):
            out.print(Text(line), soft_wrap=True)


def _rollout_action(action: str, doc: str) -> None:
    @rollout.command(action, help=doc)
    @click.argument("split")
    @_backend_options
    @_webhook_option
    @_reports_errors
    def command(split: str, target: BackendChoice, webhook: str | None) -> None:
        from gitmesh.rollout import driver

        r = driver.act(target.open(), split, action, driver.webhook(webhook), time.time())
        out.print(f"{r.split}: {r.phase} ({r.reason})")


_rollout_action("promote", "Put SPLIT's target weights in place now, whatever the checks say.")
_rollout_action("abort", "Put SPLIT back on its stable weights; the target waits for a new commit or retry.")
_rollout_action("retry", "Walk a failed or aborted SPLIT toward its target again, from the start.")


@rollout.command("run")
@_backend_options
@click.option("--envoy-admin", multiple=True, help="A sidecar's admin HOST:PORT to read stats from (repeat).")
@click.option("--prometheus", help="Read metrics from this Prometheus (URL) instead of the sidecars.")
@_webhook_option
@click.option(
    "--push-reverts",
    metavar="REPO",
    help="After a failed rollout, push a commit restoring the stable weights to branch "
    "gitmesh/rollback/<sha> of this Git repo (path or URL), for a person to review.",
)
@click.option(
    "--tick", type=float, default=1.0, show_default=True, help="Seconds between looks at the rollouts."
)
@_reports_errors
def rollout_run(
    target: BackendChoice,
    envoy_admin: tuple[str, ...],
    prometheus: str | None,
    webhook: str | None,
    push_reverts: str | None,
    tick: float,
) -> None:
    """Walk every rollout under way: analyse each step when due, write the weights, roll back on failure."""
    import logging

    from gitmesh.rollout import driver
    from gitmesh.rollout.envoy_stats import EnvoyStats
    from gitmesh.rollout.metrics import MetricsSource
    from gitmesh.rollout.prometheus import Prometheus

    if bool(envoy_admin) == bool(prometheus):
        raise click.UsageError("give the sidecars' --envoy-admin addresses or --prometheus, one of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics: MetricsSource = Prometheus(prometheus) if prometheus else EnvoyStats(lambda: envoy_admin)
    runner = driver.Runner(target.open(), metrics, driver.webhook(webhook), push_reverts)
    err.print("Running rollouts; Ctrl-C stops (their state stays in the backend).")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                runner.tick(time.time())
            except GitmeshError as e:  # the backend may be back next time; the state is kept there
                logging.getLogger("gitmesh.rollout").warning("tick failed: %s", e)
            time.sleep(tick)


@rollout.command("timeline")
@click.argument("split")
@_backend_options
@click.option(
    "-o", "--out", "out_file", type=click.Path(dir_okay=False), required=True, help="The SVG to write."
)
@_reports_errors
def rollout_timeline(split: str, target: BackendChoice, out_file: str) -> None:
    """Draw SPLIT's rollout (weights and success rate over time) as an SVG."""
    from gitmesh.rollout import driver, render

    found = [r for k, r in driver.load(target.open()).items() if split in (k, k.partition("/")[2])]
    if len(found) != 1:
        raise click.BadParameter(f"no single rollout of {split!r}", param_hint="SPLIT")
    Path(out_file).write_text(render.timeline_svg(found[0]))
    out.print(f"Wrote {out_file}")


def main() -> None:
    cli()
