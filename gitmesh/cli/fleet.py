"""The fleet's commands, run against the hub: join (register a member and its agent's credentials)
and status (every member's compliance)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.table import Table
from rich.text import Text

from gitmesh import durations
from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    confirm_write,
    emit,
    examples,
    out,
    output_option,
    reports_errors,
    snake_keys,
    target_header,
    yes_option,
)
from gitmesh.fleet import model
from gitmesh.fleet.hub import Hub
from gitmesh.fleet.wave import StageState, WaveState, WaveStatus
from gitmesh.plan.model import Action
from gitmesh.settings import Settings

if TYPE_CHECKING:
    from gitmesh.fleet.plan import MemberPlan

_STYLES = {
    model.State.COMPLIANT: "green",
    model.State.NON_COMPLIANT: "bold red",
    model.State.PENDING: "yellow",
    model.State.SUSPENDED: "blue",
    model.State.UNKNOWN: "magenta",
}


@cli.group()
@examples(
    "gitmesh fleet status --kubeconfig hub.kubeconfig",
    "gitmesh fleet join eu-1 -l region=eu --out a.kubeconfig",
)
def fleet() -> None:
    """A fleet of clusters: a hub, an agent in each member, compliance at a glance."""


def _hub(settings: Settings) -> Hub:
    if settings.cluster is None:
        raise click.UsageError("fleet commands work on the hub: give its --kubeconfig (or --context)")
    return Hub(settings.cluster)


@fleet.command("join")
@examples(
    "gitmesh fleet join eu-1 -l region=eu -l tier=edge --out eu-1.kubeconfig --kubeconfig hub.kubeconfig",
)
@click.argument("cluster")
@click.option("-l", "--label", "labels", multiple=True, help="A label KEY=VALUE (repeat for more).")
@click.option(
    "--unknown-after",
    default=model.DEFAULT_UNKNOWN_AFTER,
    show_default=True,
    help="Its state reads Unknown after this long without a report from its agent.",
)
@click.option(
    "--token-lifetime",
    default="24h",
    show_default=True,
    help="How long the agent's token in --out is valid (join again for a new one).",
)
@click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Write the agent's kubeconfig for the hub here (give it to gitmesh run --fleet-hub).",
)
@backend_options
@yes_option
@reports_errors
def join(
    cluster: str,
    labels: tuple[str, ...],
    unknown_after: str,
    token_lifetime: str,
    out_file: str,
    target: BackendChoice,
    yes: bool,
) -> None:
    """Register a member cluster in the hub (its FleetCluster, and a ServiceAccount that may read its
    assignment and write only its own status), and write its agent's kubeconfig."""
    from gitmesh.fleet.hub import member_objects

    parsed: dict[str, str] = {}
    for label in labels:
        key, eq, value = label.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{label!r}: expected KEY=VALUE", param_hint="--label")
        parsed[key] = value
    try:
        durations.seconds(unknown_after)
        lifetime = int(durations.seconds(token_lifetime))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    settings = target.open()
    target_header(settings)
    hub = _hub(settings)
    confirm_write(settings, f"Register cluster {cluster} in the fleet", yes)
    for line in hub.join(member_objects(cluster, parsed, unknown_after)):
        out.print(f"applied {line}")
    token = hub.agent_token(cluster, lifetime)
    written = Path(out_file)
    written.touch(mode=0o600)
    written.chmod(0o600)  # it holds a token: the owner's alone, also when it was there before
    written.write_text(_kubeconfig(hub, cluster, token))
    out.print(f"wrote the agent's kubeconfig to {out_file} (its token is valid for {token_lifetime})")


def _kubeconfig(hub: Hub, cluster: str, token: str) -> str:
    configuration = hub.client.api.configuration
    server: dict[str, Any] = {"server": hub.client.server}
    if configuration.ssl_ca_cert:
        server["certificate-authority-data"] = base64.b64encode(
            Path(configuration.ssl_ca_cert).read_bytes()
        ).decode()
    user = f"fleet-agent-{cluster}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fleet-hub", "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "fleet-hub", "context": {"cluster": "fleet-hub", "user": user}}],
        "current-context": "fleet-hub",
    }
    return yaml.safe_dump(config, sort_keys=False)


