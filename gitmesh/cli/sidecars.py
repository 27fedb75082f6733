"""Commands for sidecars: bootstrap one, or run the whole bookstore demo."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    examples,
    out,
    reports_errors,
)
from gitmesh.errors import GitmeshError


@cli.command("demo")
@examples("gitmesh demo", "gitmesh demo --live 600")
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
@reports_errors
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
        out.print(f"bookthief  -> bookstore /books-bought   {status}  (no TrafficTarget names it: refused)")
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


def _show_shares(d: Any, revision: str) -> None:
    shares = "  ".join(f"{name} {share:.0%}" for name, share in d.shares().items())
    out.print(Text(f"bookbuyer  -> bookstore (200 requests)  {shares}   (revision {revision[:12]})"))


@cli.command("bootstrap")
@examples(
    "gitmesh bootstrap --namespace bookstore --service-account bookstore --service bookstore "
    "--app-port 8080 --out envoy.yaml",
)
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
    "--out",
    "output",
    type=click.Path(dir_okay=False),
    help="Write it to this file, readable by its owner only (it holds a private key), not to stdout.",
)
@backend_options
@reports_errors
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
    from gitmesh.mesh.state import Identity, ServiceRef
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
    ca_state = store.load_or_create(target.open().state.ca, now)
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
