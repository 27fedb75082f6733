"""gitmesh in a cluster: install (the controller as a Deployment, with what it needs) and uninstall."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import yaml

from gitmesh.cli.base import cli, cluster_header, confirm_at, examples, out, reports_errors, yes_option
from gitmesh.controller.config import load_config
from gitmesh.errors import ConfigError
from gitmesh.install.manifests import (
    NAMESPACE,
    PASSWORD_KEY,
    WEBHOOK_KEY,
    InstallOptions,
    config_file,
    objects,
)
from gitmesh.plan import crds


@cli.group(invoke_without_command=True)
@examples(
    "gitmesh install --repo https://git.example.com/mesh.git --path mesh --dry-run",
    "gitmesh install crds --print",
)
@click.option("--image", help="The gitmesh image the controller runs.")
@click.option("--repo", help="The source's Git repository (a URL the pods can reach).")
@click.option("--branch", default="", help="Follow this branch (default: the repository's default branch).")
@click.option("--path", "subdir", default="", help="Directory of the manifests inside the repository.")
@click.option("--source", default="default", show_default=True, help="The source's name.")
@click.option("--interval", default="1m", show_default=True, help="How often to fetch.")
@click.option("-n", "--namespace", default="", help="The namespace of objects that name none.")
@click.option("--git-username", default="", help="HTTP(S) basic authentication: the user.")
@click.option(
    "--git-secret",
    default="",
    help=f"HTTP(S) basic authentication: a Secret in {NAMESPACE} holding the password as {PASSWORD_KEY!r}.",
)
@click.option(
    "--webhook-secret",
    default="",
    help=f"A Secret in {NAMESPACE} holding the webhook secret as {WEBHOOK_KEY!r}; without it, no webhooks.",
)
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--image-pull-policy",
    type=click.Choice(["Always", "IfNotPresent", "Never"]),
    default="IfNotPresent",
    show_default=True,
)
@click.option(
    "--proxy-image",
    default="",
    help="Inject this Envoy image as the sidecar of pods in namespaces labelled gitmesh.dev/inject=enabled "
    "(the controller serves the webhook); without it, no injection.",
)
@click.option("--dry-run", is_flag=True, help="Print the objects instead of applying them.")
@click.option("-o", "--output", type=click.Choice(["yaml"]), default="yaml", show_default=True)
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The cluster's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@yes_option
@click.pass_context
@reports_errors
def install(
    ctx: click.Context,
    image: str | None,
    repo: str | None,
    branch: str,
    subdir: str,
    source: str,
    interval: str,
    namespace: str,
    git_username: str,
    git_secret: str,
    webhook_secret: str,
    replicas: int,
    image_pull_policy: str,
    proxy_image: str,
    dry_run: bool,
    output: str,
    kubeconfig: str | None,
    context: str | None,
    yes: bool,
) -> None:
    """Install gitmesh in a cluster: its CRDs, and the controller (a Deployment in gitmesh-system,
    leader-elected, serving xDS from every replica) with its RBAC, Service and configuration.
    Run it again with new options, or a new image, to change or upgrade the install."""
    if ctx.invoked_subcommand is not None:
        return
    if not image or not repo:
        raise click.UsageError("gitmesh install needs --image and --repo")
    try:
        options = InstallOptions(
            image=image,
            repo=repo,
            branch=branch,
            path=subdir,
            source=source,
            interval=interval,
            namespace=namespace,
            git_username=git_username,
            git_secret=git_secret,
            webhook_secret=webhook_secret,
            replicas=replicas,
            image_pull_policy=image_pull_policy,
            proxy_image=proxy_image,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _check_config(options)
    rendered = objects(options)
    if dry_run:
        click.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)
        return
    from gitmesh.install import cluster
    from gitmesh.kube.client import Client

    client = Client.connect(kubeconfig, context)
    cluster_header(client)
    confirm_at(client.describe(), f"Install gitmesh ({replicas} replicas of {image})", yes)
    for line in cluster.apply(client, rendered):
        out.print(f"applied {line}")
    cluster.wait_rolled_out(client)
    out.print(f"gitmesh is running in {NAMESPACE} ({replicas} replicas ready)")


def _check_config(options: InstallOptions) -> None:
    """Read the configuration file as the controller will: a mistake is refused here, not by the
    controller in its pods, over and over."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "config.yaml")
        path.write_text(config_file(options))
        try:
            load_config(path)
        except ConfigError as e:
            raise ConfigError(str(e).replace(str(path), "the configuration these options make")) from None


