"""The official Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance, profiles
MESH-HTTP and MESH-GRPC) against gitmesh installed in the test node with sidecar injection.

``testenv/build.sh conformance`` builds the suite as a test binary and the echo server and client
that its mesh manifests run (Istio's echo app, image ``echo-advanced``); the image is written here
under the name the manifests use and imported into the node, so nothing is pulled. The suite
applies its Services, Deployments and routes with its own client, execs the echo client in one pod
and checks what the others answer; gitmesh reads the routes from the cluster and serves the
sidecars. The suite's report is written to ``$CONFORMANCE_REPORT`` when set
(conformance/ holds the published one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gitmesh.cli import cli
from gitmesh.demo import eventually
from gitmesh.install.manifests import NAMESPACE as INSTALL_NAMESPACE
from tests import factory as f
from tests.gitserver import GitHttpServer
from tests.kube import BUILD_SCRIPT, KubeEnvError
from tests.node import NODE_IP, NodeCluster, image_tarball

pytestmark = [pytest.mark.integration, pytest.mark.node]

# The name and tag the suite's mesh manifests (conformance/mesh/manifests.yaml) give the echo image.
ECHO_IMAGE = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"
# What the suite's own namespaces need to be in the mesh.
INJECT_LABEL = "gitmesh.dev/inject=enabled"
MESH_NAMESPACES = ("gateway-conformance-mesh", "gateway-conformance-mesh-consumer")
# The features gitmesh serves, beyond each profile's core (README, "Gateway API conformance", says
# why the others are not).
EXTENDED = (
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "MeshConsumerRoute",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteRewritePath",
)
# Each profile run, and its core features.
PROFILES = {"MESH-HTTP": ("Mesh", "HTTPRoute"), "MESH-GRPC": ("Mesh", "GRPCRoute")}
# Tests of supported features that gitmesh fails, each with why (README says the same): a pod's
# call to another pod's address goes out in plaintext, which that pod's sidecar refuses on a port
# of the mesh (mTLS only); MeshFrontend sends one to check it bypasses the Service's routes.
SKIPPED = ("MeshFrontend",)


def build_conformance() -> Path:
    """``testenv/build.sh conformance`` (a no-op when built): the folder with the suite and echo."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "conformance"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise KubeEnvError(f"testenv/build.sh conformance failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def echo_image(bin_dir: Path, out: Path) -> Path:
    """Istio's echo app as its image lays it out: server and client on the PATH, the server as
    the entrypoint, run as UID 1338 (an app, not the sidecar's 1337), its TLS pair at /cert.*."""
    files: dict[str, Path | bytes] = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\napplication:x:1338:1338::/tmp:/bin/sh\n",
        "etc/group": b"root:x:0:\napplication:x:1338:\n",
        "usr/local/bin/server": bin_dir / "echo-server",
        "usr/local/bin/client": bin_dir / "echo-client",
        "cert.crt": bin_dir / "echo-cert.crt",
        "cert.key": bin_dir / "echo-cert.key",
    }
    config = {
        "Entrypoint": ["/usr/local/bin/server"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "User": "1338",
    }
    return image_tarball(out, ECHO_IMAGE, files, config)


@pytest.fixture
def gitmesh_with_injection(node_cluster: NodeCluster, tmp_path: Path) -> Iterator[NodeCluster]:
    """gitmesh installed with its injector, following a repository that holds only the mesh's
    permissive mode: Gateway API has no authorization of its own, and the suite's callers are
    named by no TrafficTarget."""
    cluster = node_cluster
    repo = tmp_path / "repo"
    (repo / "mesh").mkdir(parents=True)
    (repo / "mesh" / "mesh.yaml").write_text(f.dump(f.mesh_config(True)))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "permissive"], check=True)
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(served / "mesh.git")], check=True)
    server = GitHttpServer(served, host=NODE_IP).start()
    install = [
        "install",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--image",
        cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--proxy-image",
        cluster.images.envoy,
        "--repo",
        server.url("mesh.git"),
        "--path",
        "mesh",
        "--interval",
        "2s",
    ]
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, result.output
        cluster.kubectl(
            "-n", INSTALL_NAMESPACE, "rollout", "status", "deployment/gitmesh", "--timeout=120s", timeout=130
        )
        eventually(
            lambda: json.loads(
                cluster.kubectl("get", "-o", "json", "mutatingwebhookconfiguration", "gitmesh-inject").stdout
            )["webhooks"],
            lambda hooks: all(w["clientConfig"].get("caBundle") for w in hooks),
            "a replica publishing the webhook's caBundle",
            60,
        )
        yield cluster
    finally:
        # The suite removes its namespaces when it ends; not when it was stopped.
        cluster.kubectl(
            "delete",
            "namespace",
            *MESH_NAMESPACES,
            "--ignore-not-found",
            "--timeout=180s",
            timeout=190,
            check=False,
        )
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
        cluster.kubectl(
            "delete", "namespace", INSTALL_NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=130
        )
        server.stop()


def run_suite(cluster: NodeCluster, suite: Path, report: Path) -> subprocess.CompletedProcess[str]:
    features = (
        ",".join(dict.fromkeys(f for core in PROFILES.values() for f in core)) + "," + ",".join(EXTENDED)
    )
    argv = [
        str(suite),
        "-test.run=TestConformance",
        "-test.v",
        "-test.timeout=30m",
        f"-conformance-profiles={','.join(PROFILES)}",
        f"-supported-features={features}",
        f"-namespace-labels={INJECT_LABEL}",
        f"-skip-tests={','.join(SKIPPED)}",
        f"-report-output={report}",
        "-organization=gitmesh",
        "-project=gitmesh",
        "-url=https://github.com/gitmesh/gitmesh",
        "-version=0.1.0",
        "-contact=@gitmesh/maintainers",
        "-mode=default",
    ]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1900, check=False)


def profile_report(report: Path, name: str) -> dict[str, Any]:
    document = yaml.safe_load(report.read_text())
    (found,) = [p for p in document["profiles"] if p["name"] == name]
    return dict(found)


@pytest.mark.timeout(2400)
def test_the_mesh_profiles_pass_their_core_tests(gitmesh_with_injection: NodeCluster, tmp_path: Path) -> None:
    cluster = gitmesh_with_injection
    bin_dir = build_conformance()
    cluster.import_image(echo_image(bin_dir, cluster.directory / "images"))
    report = tmp_path / "report.yaml"
    run = run_suite(cluster, bin_dir / "gateway-conformance.test", report)
    (tmp_path / "suite.log").write_text(run.stdout + run.stderr)
    assert report.exists(), (run.stdout + run.stderr)[-6000:]
    if published := os.environ.get("CONFORMANCE_REPORT"):
        shutil.copyfile(report, published)
    failed = [line for line in run.stdout.splitlines() if line.lstrip().startswith("--- FAIL")]
    for name in PROFILES:
        profile = profile_report(report, name)
        assert profile["core"]["result"] == "success", (name, profile, failed)
        assert profile["core"]["statistics"]["Failed"] == 0, (name, profile)
    assert profile_report(report, "MESH-HTTP")["core"]["statistics"]["Passed"] >= 7
    assert run.returncode == 0, failed
