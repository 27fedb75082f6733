"""Sidecar injection from the command line: ``gitmesh inject`` (manifests in, injected manifests
out, for teams who commit them) and ``gitmesh capture`` (what the injected init container runs)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import click
import jsonpatch
import yaml

from gitmesh.cli.base import cli, examples, reports_errors
from gitmesh.errors import ConfigError
from gitmesh.inject import capture, patch

DEFAULT_XDS = "gitmesh.gitmesh-system.svc.cluster.local:15010"


def _address(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT")
    return host, int(port)


@cli.command("inject")
@examples(
    "gitmesh inject -f deploy/bookstore.yaml > deploy/bookstore.injected.yaml",
    "kubectl get deploy bookstore -o yaml | gitmesh inject -f - | kubectl apply -f -",
)
@click.option(
    "-f",
    "--filename",
    required=True,
    type=click.File("r"),
    help="Manifests to inject (any multi-document YAML); - reads standard input.",
)
@click.option("--proxy-image", default="localhost/envoy:1", show_default=True, help="The sidecar image.")
@click.option(
    "--init-image",
    default="localhost/gitmesh:dev",
    show_default=True,
    help="The image whose `gitmesh capture` sets the pod's iptables rules.",
)
@click.option(
    "--xds-address",
    default=DEFAULT_XDS,
    show_default=True,
    callback=_address,
    help="Where the sidecars reach gitmesh's xDS port (HOST:PORT).",
)
@reports_errors
def inject_command(filename: Any, proxy_image: str, init_image: str, xds_address: tuple[str, int]) -> None:
    """Print manifests with the mesh's sidecar added to every pod they make.

    Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs get the patch the
    admission webhook applies; other objects, pods annotated gitmesh.dev/inject=disabled and pods
    already injected are printed as they are. Comments are not kept.
    """
    config = patch.Config(proxy_image, init_image, *xds_address)
    name = getattr(filename, "name", "-")
    try:
        documents = list(yaml.load_all(filename, Loader=yaml.CSafeLoader))
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not YAML: {e}") from None
    injected = []
    for number, document in enumerate(documents, 1):
        try:
            injected.append(_inject(document, config))
        except ValueError as e:
            raise ConfigError(f"{name}: document {number}: {e}") from None
    click.echo(yaml.safe_dump_all([d for d in injected if d is not None], sort_keys=False), nl=False)


def _inject(document: Any, config: patch.Config) -> Any:
    if not isinstance(document, dict):
        return document
    if document.get("kind") == "List":
        return {**document, "items": [_inject(item, config) for item in document.get("items") or []]}
    ops = patch.object_patch(document, config)
    return jsonpatch.apply_patch(document, ops) if ops else document


@cli.command("capture")
@examples("gitmesh capture --proxy-uid 1337 --inbound-port 15006 --outbound-port 15001 --dry-run")
@click.option("--proxy-uid", type=int, required=True, help="The proxy UID (not captured).")
@click.option("--inbound-port", type=int, required=True, help="The proxy's inbound listener.")
@click.option("--outbound-port", type=int, required=True, help="The proxy's outbound listener.")
@click.option("--exclude-inbound-ports", default="", help="Comma-separated ports received directly.")
@click.option("--exclude-outbound-ports", default="", help="Comma-separated ports sent directly.")
@click.option("--exclude-outbound-cidrs", default="", help="Comma-separated CIDRs sent directly.")
@click.option("--dry-run", is_flag=True, help="Print the rules instead of setting them.")
@reports_errors
def capture_command(
    proxy_uid: int,
    inbound_port: int,
    outbound_port: int,
    exclude_inbound_ports: str,
    exclude_outbound_ports: str,
    exclude_outbound_cidrs: str,
    dry_run: bool,
) -> None:
    """Send the pod's TCP through its sidecar (iptables NAT); run by the injected init container."""
    try:
        rules = capture.rules(
            capture.Capture(
                proxy_uid=proxy_uid,
                inbound_port=inbound_port,
                outbound_port=outbound_port,
                exclude_inbound_ports=capture.parse_ports(exclude_inbound_ports),
                exclude_outbound_ports=capture.parse_ports(exclude_outbound_ports),
                exclude_outbound_cidrs=capture.parse_cidrs(exclude_outbound_cidrs),
            )
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if dry_run:
        click.echo(rules, nl=False)
        return
    done = subprocess.run(
        ["iptables-restore", "--noflush"], input=rules, text=True, capture_output=True, check=False
    )
    if done.returncode:
        raise ConfigError(f"iptables-restore failed: {done.stderr.strip()}")
    sys.stdout.write(rules)
