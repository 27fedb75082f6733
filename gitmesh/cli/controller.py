"""The controller's commands: run, reconcile, suspend, resume, history."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from gitmesh import durations
from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    err,
    out,
    reports_errors,
    source_name_option,
)
from gitmesh.controller.config import (
    DEFAULT_HTTP_ADDRESS,
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


@cli.command("run")
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
@source_name_option
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
@click.option(
    "--rollout-prometheus",
    help="Rollouts read their metrics from this Prometheus (URL); default: the connected sidecars' stats.",
)
@click.option("--rollout-webhook", help="POST every rollout phase change to this URL (JSON).")
@click.option(
    "--rollout-push-reverts",
    help="After a failed rollout, push a revert commit to branch gitmesh/rollback/<sha> of this repository.",
)
@click.option(
    "--leader-election",
    is_flag=True,
    help="Of the replicas, only the holder of the Lease gitmesh-system/gitmesh-leader reconciles and "
    "walks rollouts (all serve ADS); named $POD_NAME, else the host name. In a pod ($POD_NAME), "
    "the pod is labelled gitmesh.io/leader=true while it leads. Kubernetes only.",
)
@reports_errors
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
    allow_short_webhook_secret: bool,
    http_token_file: str | None,
    log_format: str,
    rollout_prometheus: str | None,
    rollout_webhook: str | None,
    rollout_push_reverts: str | None,
    leader_election: bool,
    inject_address: str | None,
    inject_proxy_image: str,
    inject_init_image: str,
) -> None:
    """Keep the cluster in step with Git (with sources) and serve its mesh to Envoy sidecars over ADS."""
    from gitmesh.controller import logs
    from gitmesh.controller.run import Options, run

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
        inject=_injection(inject_address, inject_proxy_image, inject_init_image, xds_address),
    )
    logs.setup(log_format)
    settings = target.open()
    try:
        elector = _elector(settings) if leader_election else None
    except click.UsageError:
        settings.close()
        raise
    names = ", ".join(s.name for s in options.sources) or "none"
    err.print(f"Serving ADS on {xds_address} from {settings.objects.describe()}; sources: {names}")
    run(options, settings, elector)


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
    return Injection((host, int(port)), Config(proxy_image, init_image, xds_host, xds_port))


def _elector(settings: Settings) -> Elector:
    """The Lease in the cluster the settings' object port writes to (its client is safe to share
    between threads), held as $POD_NAME (and its pod labelled so), else as the host name."""
    import os
    import socket

    from gitmesh.cluster.kube import KubeObjects
    from gitmesh.controller.leader import LEASE, Elector, KubeLeases, PodLabel
    from gitmesh.state.kube import SYSTEM_NAMESPACE

    if not isinstance(settings.objects, KubeObjects):
        raise click.UsageError("--leader-election needs a cluster (--kubeconfig, or running in one)")
    client = settings.objects.client
    pod = os.environ.get("POD_NAME")
    leases = KubeLeases(client, SYSTEM_NAMESPACE, LEASE)
    if pod is None:
        return Elector(leases, socket.gethostname())
    return Elector(leases, pod, announce=PodLabel(client, SYSTEM_NAMESPACE, pod))


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
            interval=durations.seconds(interval),
            drift_interval=durations.seconds(drift_interval),
            allow_empty=allow_empty,
            **extra,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@cli.command("reconcile")
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
@reports_errors
def reconcile_command(source: str, controller: str, token_file: str | None) -> None:
    """Ask the running controller (gitmesh run) to fetch and reconcile SOURCE now."""
    import urllib.error
    import urllib.request

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
    out.print(f"Reconciling {source} now; see gitmesh history {source}.")


@cli.command("suspend")
@click.argument("source")
@backend_options
@reports_errors
def suspend_command(source: str, target: BackendChoice) -> None:
    """Stop reconciling SOURCE (marked in the backend: the controller leaves it alone until resumed)."""
    target.open().state.records.set_suspended(source, True)
    out.print(f"Suspended {source}.")


@cli.command("resume")
@click.argument("source")
@backend_options
@reports_errors
def resume_command(source: str, target: BackendChoice) -> None:
    """Reconcile SOURCE again (from its next fetch; gitmesh reconcile SOURCE for now)."""
    target.open().state.records.set_suspended(source, False)
    out.print(f"Resumed {source}.")


@cli.command("history")
@click.argument("source", required=False)
@backend_options
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@reports_errors
def history_command(source: str | None, target: BackendChoice, output: str) -> None:
    """The last reconciles of each source (or of SOURCE), newest first."""
    records = [r for r in target.open().state.records.all() if source is None or r.source == source]
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
