"""Sidecar injection from the command line: ``gitmesh inject`` (manifests in, injected manifests
out, for teams who commit them) and ``gitmesh capture`` (what the injected init container runs)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
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
    "kubectl get deploy bookstore -o yaml | gitmesh inject -f - --ca-bundle roots.pem | kubectl apply -f -",
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
@click.option(
    "--ca-bundle",
    type=click.File("r"),
    help="The mesh's roots (PEM), which injected pods trust gitmesh by: the caBundle of the "
    "gitmesh-inject MutatingWebhookConfiguration. Without them, injected pods cannot start.",
)
@reports_errors
def inject_command(
    filename: Any, proxy_image: str, init_image: str, xds_address: tuple[str, int], ca_bundle: Any
) -> None:
    """Print manifests with the mesh's sidecar added to every pod they make.

    Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs get the patch the
    admission webhook applies; other objects, pods annotated gitmesh.dev/inject=disabled and pods
    already injected are printed as they are. Comments are not kept.
    """
    bundle = ca_bundle.read() if ca_bundle else ""
    config = patch.Config(proxy_image, init_image, *xds_address, ca_bundle=bundle)
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
@click.option(
    "--identity-url",
    help="First get the sidecar's certificate here for the pod's token (HTTPS, checked against "
    f"the PEM roots in ${patch.CA_BUNDLE_ENV}).",
)
@click.option(
    "--token-file", type=click.Path(dir_okay=False), help="The pod's projected token (audience gitmesh)."
)
@click.option(
    "--identity-dir", type=click.Path(file_okay=False), help="Where to write cert.pem, key.pem, bundle.pem."
)
@click.option("--dry-run", is_flag=True, help="Print the rules instead of setting them.")
@reports_errors
def capture_command(
    proxy_uid: int,
    inbound_port: int,
    outbound_port: int,
    exclude_inbound_ports: str,
    exclude_outbound_ports: str,
    exclude_outbound_cidrs: str,
    identity_url: str | None,
    token_file: str | None,
    identity_dir: str | None,
    dry_run: bool,
) -> None:
    """Send the pod's TCP through its sidecar (iptables NAT); run by the injected init container.

    With --identity-url, first trade the pod's token for its sidecar's certificate, before capture
    would send that request through the sidecar."""
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
    if identity_url:
        if not token_file or not identity_dir:
            raise click.UsageError("--identity-url needs --token-file and --identity-dir")
        with open(token_file) as f:
            token = f.read().strip()
        answer = fetch_identity(identity_url, token, os.environ.get(patch.CA_BUNDLE_ENV, ""))
        _write_identity(identity_dir, answer, proxy_uid)
    done = subprocess.run(
        ["iptables-restore", "--noflush"], input=rules, text=True, capture_output=True, check=False
    )
    if done.returncode:
        raise ConfigError(f"iptables-restore failed: {done.stderr.strip()}")
    sys.stdout.write(rules)


IDENTITY_WAIT_SECONDS = 120.0  # gitmesh may be starting with the pod (a node coming up)


def fetch_identity(url: str, token: str, bundle: str, wait: float = IDENTITY_WAIT_SECONDS) -> dict[str, str]:
    """The sidecar's certificate, key and the mesh's roots for ``token``, from gitmesh at ``url``,
    whose certificate must chain to ``bundle`` and name gitmesh's own identity. Retried while
    gitmesh cannot be reached or answers 5xx; a refusal is final."""
    if not bundle.strip():
        raise ConfigError(f"no mesh roots in ${patch.CA_BUNDLE_ENV}: cannot tell gitmesh from anyone else")
    parsed = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cadata=bundle)
    context.check_hostname = False  # checked below, by SPIFFE ID, as Envoy checks the xDS server
    deadline = time.monotonic() + wait
    while True:
        try:
            return _ask(parsed, context, token)
        except (OSError, http.client.HTTPException, _Retry) as e:
            if time.monotonic() > deadline:
                raise ConfigError(f"{url}: no certificate within {wait:g}s: {e}") from None
            time.sleep(1.0)


class _Retry(Exception):
    pass


def _ask(url: urllib.parse.SplitResult, context: ssl.SSLContext, token: str) -> dict[str, str]:
    conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, context=context, timeout=10)
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        sans: Any = (conn.sock.getpeercert() or {}).get("subjectAltName", ())
        if not any(pair[0] == "URI" and str(pair[1]).endswith(patch.SERVER_ID_SUFFIX) for pair in sans):
            raise ConfigError(f"{url.hostname}: its certificate is not gitmesh's ({sans})")
        conn.request("POST", url.path, json.dumps({"token": token}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status >= 500:
        raise _Retry(f"HTTP {response.status}")
    answer = json.loads(body)
    if response.status != 200:
        raise ConfigError(f"gitmesh refused the pod's identity: {answer.get('error', response.status)}")
    return {key: str(answer[key]) for key in ("cert_pem", "key_pem", "bundle_pem")}


def _write_identity(directory: str, answer: dict[str, str], proxy_uid: int) -> None:
    """The files the sidecar's bootstrap names; the key readable by the proxy's UID alone."""
    for name, key, mode in (
        ("cert.pem", "cert_pem", 0o444),
        ("bundle.pem", "bundle_pem", 0o444),
        ("key.pem", "key_pem", 0o400),
    ):
        # Written aside and renamed over: a restarted pod finds the last ones, which are the
        # proxy's now and not writable by a root without CAP_DAC_OVERRIDE.
        path = os.path.join(directory, name)
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(answer[key])
        os.chmod(path + ".new", mode)  # first: once the proxy's, only CAP_FOWNER may change it
        os.chown(path + ".new", proxy_uid, proxy_uid)
        os.replace(path + ".new", path)