@fleet.command("status")
@examples(
    "gitmesh fleet status --kubeconfig hub.kubeconfig",
    "gitmesh fleet status eu-1",
    "gitmesh fleet status -o json",
)
@click.argument("cluster", required=False)
@backend_options
@output_option("json", "yaml")
@reports_errors
def status(cluster: str | None, target: BackendChoice, output: str) -> None:
    """Every member's compliance, read from the hub (writes nothing): Compliant, Non-Compliant,
    Pending, Suspended, or Unknown when its agent has not reported for longer than its unknownAfter.
    With CLUSTER, that member alone, with what its last reconcile did to each object."""
    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    now = datetime.now(UTC)
    hub = _hub(settings)
    members = [model.seen(obj, now) for obj in hub.clusters()]
    waves = [(c.name, c.wave_status) for c in hub.configurations() if c.wave_status is not None]
    if cluster is not None:
        members = [m for m in members if m.name == cluster]
        if not members:
            raise click.BadParameter(f"no cluster {cluster!r} has joined the fleet", param_hint="CLUSTER")
    if output != "text":
        emit(
            "fleet-status",
            {
                "target": settings.objects.describe(),
                "clusters": [
                    {
                        "name": m.name,
                        "labels": dict(m.labels),
                        "compliance": m.state.value,
                        "reason": m.reason,
                        "last_report_time": m.last_report.isoformat() if m.last_report else None,
                        "configurations": snake_keys([dict(c) for c in m.configurations]),
                        "overlaps": snake_keys([dict(o) for o in m.overlaps]),
                    }
                    for m in members
                ],
                "waves": [
                    {"configuration": name, **snake_keys(w.to_json())} for name, w in waves if cluster is None
                ],
            },
            output,
        )
        return
    if not members:
        out.print("No cluster has joined the fleet.")
        return
    rows = [
        [
            Text(m.name),
            Text(",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))),
            Text(m.state.value, style=_STYLES[m.state]),
            Text(
                ", ".join(
                    f"{c['name']}@{str(c.get('appliedRevision') or '-')[:12]}" for c in m.configurations
                )
                or "-"
            ),
            Text(f"{(now - m.last_report).total_seconds():.0f}s ago" if m.last_report else "never"),
            Text(m.reason),
        ]
        for m in members
    ]
    out.print(_columns(("CLUSTER", "LABELS", "COMPLIANCE", "CONFIGURATIONS", "LAST REPORT", "REASON"), rows))
    if cluster is not None:
        _print_objects(members[0])
        return
    for name, w in waves:
        _print_wave(name, w)


_WAVE_STYLES = {
    StageState.PASSED: "green",
    StageState.ROLLED_BACK: "bold red",
    StageState.WAITING_APPROVAL: "blue",
    StageState.APPLYING: "yellow",
    StageState.VERIFYING: "yellow",
    StageState.PENDING: "",
}


def _print_wave(configuration: str, w: WaveStatus) -> None:
    out.print(
        Text(
            f"\nWave of {configuration} toward {w.revision[:12]} (last good {w.last_good[:12]}): ",
            style="bold",
        )
        + Text(w.state.value, style="bold red" if w.state is WaveState.HALTED else "bold")
        + Text(f"  {w.reason}")
    )
    table = Table(box=None, pad_edge=False)
    for column in ("STAGE", "STATE", "REVISION", "SINCE", "WHY"):
        table.add_column(column)
    for s in w.stages:
        table.add_row(
            s.name,
            Text(s.state.value, style=_WAVE_STYLES[s.state]),
            s.revision[:12],
            s.since.strftime("%H:%M:%S"),
            Text(s.reason),
        )
    out.print(table)


@fleet.command("approve")
@examples("gitmesh fleet approve mesh eu --kubeconfig hub.kubeconfig")
@click.argument("configuration")
@click.argument("stage")
@backend_options
@yes_option
@reports_errors
def approve(configuration: str, stage: str, target: BackendChoice, yes: bool) -> None:
    """Approve the revision a configuration's wave brings for one of its stages (a stage with
    approval: true waits for it); the approval is written to the configuration, for that revision only."""
    settings = target.open()
    target_header(settings)
    hub = _hub(settings)
    chosen = next((c for c in hub.configurations() if c.name == configuration), None)
    if chosen is None or chosen.wave is None or chosen.wave_status is None:
        raise click.BadParameter(
            f"the hub has no wave of {configuration!r} under way", param_hint="CONFIGURATION"
        )
    if stage not in [s.name for s in chosen.wave.stages]:
        names = ", ".join(s.name for s in chosen.wave.stages)
        raise click.BadParameter(
            f"{configuration} has no stage {stage!r} (its stages: {names})", param_hint="STAGE"
        )
    revision = chosen.wave_status.revision
    confirm_write(settings, f"Approve {revision[:12]} of {configuration} for stage {stage}", yes)
    hub.approve(configuration, stage, revision)
    out.print(f"approved {revision[:12]} of {configuration} for stage {stage}")


def _columns(header: Sequence[str], rows: Sequence[Sequence[Text]]) -> Text:
    """One-line rows as one Text, each column padded to its widest cell (the last not at all). Rich's
    Table measures every cell to wrap it, which over 1,000 members took longer than all the rest of
    ``fleet status``; a long reason here runs on, and the terminal wraps it."""
    lines = [[Text(h, style="bold") for h in header], *rows]
    widths = [max(len(line[i].plain) for line in lines) for i in range(len(header))]
    table = Text()
    for line in lines:
        for i, cell in enumerate(line):
            table.append_text(cell)
            if i < len(line) - 1:
                table.append(" " * (widths[i] - len(cell.plain) + 2))
        table.append("\n")
    table.rstrip()
    return table


def _print_objects(member: model.Seen) -> None:
    """Per configuration, what the member's last reconcile did to each object."""
    for c in member.configurations:
        results = c.get("objectResults") or []
        omitted = int(c.get("objectResultsOmitted") or 0)
        out.print(
            Text(f"\n{c['name']} ({c.get('path') or '/'}): {len(results) + omitted} object(s)", style="bold")
        )
        if not results:
            continue
        table = Table(box=None, pad_edge=False)
        for column in ("OBJECT", "RESULT", "WHY"):
            table.add_column(column)
        for r in results:
            failed = r["result"] in ("invalid", "refused", "claimed")
            table.add_row(
                r["object"], Text(r["result"], style="bold red" if failed else ""), Text(r.get("message", ""))
            )
        out.print(table)
        if omitted:
            out.print(f"... and {omitted} more (the first {len(results)} are kept, failures first)")


@fleet.command("plan")
@examples(
    "gitmesh fleet plan mesh --ref HEAD --repo . --kubeconfig hub.kubeconfig",
    "gitmesh fleet plan mesh --ref origin/main -o markdown",
)
@click.argument("configuration")
@click.option("--ref", default="HEAD", show_default=True, help="The revision to plan.")
@click.option("--repo", help="Read the revision here (default: the configuration's repository).")
@backend_options
@output_option("json", "yaml", "markdown")
@reports_errors
def plan(configuration: str, ref: str, repo: str | None, target: BackendChoice, output: str) -> None:
    """What a revision of a configuration would change on each member it selects, planned against the
    revision each member reports applied at its overlay's path (reads the hub; writes nothing)."""
    from gitmesh.fleet.plan import plan_members
    from gitmesh.kube import errors
    from gitmesh.sync.git import open_repo

    settings = target.open(read_only=True)
    if output == "text":
        target_header(settings)
    hub = _hub(settings)
    try:
        chosen = next(c for c in hub.configurations() if c.name == configuration)
    except StopIteration:
        raise click.BadParameter(f"the hub has no FleetConfiguration {configuration!r}") from None
    except errors.NotFound:
        raise click.UsageError("this cluster is no fleet hub: see gitmesh install fleet-hub") from None
    git_repo = open_repo(repo or chosen.repository)
    revision = git_repo.commit(ref).hexsha
    members = [(model.Member.of(obj), obj.get("status") or {}) for obj in hub.clusters()]
    plans = plan_members(git_repo, revision, chosen, members)
    if output in ("json", "yaml"):
        emit(
            "fleet-plan",
            {
                "target": settings.objects.describe(),
                "configuration": configuration,
                "revision": revision,
                "clusters": [
                    {
                        "name": p.cluster,
                        "path": p.path,
                        "base_revision": p.base,
                        "valid": p.plan is not None,
                        "summary": p.summary,
                        "changes": [
                            {"action": c.action.value, "object": str(c.ref)}
                            for c in (p.plan.changes if p.plan else ())
                            if c.action is not Action.NOOP
                        ],
                        "splits": [
                            {
                                "split": str(s.split),
                                "service": s.service,
                                "backends": [
                                    {"service": b.service, "before": b.before, "after": b.after}
                                    for b in s.backends
                                ],
                            }
                            for s in p.splits
                        ],
                    }
                    for p in plans
                ],
            },
            output,
        )
        return
    if output == "markdown":
        lines = [
            f"### gitmesh fleet plan for `{revision[:12]}` ({configuration})",
            "",
            "| cluster | path | from | changes | traffic |",
            "|---|---|---|---|---|",
        ]
        for p in plans:
            summary = p.summary if p.plan else f"**{p.summary}**"
            traffic = "<br>".join(_shares(p))
            lines.append(f"| {p.cluster} | `{p.path}` | `{(p.base or '-')[:12]}` | {summary} | {traffic} |")
        click.echo("\n".join(lines))
        return
    if not plans:
        out.print(f"No cluster is selected by {configuration}.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("CLUSTER", "PATH", "FROM", "CHANGES", "TRAFFIC"):
        table.add_column(column)
    for p in plans:
        table.add_row(
            p.cluster,
            p.path,
            (p.base or "-")[:12],
            Text(p.summary, style="" if p.plan else "bold red"),
            "\n".join(_shares(p)) or "-",
        )
    out.print(Text(f"Revision {revision[:12]} of {configuration}", style="bold"))
    out.print(table)


def _shares(p: MemberPlan) -> list[str]:
    return [
        f"{s.split}: " + ", ".join(f"{b.service} {_share(b.before)} -> {_share(b.after)}" for b in s.backends)
        for s in p.splits
    ]


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share:g}%"
