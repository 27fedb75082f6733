"""The controller's commands: run, reconcile, suspend, resume, history."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from gitmesh import durations
from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    confirm_write,
    emit,
    err,
    examples,
    known_sources,
    out,
    output_option,
    reports_errors,
    snake_keys,
    source_name_option,
    target_header,
    with_options,
    yes_option,
)
from gitmesh.controller.config import (
    DEFAULT_HTTP_ADDRESS,
    CertificatesFile,
    ControllerConfig,
    RolloutSettings,
    load_config,
    read_http_token,
    read_webhook_secret,
)
from gitmesh.errors import GitmeshError
from gitmesh.sync.source import BasicAuth, Ref, RefKind, Source, SshAuth

if TYPE_CHECKING:
    from gitmesh.controller.inject import Injection
    from gitmesh.controller.leader import Elector
    from gitmesh.controller.run import Options
    from gitmesh.fleet.view import FleetView
    from gitmesh.settings import Settings


class Duration(click.ParamType[datetime.timedelta]):
    """A length of time, as ``durations.seconds`` reads it (``90s``, ``24h``, ``7d``)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime.timedelta:
        if isinstance(value, datetime.timedelta):
            return value
        try:
            return datetime.timedelta(seconds=durations.seconds(str(value)))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def git_source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """One Git source's options (``--repo`` and what goes with it), handed to the command as one
    ``source``: None without ``--repo``. Its usage errors are found here."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
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
        **kwargs: Any,
    ) -> Any:
        refs = {
            k: v for k, v in {"branch": branch, "tag": tag, "semver": semver, "commit": commit}.items() if v
        }
        if bool(username) != bool(password_file):
            raise click.UsageError("--username and --password-file go together")
        if bool(ssh_key_file) != bool(known_hosts_file):
            raise click.UsageError("--ssh-key-file needs --known-hosts-file (and the other way round)")
        given = {"--path": subdir, "--allow-empty": allow_empty, "--username": username, "--ca-file": ca_file}
        given |= {"--ssh-key-file": ssh_key_file, **{f"--{k}": v for k, v in refs.items()}}
        if not repo:
            if missing := [name for name, value in given.items() if value]:
                raise click.UsageError(f"{missing[0]} needs --repo")
            return f(*args, source=None, **kwargs)
        if len(refs) > 1:
            raise click.UsageError(f"give one of --branch, --tag, --semver, --commit; not {', '.join(refs)}")
        ((kind, value),) = (refs or {"branch": ""}).items()
        try:
            source = Source(
                name=source_name,
                url=repo,
                ref=Ref(RefKind(kind), value),
                path=subdir,
                interval=durations.seconds(interval),
                drift_interval=durations.seconds(drift_interval),
                allow_empty=allow_empty,
                auth=BasicAuth(username, Path(password_file)) if username and password_file else None,
                ssh=SshAuth(Path(ssh_key_file), Path(known_hosts_file))
                if ssh_key_file and known_hosts_file
                else None,
                ca_file=Path(ca_file) if ca_file else None,
            )
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        return f(*args, source=source, **kwargs)

    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--repo", help="One source: its repository (a path, file://, http(s):// URL)."),
        click.option("--branch", help="Follow this branch (default: the repository's default branch)."),
        click.option("--tag", help="Follow this tag."),
        click.option("--semver", help="Follow the highest tag in this version range, e.g. '>=1.2,<2'."),
        click.option("--commit", help="Stay on this commit."),
        click.option(
            "--path", "subdir", default="", help="Directory of the manifests inside the repository."
        ),
        click.option("--interval", default="1m", show_default=True, help="How often to fetch."),
        click.option(
            "--drift-interval", default="10m", show_default=True, help="How often to look for drift."
        ),
        click.option(
            "--allow-empty", is_flag=True, help="Let a revision delete everything the source applied."
        ),
        click.option("--username", help="HTTP(S) basic authentication: the user (with --password-file)."),
        click.option(
            "--password-file", type=click.Path(dir_okay=False), help="HTTP(S) basic authentication."
        ),
        click.option(
            "--ca-file",
            type=click.Path(dir_okay=False),
            help="HTTPS: the CA certificates to trust for the remote.",
        ),
        click.option("--ssh-key-file", type=click.Path(dir_okay=False), help="SSH: the deploy key."),
        click.option(
            "--known-hosts-file",
            type=click.Path(dir_okay=False),
            help="SSH: the host keys the server may present (needed with --ssh-key-file).",
        ),
        source_name_option,
    ]
    return with_options(wrapper, options)


def rollout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where rollouts read metrics and report, handed to the command as one ``rollouts``: None when
    no option is given."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        rollout_prometheus: str | None,
        rollout_webhook: str | None,
        rollout_push_reverts: str | None,
        **kwargs: Any,
    ) -> Any:
        given = rollout_prometheus or rollout_webhook or rollout_push_reverts
        rollouts = (
            RolloutSettings(rollout_prometheus, rollout_webhook, rollout_push_reverts) if given else None
        )
        return f(*args, rollouts=rollouts, **kwargs)

    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--rollout-prometheus",
            help="Rollouts read their metrics from this Prometheus (URL); "
            "default: the connected sidecars' stats.",
        ),
        click.option("--rollout-webhook", help="POST every rollout phase change to this URL (JSON)."),
        click.option(
            "--rollout-push-reverts",
            help="After a failed rollout, push a revert commit to branch gitmesh/rollback/<sha> of this "
            "repository.",
        ),
    ]
    return with_options(wrapper, options)


@cli.command("run")
@examples(
    "gitmesh run --config gitmesh.yaml",
    "gitmesh run --repo https://git.example.com/mesh.git --path mesh --context prod",
)
@backend_options
@click.option("--xds-address", default="127.0.0.1:15010", show_default=True, help="Where to serve ADS.")
@click.option(
    "--inject-address",
    help="Serve the sidecar-injection webhook here (HOST:PORT, HTTPS with a mesh CA certificate).",
)
@click.option(
    "--inject-proxy-image", default="localhost/envoy:1", show_default=True, help="Injected sidecar."
)
@click.option(
    "--inject-init-image", default="localhost/gitmesh:dev", show_default=True, help="Injected capture step."
)
@click.option(
    "--cert-lifetime",
    type=Duration(),
    help="How long workload certificates are valid; each is renewed at two thirds of it. "
    "[default: the MeshConfig's spec.certificate.serviceCertValidityDuration, else 24h]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="The controller's sources and HTTP port, from a YAML file (see the README).",
)
@git_source_options
@click.option(
    "--http-address",
    help=f"The controller's HTTP port (default with sources: {DEFAULT_HTTP_ADDRESS}; without: none).",
)
@click.option(
    "--webhook-secret-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The secret webhooks are signed with (HMAC-SHA256); without it, webhooks are refused.",
)
@click.option(
    "--allow-short-webhook-secret",
    is_flag=True,
    help="Accept a webhook secret shorter than 16 bytes (one you cannot change).",
)
@click.option(
    "--http-token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The bearer token a client must send to ask for a reconcile; without it, that is refused.",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@rollout_options
@click.option(
    "--leader-election",
    is_flag=True,
    help="Of the replicas, only the holder of the Lease gitmesh-system/gitmesh-leader reconciles and "
    "walks rollouts (all serve ADS); named $POD_NAME, else the host name. In a pod ($POD_NAME), "
    "the pod is labelled gitmesh.io/leader=true while it leads. Kubernetes only.",
)
@click.option(
    "--fleet-hub",
    type=click.Path(dir_okay=False, exists=True),
    help="A member of a fleet: the hub's kubeconfig (the agent's credentials). The hub assigns the "
    "sources, and this cluster's compliance is reported to it.",
)
@click.option("--fleet-cluster", help="A member of a fleet: this cluster's name in the hub.")
@click.option(
    "--fleet-report-interval",
    type=Duration(),
    default="30s",
    show_default=True,
    help="How often a fleet member reports its compliance to the hub.",
)
@click.option(
    "--fleet-view",
    type=click.Path(dir_okay=False, exists=True),
    help="Show a fleet's compliance on /metrics (gitmesh_fleet_cluster_compliance) and /console: a "
    "kubeconfig for its hub that may list the FleetClusters (an agent's may not).",
)
@reports_errors
def run_command(
    target: BackendChoice,
    xds_address: str,
    cert_lifetime: datetime.timedelta | None,
    config_file: str | None,
    source: Source | None,
    http_address: str | None,
    webhook_secret_file: str | None,
    allow_short_webhook_secret: bool,
    http_token_file: str | None,
    log_format: str,
    rollouts: RolloutSettings | None,
    leader_election: bool,
    inject_address: str | None,
    inject_proxy_image: str,
    inject_init_image: str,
    fleet_hub: str | None,
    fleet_cluster: str | None,
    fleet_report_interval: datetime.timedelta,
    fleet_view: str | None,
) -> None:
    """Keep the cluster in step with Git (with sources) and serve its mesh to Envoy sidecars over ADS."""
    from gitmesh.controller import logs
    from gitmesh.controller.run import Options, run

    if config_file and source:
        raise click.UsageError("give --config or --repo (with its options), not both")
    if bool(fleet_hub) != bool(fleet_cluster):
        raise click.UsageError("--fleet-hub and --fleet-cluster go together")
    if fleet_hub and (config_file or source):
        raise click.UsageError("with --fleet-hub the hub assigns the sources: no --config or --repo")
    if config_file and rollouts:
        raise click.UsageError("with --config, rollout settings go in its rollouts section")
    if config_file:
        config = load_config(Path(config_file))
    else:
        config = ControllerConfig((source,) if source else (), rollouts=rollouts or RolloutSettings())
    secret_file = webhook_secret_file or config.webhook_secret_file
    token_file = http_token_file or config.http_token_file
    allow_short = allow_short_webhook_secret or config.allow_short_webhook_secret
    options = Options(
        sources=config.sources,
        xds_address=xds_address,
        http_address=http_address or config.http_address,
        webhook_secret=read_webhook_secret(Path(secret_file), allow_short) if secret_file else None,
        http_token=read_http_token(Path(token_file)) if token_file else None,
        cert_lifetime=cert_lifetime,
        rollouts=config.rollouts,
        certificates=CertificatesFile(Path(config_file), config.certificates)
        if config_file
        else lambda: None,
        inject=_injection(inject_address, inject_proxy_image, inject_init_image, xds_address),
    )
    logs.setup(log_format)
    view = _fleet_view(fleet_view) if fleet_view else None
    if view:
        options = dataclasses.replace(options, fleet=view)
    settings = target.open()
    try:
        if view:
            view.start()
            err.print(f"Showing the fleet of {view.hub.client.server}")
        try:
            elector = _elector(settings) if leader_election else None
        except click.UsageError:
            settings.close()
            raise
        if fleet_hub and fleet_cluster:
            _run_member(options, settings, elector, fleet_hub, fleet_cluster, fleet_report_interval)
            return
        names = ", ".join(s.name for s in options.sources) or "none"
        err.print(f"Serving ADS on {xds_address} from {settings.objects.describe()}; sources: {names}")
        run(options, settings, elector)
    finally:
        if view:
            view.stop()


def _fleet_view(hub_kubeconfig: str) -> FleetView:
    from gitmesh.fleet.hub import Hub
    from gitmesh.fleet.view import FleetView
    from gitmesh.kube.client import Client

    return FleetView(Hub(Client.connect(hub_kubeconfig)))


def _run_member(
    options: Options,
    settings: Settings,
    elector: Elector | None,
    hub_kubeconfig: str,
    cluster: str,
    interval: datetime.timedelta,
) -> None:
    """``gitmesh run`` as a fleet member: the hub's assignment as the sources, reported on as it goes.
    Exits 3 when the hub assigns other configurations, to be started again on them."""
    import threading

    from gitmesh.controller.run import run
    from gitmesh.fleet import agent
    from gitmesh.fleet.hub import Hub
    from gitmesh.kube.client import Client

    hub = Hub(Client.connect(hub_kubeconfig))
    sources = agent.first_assignment(hub, cluster, threading.Event())
    if sources is None:
        return
    reporter = agent.Reporter(hub, cluster, sources, settings, interval.total_seconds())
    reporter.watch = agent.AssignmentWatch(hub, cluster, reporter.wake)
    reporter.watch.start()
    options = dataclasses.replace(options, sources=sources, attach=reporter.attach)
    names = ", ".join(f"{s.name} ({s.path or '/'})" for s in sources) or "none"
    err.print(
        f"Serving ADS on {options.xds_address} from {settings.objects.describe()}; "
        f"fleet member {cluster} of {hub.client.server}; sources: {names}"
    )
    reporter.start()
    try:
        run(options, settings, elector)
    finally:
        reporter.stop()
    if reporter.changed:
        sys.exit(3)
    reporter.report_once()  # the state it stopped in


def _injection(address: str | None, proxy_image: str, init_image: str, xds_address: str) -> Injection | None:
    from gitmesh.controller.inject import Injection
    from gitmesh.inject.patch import Config
    from gitmesh.install.manifests import NAME, NAMESPACE

    if not address:
        return None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"{address!r}: expected HOST:PORT", param_hint="--inject-address")
    xds_port = int(xds_address.rpartition(":")[2])
    # Injected sidecars reach ADS through the Service that selects every replica.
    xds_host = f"{NAME}.{NAMESPACE}.svc.cluster.local"
    # Injected pods trade their tokens for certificates on the webhook's port, through the same Service.
    config = Config(proxy_image, init_image, xds_host, xds_port, identity_port=int(port))
    return Injection((host, int(port)), config)


def _elector(settings: Settings) -> Elector:
    """The Lease in the settings' cluster (its client is safe to share between threads), held as
    $POD_NAME (and its pod labelled so), else as the host name."""
    import os

    from gitmesh.controller.leader import LEASE, Elector, KubeLeases, PodLabel, replica_name
    from gitmesh.state.kube import SYSTEM_NAMESPACE

    client = settings.cluster
    if client is None:
        raise click.UsageError("--leader-election needs a cluster (--kubeconfig, or running in one)")
    leases = KubeLeases(client, SYSTEM_NAMESPACE, LEASE)
    name = replica_name()
    if "POD_NAME" not in os.environ:  # not in a pod: none to label
        return Elector(leases, name)
    return Elector(leases, name, announce=PodLabel(client, SYSTEM_NAMESPACE, name))


@cli.command("reconcile")
@examples(
    "gitmesh reconcile default --token-file token",
    "gitmesh reconcile default --token-file token --wait -o json",
)
@click.argument("source")
@click.option(
    "--controller",
    default=f"http://{DEFAULT_HTTP_ADDRESS}",
    show_default=True,
    help="The running controller's HTTP port.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The controller's bearer token (its --http-token-file).",
)
@click.option("--wait", is_flag=True, help="Wait for the reconcile and print its revision and result.")
@click.option(
    "--timeout", type=Duration(), default="5m", show_default=True, help="How long --wait waits at most."
)
@output_option("json", "yaml")
@reports_errors
def reconcile_command(
    source: str,
    controller: str,
    token_file: str | None,
    wait: bool,
    timeout: datetime.timedelta,
    output: str,
) -> None:
    """Ask the running controller (gitmesh run) to fetch and reconcile SOURCE now; it refuses a source
    it does not know."""
    import urllib.error
    import urllib.request

    before = _last_reconcile(controller, source) if wait else None
    url = f"{controller.rstrip('/')}/sources/{source}/reconcile"
    token = read_http_token(Path(token_file)).decode("latin-1") if token_file else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, method="POST", data=b"", headers=headers)
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as e:
        with e:
            detail = json.loads(e.read() or b"{}").get("error", e.reason)
        raise GitmeshError(f"the controller at {controller} refused: {detail}") from None
    except OSError as e:
        raise GitmeshError(f"cannot reach the controller at {controller}: {e}") from None
    if not wait:
        if output != "text":
            emit("reconcile", {"source": source, "triggered": True}, output)
            return
        out.print(f"Reconciling {source} now; see gitmesh history {source}.")
        return
    err.print(f"Reconciling {source}; waiting for the result...")
    done = _next_reconcile(controller, source, before, timeout.total_seconds())
    if output != "text":
        emit("reconcile", {"source": source, "triggered": True, "reconcile": snake_keys(done)}, output)
    else:
        failed = done["result"] in FAILED_RESULTS
        out.print(
            Text(f"{done['result']} ", style="red" if failed else "green")
            + Text(f"{done['revision'][:12]} ({done['ref']}): {done['summary']}"),
            soft_wrap=True,
        )
    sys.exit(1 if done["result"] in FAILED_RESULTS else 0)


FAILED_RESULTS = ("invalid", "refused", "failed")


def _controller_status(controller: str) -> list[dict[str, Any]]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{controller.rstrip('/')}/status", timeout=10) as answer:
            sources: list[dict[str, Any]] = json.loads(answer.read())["sources"]
            return sources
    except (OSError, ValueError, KeyError) as e:
        raise GitmeshError(f"cannot read the status of the controller at {controller}: {e}") from None


def _record_of(controller: str, source: str) -> dict[str, Any]:
    return next((r for r in _controller_status(controller) if r["source"] == source), {})


def _marks(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """What moves when a reconcile ends: the newest history entry, or (for one that found nothing
    new, which the history leaves out) the Reconciling condition's last transition."""
    newest = record["history"][0]["startedAt"] if record.get("history") else None
    busy = next((c for c in record.get("conditions", ()) if c["type"] == "Reconciling"), None)
    return newest, busy["lastTransitionTime"] if busy else None


