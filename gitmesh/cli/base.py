"""The ``gitmesh`` command group, and the options and helpers its commands share.

Commands parse options, call one pipeline function, and print.

Exit codes: 0 success; 1 an error (invalid revision, refused apply, ...);
2 a usage error, or, with ``plan --detailed-exitcode``, a plan with changes.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.console import Console
from rich.text import Text

from gitmesh.errors import GitmeshError

if TYPE_CHECKING:  # the rest is imported where used: a command loads only what it needs
    from gitmesh.kube.client import Client
    from gitmesh.plan.validate import Validated
    from gitmesh.settings import Settings
    from gitmesh.sync.git import Revision

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
    from gitmesh.revision.layout import NAMESPACE_NAME

    if value and not re.match(NAMESPACE_NAME, value):
        raise click.BadParameter(f"{value!r} is not a namespace name (lowercase letters, digits, '-')")
    return value


# The version of every command's JSON output (``gitmesh/cli/schemas/``); bumped on any breaking change.
FORMAT_VERSION = 1


def default_store() -> Path:
    """Per repository when run inside a Git work tree, else per user: never "wherever you stand"."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
        )
    except OSError:  # no git on the PATH
        found = None
    if found is not None and found.returncode == 0 and found.stdout.strip():
        return Path(found.stdout.strip()) / ".gitmesh" / "store.db"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "gitmesh" / "store.db"


@dataclass(frozen=True)
class BackendChoice:
    """Where objects live: a cluster when one is named (or gitmesh runs in one), else the embedded store."""

    store: str | None
    kubeconfig: str | None
    context: str | None

    def open(self, *, read_only: bool = False) -> Settings:
        """``read_only``: a missing store reads as empty and is not created."""
        from gitmesh.settings import open_settings

        return open_settings(
            self.store or default_store(), self.kubeconfig, self.context, create=not read_only
        )


def target_header(settings: Settings) -> None:
    """Every command that reads or writes objects says where, first: a local store or a cluster."""
    err.print(Text("target: ", style="bold") + Text(settings.objects.describe()))


def cluster_header(client: Client) -> None:
    """``target_header`` for commands that work on a cluster itself (install, uninstall)."""
    err.print(Text("target: ", style="bold") + Text(client.describe()))


def confirm_write(settings: Settings, what: str, yes: bool) -> None:
    """Writes to a cluster ask first on a terminal, as Terraform does; never in CI or from a pipe."""
    confirm_at(settings.objects.describe(), what, yes)


def confirm_at(where: str, what: str, yes: bool, preposition: str = "to") -> None:
    """``confirm_write`` for a target named by ``where`` (``kube:<context> at <server>`` asks)."""
    if yes or not where.startswith("kube:") or os.environ.get("CI") or not sys.stdin.isatty():
        return
    if not click.confirm(f"{what} {preposition} {where}?", default=False, err=True):
        err.print("Nothing was changed.")
        sys.exit(1)


def yes_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-y", "--yes", is_flag=True, help="Do not ask before writing to a cluster.")(f)


def output_option(*formats: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The one output flag: ``-o/--output``, text first and the default."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", *formats]),
        default="text",
        show_default=True,
        help="How to print the result (json and yaml: see docs/cli-json.md).",
    )


def emit(kind: str, data: Mapping[str, Any], output: str) -> None:
    """A command's result as JSON or YAML: snake_case keys, versioned by ``format_version``."""
    doc = {"format_version": FORMAT_VERSION, "kind": kind, **data}
    if output == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
    else:
        click.echo(json.dumps(doc, indent=2))


def snake_keys(value: Any) -> Any:
    """A record's camelCase JSON (as Flux writes conditions) with the CLI's snake_case keys."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def known_sources(settings: Settings) -> set[str]:
    """Every source the target knows: applied, recorded by a controller, or suspended."""
    state = settings.state
    return (
        {s.source for s in state.inventories.status()}
        | {r.source for r in state.records.all()}
        | state.records.suspended()
    )


def examples(*lines: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An Examples section at the end of a command's --help (placed under ``@cli.command``, or
    above it for a command given its help as ``help=``)."""

    # \b keeps click from re-wrapping the examples into one paragraph.
    section = "\n\n\b\nExamples:\n" + "\n".join(f"  {x}" for x in lines)

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        # Dedented first: click dedents the whole, and the section's lines start at the margin.
        if isinstance(f, click.Command):  # one made with help=...
            f.help = inspect.cleandoc(f.help or "") + section
        else:
            f.__doc__ = inspect.cleandoc(f.__doc__ or "") + section
        return f

    return add


def with_options(
    command: Callable[..., Any], options: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]]
) -> Callable[..., Any]:
    """``command`` with ``options`` applied as if stacked as decorators in this order (so ``--help``
    lists them in it)."""
    for option in reversed(options):
        command = option(command)
    return command


