"""A real cert-manager for the tests: its CA issuer, issuer readiness and approver controllers,
built by ``testenv/build.sh cert-manager`` and run as a host process against a test apiserver,
with its CRDs and a CA Issuer whose root the test makes."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from gitmesh.certs import ca
from tests.kube import BUILD_SCRIPT, Cluster

ISSUER = "mesh-ca"
NAMESPACE = "gitmesh-system"


def build() -> Path:
    """The directory of the ``cert-manager`` binary and its CRDs (built on first use, then cached)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "cert-manager"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"testenv/build.sh cert-manager failed:\n{proc.stderr[-5000:]}")
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert os.access(out / "cert-manager", os.X_OK), out
    return out


def ca_issuer(cluster: Cluster, root: ca.Authority, name: str = ISSUER) -> None:
    """An Issuer ``name`` in NAMESPACE signing with ``root`` (its key in a Secret of that name)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(root.cert_pem.encode()).decode(),
            "tls.key": base64.b64encode(root.key_pem.encode()).decode(),
        },
    }
    issuer = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ca": {"secretName": name}},
    }
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, issuer]})
    )
    cluster.kubectl(
        "wait", "-n", NAMESPACE, "--for=condition=Ready", f"issuer/{name}", "--timeout=120s", timeout=130
    )


@contextlib.contextmanager
def running(built: Path, cluster: Cluster, workdir: Path) -> Iterator[ca.Authority]:
    """cert-manager's CRDs installed in ``cluster``, its controller running, and a CA Issuer
    (ISSUER in NAMESPACE) ready; the Issuer's root."""
    for crd in sorted((built / "cert-manager-crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/certificaterequests.cert-manager.io",
        "crd/issuers.cert-manager.io",
    )
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    log = workdir / "cert-manager.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                str(built / "cert-manager"),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--cluster-resource-namespace",
                NAMESPACE,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        root = ca.new_root("cluster.local", datetime.datetime.now(datetime.UTC))
        try:
            ca_issuer(cluster, root)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"the Issuer is not ready: {e.stderr}\n{log.read_text()[-3000:]}") from e
        yield root
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


__all__ = ["ISSUER", "NAMESPACE", "build", "ca_issuer", "running"]