def _last_reconcile(controller: str, source: str) -> tuple[str | None, str | None]:
    return _marks(_record_of(controller, source))


def _next_reconcile(
    controller: str, source: str, before: tuple[str | None, str | None] | None, timeout: float
) -> dict[str, Any]:
    """The reconcile of SOURCE that ended after ``before``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _record_of(controller, source)
        busy = next((c for c in record.get("conditions", ()) if c["type"] == "Reconciling"), None)
        marks = _marks(record)
        if marks != before and not (busy and busy["status"] == "True"):
            if marks[0] != (before or (None, None))[0]:
                newest: dict[str, Any] = record["history"][0]
                return newest
            ready: dict[str, Any] = next((c for c in record["conditions"] if c["type"] == "Ready"), {})
            return {  # nothing new to apply: the controller records no history entry for it
                "revision": record.get("lastAppliedRevision") or "",
                "ref": record["history"][0]["ref"] if record.get("history") else "",
                "startedAt": marks[1],
                "duration": 0.0,
                "result": "unchanged",
                "summary": ready.get("message", "No changes"),
                "trigger": "manual",
            }
        time.sleep(0.5)
    raise GitmeshError(f"no reconcile of {source} was recorded within {timeout:.0f}s")


@cli.command("suspend")
@examples("gitmesh suspend default", "gitmesh suspend shop --context prod")
@click.argument("source")
@backend_options
@yes_option
@reports_errors
def suspend_command(source: str, target: BackendChoice, yes: bool) -> None:
    """Stop reconciling SOURCE (marked in the backend: the controller leaves it alone until resumed)."""
    settings = target.open(read_only=True)
    target_header(settings)
    _known(settings, source)
    confirm_write(settings, f"Suspend {source}", yes)
    settings.state.records.set_suspended(source, True)
    out.print(f"Suspended {source}.")


@cli.command("resume")
@examples("gitmesh resume default", "gitmesh resume shop --context prod")
@click.argument("source")
@backend_options
@yes_option
@reports_errors
def resume_command(source: str, target: BackendChoice, yes: bool) -> None:
    """Reconcile SOURCE again (from its next fetch; gitmesh reconcile SOURCE for now)."""
    settings = target.open(read_only=True)
    target_header(settings)
    _known(settings, source)
    confirm_write(settings, f"Resume {source}", yes)
    settings.state.records.set_suspended(source, False)
    out.print(f"Resumed {source}.")


def _known(settings: Settings, source: str) -> None:
    known = known_sources(settings)
    if source not in known:
        listed = ", ".join(sorted(known)) or "none yet"
        raise GitmeshError(f"no source {source!r} in {settings.objects.describe()} (known: {listed})")


@cli.command("history")
@examples("gitmesh history", "gitmesh history default -o json")
@click.argument("source", required=False)
@backend_options
@output_option("json", "yaml")
@reports_errors
def history_command(source: str | None, target: BackendChoice, output: str) -> None:
    """The last reconciles and applies of each source (or of SOURCE), newest first (read from the
    target; writes nothing)."""
    settings = target.open(read_only=True)
    records = [r for r in settings.state.records.all() if source is None or r.source == source]
    if output != "text":
        rows = [snake_keys(r.to_json()) for r in records]
        emit("history", {"target": settings.objects.describe(), "sources": rows}, output)
        return
    target_header(settings)
    if not records:
        out.print("No reconciles recorded" + (f" for source {source}." if source else "."))
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
