"""gitmesh installed into the real node: two replicas, one leader applying from Git, and the
other taking over when the leader's pod is killed, without any object applied twice."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh import demo
from gitmesh.certs import store
from gitmesh.cli import cli
from gitmesh.controller.leader import LEASE, LEASE_DURATION, RETRY_PERIOD
from gitmesh.install.manifests import NAMESPACE, XDS_PORT
from gitmesh.xds.bootstrap import client_tls
from tests import factory as f
from tests.bookstore import Bookstore
from tests.conftest import GitRepo
from tests.gitserver import GitHttpServer
from tests.node import NODE_IP, NodeCluster

pytestmark = [pytest.mark.integration, pytest.mark.node]

SHOP = "shop"


def get_json(cluster: NodeCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", "-o", "json", "--show-managed-fields", *args).stdout)


def wait_for(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.5)


def holder(cluster: NodeCluster) -> str:
    result = cluster.kubectl("-n", NAMESPACE, "get", "lease", LEASE, "-o", "json", check=False)
    return str(json.loads(result.stdout)["spec"].get("holderIdentity", "")) if result.returncode == 0 else ""


def ready_endpoints(cluster: NodeCluster, service: str) -> set[str]:
    """The ready pods behind ``service`` in gitmesh-system."""
    slices = get_json(
        cluster, "-n", NAMESPACE, "endpointslices", "-l", f"kubernetes.io/service-name={service}"
    )
    return {
        e["targetRef"]["name"]
        for s in slices["items"]
        for e in s.get("endpoints") or ()
        if e.get("conditions", {}).get("ready")
    }


def gitmesh_pods(cluster: NodeCluster) -> dict[str, dict[str, Any]]:
    pods = get_json(cluster, "-n", NAMESPACE, "pods", "-l", "app.kubernetes.io/name=gitmesh")["items"]
    return {p["metadata"]["name"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def split_weights(cluster: NodeCluster) -> dict[str, int]:
    result = cluster.kubectl("-n", SHOP, "get", "trafficsplit", "web", "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    return {b["service"]: b["weight"] for b in json.loads(result.stdout)["spec"]["backends"]}


def mesh_files(v1: int, v2: int) -> dict[str, str]:
    return {
        "mesh/shop.yaml": f.dump(
            f.namespace(SHOP),
            f.service(SHOP, "web"),
            f.service(SHOP, "web-v1"),
            f.service(SHOP, "web-v2"),
            f.split(SHOP, "web", "web", {"web-v1": v1, "web-v2": v2}),
        )
    }


@pytest.fixture
def installed(
    node_cluster: NodeCluster, git_repo: GitRepo, tmp_path: Path
) -> Iterator[tuple[NodeCluster, GitRepo, list[str]]]:
    """gitmesh installed from the locally built image, following a repository the pods fetch
    from this host's git http-backend at the node's address; uninstalled afterwards."""
    git_repo.commit("shop", mesh_files(90, 10))
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(git_repo.path), str(served / "mesh.git")], check=True)
    git_repo.git("remote", "add", "origin", str(served / "mesh.git"))
    server = GitHttpServer(served, host=NODE_IP).start()
    kubeconfig = str(node_cluster.kubeconfig)
    install = [
        "install",
        "--kubeconfig",
        kubeconfig,
        "--image",
        node_cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--repo",
        server.url("mesh.git"),
        "--branch",
        "main",
        "--path",
        "mesh",
        "--interval",
        "2s",
    ]
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, (
            result.output + node_cluster.kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout
        )
        yield node_cluster, git_repo, install
    finally:
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", kubeconfig])
        # Uninstall keeps the namespace while it holds the mesh CA; the next test installs anew.
        node_cluster.kubectl(
            "delete", "namespace", "shop", NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=130
        )
        server.stop()


def test_install_two_replicas_the_leader_applies_and_a_killed_leader_is_replaced(
    installed: tuple[NodeCluster, GitRepo, list[str]],
) -> None:
    cluster, repo, _ = installed
    deployment = get_json(cluster, "-n", NAMESPACE, "deployment", "gitmesh")
    assert deployment["status"]["readyReplicas"] == 2
    pods = {
        p["metadata"]["name"]
        for p in get_json(cluster, "-n", NAMESPACE, "pods", "-l", "app.kubernetes.io/name=gitmesh")["items"]
    }
    assert len(pods) == 2

    leader = wait_for("a replica holds the Lease", lambda: holder(cluster), 30)
    assert leader in pods
    assert wait_for("the leader applies the TrafficSplit", lambda: split_weights(cluster), 60) == {
        "web-v1": 90,
        "web-v2": 10,
    }
    assert wait_for(
        "the leader's Service selects the leader",
        lambda: ready_endpoints(cluster, "gitmesh-leader") == {leader},
        30,
    )
    services = {
        name: get_json(cluster, "-n", SHOP, "service", name)["metadata"]["resourceVersion"]
        for name in ("web", "web-v1", "web-v2")
    }

    cluster.kubectl("-n", NAMESPACE, "delete", "pod", leader, "--grace-period=0", "--force")
    killed_at = time.monotonic()
    (follower,) = pods - {leader}
    new_leader = wait_for(
        "another replica takes the Lease",
        lambda: (h := holder(cluster)) != leader and h,
        LEASE_DURATION + RETRY_PERIOD * 3,
    )
    assert new_leader == follower  # the one that saw the Lease longest; the replacement pod waits anew
    assert time.monotonic() - killed_at <= LEASE_DURATION + RETRY_PERIOD * 3
    lease = get_json(cluster, "-n", NAMESPACE, "lease", LEASE)
    assert lease["spec"]["leaseTransitions"] == 1
    assert wait_for(
        "the leader's Service follows", lambda: ready_endpoints(cluster, "gitmesh-leader") == {follower}, 30
    )

    repo.commit("shift", mesh_files(50, 50))
    repo.git("push", "-q", "origin", "main")
    assert wait_for(
        "the new leader applies the next commit",
        lambda: split_weights(cluster) == {"web-v1": 50, "web-v2": 50},
        60,
    )

    # Applied once per change, by one field manager: the Services the commit left alone were not
    # written again by the new leader, and the split changed exactly once after it was made.
    split = get_json(cluster, "-n", SHOP, "trafficsplit", "web")
    assert split["metadata"]["generation"] == 2
    managers = [(m["manager"], m["operation"]) for m in split["metadata"]["managedFields"]]
    assert managers == [("gitmesh", "Apply")]
    for name, version in services.items():
        assert get_json(cluster, "-n", SHOP, "service", name)["metadata"]["resourceVersion"] == version, name


def test_install_over_an_install_rolls_one_pod_at_a_time_and_the_new_leader_applies(
    installed: tuple[NodeCluster, GitRepo, list[str]],
) -> None:
    cluster, repo, install = installed
    old = set(gitmesh_pods(cluster))
    assert wait_for("the leader applies the TrafficSplit", lambda: split_weights(cluster), 60)
    ready: list[int] = []
    rolled = threading.Event()

    def watch() -> None:
        while not rolled.is_set():
            ready.append(len(ready_endpoints(cluster, "gitmesh")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # A new configuration (another interval) is an upgrade: the pods are replaced.
        result = CliRunner().invoke(cli, [*install[:-1], "3s"])
    finally:
        rolled.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    pods = gitmesh_pods(cluster)
    assert len(pods) == 2 and not set(pods) & old
    # maxUnavailable 0: at every look during the roll, a replica was ready to serve xDS.
    assert len(ready) > 5 and min(ready) >= 1, ready
    config = get_json(cluster, "-n", NAMESPACE, "configmap", "gitmesh")["data"]["config.yaml"]
    assert "interval: 3s" in config
    leader = wait_for(
        "a new pod holds the Lease", lambda: (h := holder(cluster)) in pods and h, LEASE_DURATION * 2
    )
    assert wait_for(
        "the gitmesh-leader Service follows",
        lambda: ready_endpoints(cluster, "gitmesh-leader") == {leader},
        30,
    )
    repo.commit("shift", mesh_files(20, 80))
    repo.git("push", "-q", "origin", "main")
    assert wait_for(
        "the new leader applies the next commit",
        lambda: split_weights(cluster) == {"web-v1": 20, "web-v2": 80},
        60,
    )


class Forwarder:
    """127.0.0.1:port to ``target``, a connection for each: what a pod's sidecar reaches the
    gitmesh Service through (kube-proxy picks a ready replica for each new connection)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(a, b))
                self.threads.append(thread)
                thread.start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept under way
        self.threads[0].join()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for thread in self.threads[1:]:
            thread.join()


