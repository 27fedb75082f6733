"""gitmesh certs: the mesh CA."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gitmesh.cli.base import (
    BackendChoice,
    backend_options,
    cli,
    confirm_write,
    examples,
    out,
    reports_errors,
    target_header,
    yes_option,
)
from gitmesh.errors import GitmeshError


@cli.group()
@examples("gitmesh certs init", "gitmesh certs rotate --wait 600")
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
@examples("gitmesh certs init", "gitmesh certs init --ca-cert ca.pem --ca-key ca-key.pem --context prod")
@backend_options
@_ca_options
@click.option("--trust-domain", default="cluster.local", show_default=True, help="The SPIFFE trust domain.")
@yes_option
@reports_errors
def certs_init(
    target: BackendChoice, ca_cert: str | None, ca_key: str | None, trust_domain: str, yes: bool
) -> None:
    """Make the mesh CA, from a new root or your own CA (gitmesh run makes one on first use)."""
    from gitmesh.certs.authority import CaState

    settings = target.open()
    target_header(settings)
    keeper = settings.state.ca
    if keeper.load() is not None:
        raise click.UsageError("the mesh CA exists already; `gitmesh certs rotate` replaces its root")
    confirm_write(settings, f"Make the mesh CA for {trust_domain}", yes)
    keeper.save(CaState(trust_domain, (_authority(ca_cert, ca_key, trust_domain),)))
    out.print(f"Mesh CA for trust domain {trust_domain} kept in {keeper}")


@certs.command("rotate")
@examples("gitmesh certs rotate --wait 600", "gitmesh certs rotate --ca-cert new.pem --ca-key new-key.pem")
@backend_options
@_ca_options
@click.option(
    "--wait",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seconds to wait for gitmesh run to finish the rotation (0: start it and return).",
)
@yes_option
@reports_errors
def certs_rotate(
    target: BackendChoice, ca_cert: str | None, ca_key: str | None, wait: int, yes: bool
) -> None:
    """Replace the root without downtime: gitmesh run adds the new root to every sidecar's bundle,
    then reissues every certificate from it, then retires the old root, each step once every
    connected sidecar has taken the previous one."""
    from gitmesh.certs import authority

    settings = target.open()
    target_header(settings)
    keeper = settings.state.ca
    current = keeper.load()
    if current is None:
        raise click.UsageError("there is no mesh CA yet: `gitmesh certs init` or `gitmesh run` makes one")
    confirm_write(settings, "Rotate the mesh CA's root", yes)
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
