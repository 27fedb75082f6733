"""Workload certificates issued per second, per provider: the built-in CA (in-process, ECDSA P-256),
a real HashiCorp Vault's PKI engine (dev mode on loopback, built by ``testenv/build.sh vault``) and a
real cert-manager's CA Issuer (``testenv/build.sh cert-manager``, against a test kube-apiserver),
through the same ``provider.Remote`` / ``MeshCA`` paths the xDS server uses; and the time to give
``--sidecars`` new identities their first certificate (one ``refresh``, as ``gitmesh run`` does).

    python bench/cert_bench.py [--count 200] [--sidecars 1000] [--provider builtin|vault|cert-manager|all]
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import tempfile
import time
from pathlib import Path

from gitmesh.certs import ca
from gitmesh.certs.authority import CaState, MeshCA
from gitmesh.certs.certmanager import CertManager, CertManagerSettings
from gitmesh.certs.provider import Remote, WorkloadCA
from gitmesh.certs.vault import VaultPki, VaultSettings
from gitmesh.kube.certificate_requests import CertificateRequests
from gitmesh.kube.client import Client
from gitmesh.mesh.state import Identity

LIFETIME = datetime.timedelta(hours=24)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for tests.vault, which builds and runs Vault
    sys.path.insert(0, str(ROOT))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def first_certificates(workload: WorkloadCA, n: int) -> tuple[float, float]:
    """Wall and CPU seconds (of this process) to give ``n`` new identities their first certificate."""
    now = datetime.datetime.now(datetime.UTC)
    identities = [Identity(f"ns{i % 50}", f"sa{i}") for i in range(n)]
    started, started_cpu = time.perf_counter(), cpu()
    for identity in identities:  # what a sidecar's stream opening does: ask, get nothing or a held one
        workload.current(identity, now)
    renewed = workload.refresh(now)
    for identity in identities:
        assert workload.current(identity, now) is not None, identity
    assert isinstance(workload, MeshCA) or len(renewed) == n, (len(renewed), workload.problem())
    return time.perf_counter() - started, cpu() - started_cpu


def report(provider: str, count: int, wall: float, cpu_s: float) -> None:
    print(
        f"{provider:12} {count:5} certificates  {wall:7.2f} s  {count / wall:8.1f}/s"
        f"  (cpu here {cpu_s:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="certificates for the rate")
    parser.add_argument("--sidecars", type=int, default=1000, help="new identities given a first certificate")
    parser.add_argument("--provider", choices=["builtin", "vault", "cert-manager", "all"], default="all")
    args = parser.parse_args()
    now = datetime.datetime.now(datetime.UTC)
    if args.provider in ("builtin", "all"):
        for n in (args.count, args.sidecars):
            root = ca.new_root(ca.DEFAULT_TRUST_DOMAIN, now)
            wall, cpu_s = first_certificates(MeshCA(CaState(ca.DEFAULT_TRUST_DOMAIN, (root,)), LIFETIME), n)
            report("builtin", n, wall, cpu_s)
    if args.provider in ("vault", "all"):
        from tests import vault as vault_mod

        with tempfile.TemporaryDirectory() as tmp, vault_mod.running(vault_mod.build(), Path(tmp)) as vault:
            token = Path(tmp) / "token"
            token.write_text(vault.root_token)
            settings = VaultSettings(vault.address, vault_mod.ROLE, token)
            for n in (args.count, args.sidecars):
                remote = Remote(VaultPki(settings), ca.DEFAULT_TRUST_DOMAIN, LIFETIME)
                wall, cpu_s = first_certificates(remote, n)
                report("vault", n, wall, cpu_s)
    if args.provider in ("cert-manager", "all"):
        cert_manager(args.count, args.sidecars)


def cert_manager(count: int, sidecars: int) -> None:
    from tests import cert_manager as cm
    from tests.kube import KubeEnv, build_binaries

    with tempfile.TemporaryDirectory() as tmp, KubeEnv(build_binaries(), Path(tmp)) as env:
        cluster = env.add_cluster()
        with cm.running(cm.build(), cluster, Path(tmp)):
            requests = CertificateRequests(Client.connect(str(cluster.kubeconfig)))
            settings = CertManagerSettings(cm.ISSUER, namespace=cm.NAMESPACE)
            for n in (count, sidecars):
                remote = Remote(CertManager(settings, requests), ca.DEFAULT_TRUST_DOMAIN, LIFETIME)
                wall, cpu_s = first_certificates(remote, n)
                report("cert-manager", n, wall, cpu_s)


if __name__ == "__main__":
    main()