def test_an_upgrade_under_traffic_fails_no_request_and_the_sidecars_follow_the_new_replicas(
    node_cluster: NodeCluster, tmp_path: Path
) -> None:
    cluster = node_cluster
    d = Bookstore(tmp_path / "demo", kubeconfig=cluster.kubeconfig, host=NODE_IP)
    d._make_repo()
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(d.repo), str(served / "mesh.git")], check=True)
    server = GitHttpServer(served, host=NODE_IP).start()
    install = [
        "install",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--image",
        cluster.images.gitmesh,
        "--image-pull-policy",
        "Never",
        "--repo",
        server.url("mesh.git"),
        "--path",
        demo.MESH_PATH,
        "--interval",
        "2s",
    ]
    forwarder = None
    try:
        result = CliRunner().invoke(cli, install)
        assert result.exit_code == 0, result.output
        wait_for(
            "the leader applies the bookstore",
            lambda: (
                cluster.kubectl(
                    "-n", "bookstore", "get", "trafficsplit", "bookstore-split", check=False
                ).returncode
                == 0
            ),
            60,
        )
        service_ip = get_json(cluster, "-n", NAMESPACE, "service", "gitmesh")["spec"]["clusterIP"]
        forwarder = Forwarder((service_ip, XDS_PORT))
        ca_state = store.load_or_create(d.ca_keeper(), datetime.now(UTC))
        for name in ("bookbuyer", "bookstore-v1", "bookstore-v2"):
            proxy = d.proxies[name]
            tls = client_tls(ca_state, proxy.identity, datetime.now(UTC))
            d.sidecars[name] = demo.Sidecar(proxy, forwarder.port, d.workdir, tls)
        for name, sidecar in d.sidecars.items():
            demo.eventually(sidecar.ready, bool, f"the {name} sidecar becoming ready", 60)
        assert set(d.shares(100)) == {"bookstore-v1", "bookstore-v2"}

        failed: list[tuple[int, str]] = []
        answered = [0]
        rolled = threading.Event()

        def traffic() -> None:
            while not rolled.is_set():
                status, body = d.buy()
                answered[0] += 1
                if status != 200:
                    failed.append((status, body))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            result = CliRunner().invoke(cli, [*install[:-1], "3s"])  # a new configuration: the pods roll
        finally:
            rolled.set()
            sender.join()
        assert result.exit_code == 0, result.output
        assert answered[0] > 100 and failed == [], (answered, failed[:5])

        # The sidecars reconnected to the new replicas: a commit still reaches the traffic.
        split = d.repo / demo.MESH_PATH / "bookstore" / "split.yaml"
        split.write_text(
            split.read_text().replace("weight: 75", "weight: 0").replace("weight: 25", "weight: 100")
        )
        subprocess.run(
            [
                "git",
                "-C",
                str(d.repo),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qam",
                "v2 only",
            ],
            check=True,
        )
        subprocess.run(["git", "-C", str(d.repo), "push", "-q", str(served / "mesh.git"), "main"], check=True)
        demo.eventually(
            lambda: set(d.shares(50)), lambda s: s == {"bookstore-v2"}, "all to v2 after the upgrade", 60
        )
    finally:
        d.close()
        if forwarder is not None:
            forwarder.close()
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
        cluster.kubectl(
            "delete",
            "namespace",
            *sorted({namespace for namespace, _ in demo.APPS.values()}),
            NAMESPACE,
            "--ignore-not-found",
            "--timeout=120s",
            timeout=130,
        )
        server.stop()