@cli.command("uninstall")
@examples("gitmesh uninstall", "gitmesh uninstall --context staging")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The cluster's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@yes_option
@reports_errors
def uninstall(kubeconfig: str | None, context: str | None, yes: bool) -> None:
    """Remove what gitmesh install made; a CRD with objects, or the namespace while it holds the
    controller's state or your Secrets, stays (and is named)."""
    from gitmesh.install import cluster
    from gitmesh.kube.client import Client

    client = Client.connect(kubeconfig, context)
    cluster_header(client)
    confirm_at(client.describe(), "Uninstall gitmesh", yes, preposition="from")
    deleted, kept = cluster.uninstall(client)
    for line in deleted:
        out.print(f"deleted {line}")
    for line in kept:
        out.print(f"kept {line}")


@install.command("fleet-hub")
@examples(
    "gitmesh install fleet-hub --kubeconfig hub.kubeconfig",
    "gitmesh install fleet-hub --dry-run -o yaml",
)
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The hub's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@click.option("--dry-run", is_flag=True, help="Print the objects instead of applying them.")
@click.option("-o", "--output", type=click.Choice(["yaml"]), default="yaml", show_default=True)
@yes_option
@reports_errors
def install_fleet_hub(
    kubeconfig: str | None, context: str | None, dry_run: bool, output: str, yes: bool
) -> None:
    """Make a cluster a fleet hub: the FleetCluster and FleetConfiguration CRDs (a member's compliance
    is its FleetCluster's status) and the gitmesh-fleet namespace. Members join with gitmesh fleet join."""
    from gitmesh.fleet.hub import MANAGER, hub_objects

    rendered = hub_objects()
    if dry_run:
        click.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)
        return
    from gitmesh.cluster.kube import KubeObjects
    from gitmesh.kube.client import NAMESPACE as NAMESPACES
    from gitmesh.kube.client import Client

    client = Client.connect(kubeconfig, context)
    cluster_header(client)
    confirm_at(client.describe(), "Make a fleet hub", yes, preposition="of")
    crds = [o for o in rendered if o["kind"] == "CustomResourceDefinition"]
    for name in KubeObjects(client).install_crds(crds):
        out.print(f"{name} established")
    for obj in rendered:
        if obj["kind"] == "Namespace":
            client.apply(NAMESPACES.path(name=obj["metadata"]["name"]), obj, MANAGER, force=True)
            out.print(f"applied Namespace/{obj['metadata']['name']}")


@install.command("crds")
@examples("gitmesh install crds", "gitmesh install crds --print > crds.yaml")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="The cluster's kubeconfig (default: $KUBECONFIG).")
@click.option("--context", help="The kubeconfig context to use (default: its current one).")
@click.option("--print", "print_only", is_flag=True, help="Print the CRDs as YAML instead of applying them.")
@reports_errors
def install_crds(kubeconfig: str | None, context: str | None, print_only: bool) -> None:
    """The CustomResourceDefinitions gitmesh reads: its own from its schemas, and Gateway API's HTTPRoute."""
    rendered = crds.render_all()
    if print_only:
        click.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)
        return
    from gitmesh.cluster import kube

    for name in kube.KubeObjects.connect(kubeconfig, context).install_crds(rendered):
        out.print(f"{name} established")