def backend_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--store / --kubeconfig / --context, handed to the command as one ``target``."""

    @functools.wraps(f)
    def wrapper(*args: Any, store: str, kubeconfig: str | None, context: str | None, **kwargs: Any) -> Any:
        return f(*args, target=BackendChoice(store, kubeconfig, context), **kwargs)

    wrapper = click.option(
        "--store",
        type=click.Path(dir_okay=False),
        help="The embedded store, used when no cluster is given "
        "(default: <git top>/.gitmesh/store.db, else $XDG_STATE_HOME/gitmesh/store.db).",
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
    from gitmesh.sync.git import open_repo, read_directory, read_revision

    if directory and repo:
        raise click.UsageError("give a DIRECTORY or --repo, not both")
    if repo:
        return read_revision(open_repo(repo), ref, subdir, namespace)
    return read_directory(directory or ".", namespace)


def report(validated: Validated, revision: Revision, output: str, console: Console = err) -> None:
    from gitmesh.plan import render

    diagnostics = validated.diagnostics
    if output in ("json", "yaml"):
        emit("diagnostics", json.loads(render.diagnostics_json(diagnostics)), output)
    elif output == "github":
        if diagnostics:
            click.echo(render.diagnostics_github(diagnostics))
    elif diagnostics:
        render.diagnostics_text(console, diagnostics, revision.texts)


class Group(click.Group):
    """A command group that suggests the nearest command for a misspelt one."""

    group_class: type[click.Group] | type[type] = type  # subgroups (rollout, certs, install) suggest too

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            near = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            if near:
                ctx.fail(f"No such command {name!r}. Did you mean {near[0]!r}?")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's first sentence, whole: click would cut it at the terminal's width."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Commands(Group):
    """The root group: each command's module is imported when that command runs (or its help is
    asked for), so ``gitmesh fleet status`` loads the fleet's code and not the xDS server's, the
    installer's or the sidecars'. ``COMMANDS`` names each command's module and its summary, which
    ``gitmesh --help`` lists without importing any (a unit test holds them equal to the
    commands')."""

    group_class: type[click.Group] | type[type] = (
        Group  # its subgroups (fleet, rollout, ...) hold their commands themselves
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])  # its module adds it with @cli.command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# Each command of ``gitmesh``: the module that defines it, and its summary (the first sentence of
# its help) for ``gitmesh --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    name: (f"gitmesh.cli.{module}", summary)
    for name, module, summary in [
        (
            "apply",
            "manifests",
            "Apply a saved plan (a plan file), or plan and apply a directory or --repo revision.",
        ),
        ("bootstrap", "sidecars", "Print the Envoy bootstrap for one sidecar (run it with: envoy -c FILE)."),
        (
            "capture",
            "inject",
            "Send the pod's TCP through its sidecar (iptables NAT); run by the injected init container.",
        ),
        ("certs", "certs", "The mesh certificate authority: its roots, and rotating them."),
        (
            "convert",
            "convert",
            "Rewrite manifests from one mesh API to another; reads manifests, writes nothing but --out FILE.",
        ),
        (
            "demo",
            "sidecars",
            "Run the bookstore mesh for real: apps, Envoy sidecars, gitmesh run; send traffic, show what "
            "happens.",
        ),
        ("explain", "manifests", 'Explain a diagnostic code (GMnnn), or with "rollout" the rollout policy.'),
        ("fleet", "fleet", "A fleet of clusters: a hub, an agent in each member, compliance at a glance."),
        (
            "history",
            "controller",
            "The last reconciles and applies of each source (or of SOURCE), newest first (read from the "
            "target; writes nothing).",
        ),
        ("inject", "inject", "Print manifests with the mesh's sidecar added to every pod they make."),
        (
            "install",
            "install",
            "Install gitmesh in a cluster: its CRDs, and the controller (a Deployment in gitmesh-system, "
            "leader-elected, serving xDS from every replica) with its RBAC, Service and configuration.",
        ),
        (
            "metrics",
            "metrics",
            "The mesh's metrics for other tools: Prometheus scrape configuration and rules.",
        ),
        (
            "plan",
            "manifests",
            "Show what applying the manifests would change, and what it does to traffic (read from the "
            "target; writes nothing but --out).",
        ),
        (
            "reconcile",
            "controller",
            "Ask the running controller (gitmesh run) to fetch and reconcile SOURCE now; it refuses a "
            "source it does not know.",
        ),
        (
            "resume",
            "controller",
            "Reconcile SOURCE again (from its next fetch; gitmesh reconcile SOURCE for now).",
        ),
        (
            "rollout",
            "rollout",
            "Progressive traffic shifts: see them, move them by hand, run them (gitmesh explain rollout).",
        ),
        (
            "run",
            "controller",
            "Keep the cluster in step with Git (with sources) and serve its mesh to Envoy sidecars over ADS.",
        ),
        (
            "status",
            "manifests",
            "Each source's applied revision, object counts and last error; the sidecars gitmesh run "
            "serves (read from the target; writes nothing).",
        ),
        (
            "suspend",
            "controller",
            "Stop reconciling SOURCE (marked in the backend: the controller leaves it alone until resumed).",
        ),
        (
            "top",
            "top",
            "The service edges (RPS, success rate, refused calls, p99), worst first, and the rollouts "
            "under way, live.",
        ),
        (
            "uninstall",
            "install",
            "Remove what gitmesh install made; a CRD with objects, or the namespace while it holds the "
            "controller's state or your Secrets, stays (and is named).",
        ),
        (
            "validate",
            "manifests",
            "Check manifests read from a directory or a commit: schemas and cross-object meaning.",
        ),
    ]
}


def _no_color(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:  # rich honours NO_COLOR by itself; the flag does the same for one run
        out.no_color = err.no_color = True


@click.group(
    cls=Commands, context_settings={"auto_envvar_prefix": "GITMESH", "help_option_names": ["-h", "--help"]}
)
@examples(
    "gitmesh plan --repo . --path examples/repo",
    "gitmesh apply --repo . --path examples/repo",
    "gitmesh status",
)
@click.version_option(package_name="gitmesh")
@click.option(
    "--no-color",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_no_color,
    help="No colours (as NO_COLOR=1 does).",
)
def cli() -> None:
    """GitOps for an SMI service mesh: validate, plan and apply mesh manifests from Git."""
