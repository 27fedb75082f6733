"""The ``gitmesh`` command group, and the options and helpers its commands share.

Commands parse options, call one pipeline function, and print.

Exit codes: 0 success; 1 an error (invalid revision, refused apply, ...);
2 a usage error, or, with ``plan --detailed-exitcode``, a plan with changes.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from gitmesh.embedded import DEFAULT_PATH
from gitmesh.errors import GitmeshError
from gitmesh.plan import render
from gitmesh.plan.validate import Validated
from gitmesh.revision.layout import NAMESPACE_NAME
from gitmesh.settings import Settings, open_settings
from gitmesh.sync.git import Revision, open_repo, read_directory, read_revision

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where the manifests come from: a directory argument, or --repo/--ref/--path."""
    f = click.argument("directory", required=False, type=click.Path(file_okay=False))(f)
    f = click.option("--repo", help="Git repository: a local path or a URL.")(f)
    f = click.option("--ref", default="HEAD", show_default=True, help="Branch, tag or commit to read.")(f)
    f = click.option(
        "--path", "subdir", default="", help="Directory of the manifests inside the repository."
    )(f)
    return namespace_option(f)


def namespace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-n",
        "--namespace",
        default="",
        callback=_namespace_name,
        help="The namespace of objects that name none (as kubectl -n, or Flux's targetNamespace).",
    )(f)


def _namespace_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value and not re.match(NAMESPACE_NAME, value):
        raise click.BadParameter(f"{value!r} is not a namespace name (lowercase letters, digits, '-')")
    return value


@dataclass(frozen=True)
class BackendChoice:
    """Where objects live: a cluster when one is named (or gitmesh runs in one), else the embedded store."""

    store: str
    kubeconfig: str | None
    context: str | None

    def open(self) -> Settings:
        return open_settings(self.store, self.kubeconfig, self.context)


def backend_options(f: Callable[..., Any]) -> Callable[..., Any]:
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


def source_name_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--source",
        "source_name",
        default="default",
        show_default=True,
        help="Name of this source: it owns what it applies, and prunes only that.",
    )(f)


def webhook_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--webhook",
        envvar="GITMESH_ROLLOUT_WEBHOOK",
        help="POST a JSON notice of every rollout phase change here.",
    )(f)


def envoy_admin_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--envoy-admin",
        multiple=True,
        metavar="HOST:PORT[=NAMESPACE/SERVICE]",
        help="A sidecar's admin interface, and the service it serves (repeat); "
        "default: the sidecars gitmesh run last reported.",
    )(f)


def sidecars_of(
    settings: Settings, envoy_admin: tuple[str, ...], *, required: bool = True
) -> Callable[[], dict[str, str]]:
    """The sidecars to read (admin address -> service): those given, else those in the backend's
    last xDS report, asked again at every reading, since sidecars come and go. ``required``: none
    now is a usage error."""
    given = dict(a.partition("=")[::2] for a in envoy_admin)

    def sidecars() -> dict[str, str]:
        return given or dict((settings.state.xds.latest() or {}).get("sidecars", {}))

    if required and not sidecars():
        raise click.UsageError(
            "no sidecars to read: give --envoy-admin, or run gitmesh run with this backend"
        )
    return sidecars


def reports_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """The one place a GitmeshError becomes a message and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except GitmeshError as e:
            err.print(Text("error: ", style="bold red") + Text(str(e)))
            sys.exit(1)

    return wrapper


def revision_of(directory: str | None, repo: str | None, ref: str, subdir: str, namespace: str) -> Revision:
    if directory and repo:
        raise click.UsageError("give a DIRECTORY or --repo, not both")
    if repo:
        return read_revision(open_repo(repo), ref, subdir, namespace)
    return read_directory(directory or ".", namespace)


def report(validated: Validated, revision: Revision, output: str, console: Console = err) -> None:
    diagnostics = validated.diagnostics
    if output == "json":
        click.echo(render.diagnostics_json(diagnostics))
    elif output == "github":
        if diagnostics:
            click.echo(render.diagnostics_github(diagnostics))
    elif diagnostics:
        render.diagnostics_text(console, diagnostics, revision.texts)


@click.group(context_settings={"auto_envvar_prefix": "GITMESH", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gitmesh")
def cli() -> None:
    """GitOps for an SMI service mesh: validate, plan and apply mesh manifests from Git."""
