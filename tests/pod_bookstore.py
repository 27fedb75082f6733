"""The bookstore as injected pods on the test node (tests/node.py), applied from Git by gitmesh
installed in the node: what tests/node/test_node.py checks, and what ``make demo-cluster`` shows
(``python -m tests.pod_bookstore``).

The pods are plain pods of the test app, as a user writes them; the webhook injects them. Calls are
made by a pod's app (its ``/fetch``), reached through the API server's pod proxy on its port 8080,
which is no mesh port, so the proxy gets past the sidecar; the call itself then goes through it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from gitmesh import demo
from gitmesh.cli import cli
from gitmesh.install.manifests import NAMESPACE as INSTALL_NAMESPACE
from tests.gitserver import GitHttpServer
from tests.node import NODE_IP, NodeCluster, NodeError, node_up

EXAMPLE_REPO = Path(__file__).resolve().parents[1] / "examples" / "repo"
APP_PORT = 8080
BOOK_PORT = 14001
MYSQL_PORT = 3306
BOOKSTORE = f"http://bookstore.bookstore:{BOOK_PORT}"
# name, namespace, ServiceAccount, labels, the port its app serves
PODS: tuple[tuple[str, str, str, dict[str, str], int], ...] = (
    ("bookstore-v1", "bookstore", "bookstore", {"app": "bookstore", "version": "v1"}, BOOK_PORT),
    ("bookstore-v2", "bookstore", "bookstore", {"app": "bookstore", "version": "v2"}, BOOK_PORT),
    ("bookbuyer", "bookbuyer", "bookbuyer", {"app": "bookbuyer"}, APP_PORT),
    ("bookthief", "bookthief", "bookthief", {"app": "bookthief"}, APP_PORT),
    ("bookwarehouse", "bookwarehouse", "bookwarehouse", {"app": "bookwarehouse"}, APP_PORT),
    ("mysql-v1", "bookwarehouse", "mysql", {"app": "mysql", "version": "v1"}, MYSQL_PORT),
    ("mysql-v2", "bookwarehouse", "mysql", {"app": "mysql", "version": "v2"}, MYSQL_PORT),
)
NAMESPACES = sorted({namespace for _, namespace, _, _, _ in PODS})


def book_pod(
    cluster: NodeCluster,
    name: str,
    namespace: str,
    account: str,
    labels: dict[str, str],
    port: int,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A test-app pod serving ``port``, with nothing of the mesh in it; ``env`` for its app
    (``ERROR_EVERY``: a bad build)."""
    container = {
        "name": "app",
        "image": cluster.images.app,
        "imagePullPolicy": "Never",
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "PORT", "value": str(port)},
            *({"name": k, "value": v} for k, v in (env or {}).items()),
        ],
        "ports": [{"containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "serviceAccountName": account,
            "containers": [container],
            "terminationGracePeriodSeconds": 1,
        },
    }


def _answer(status: int, body: str) -> str:
    """The pod that answered ("200 hello from <pod>"), or the answer as it came."""
    words = body.split()
    return words[3] if status == 200 and words[:3] == ["200", "hello", "from"] else f"{status} {body[:80]}"


@dataclass
class PodBookstore:
    cluster: NodeCluster
    repo: Path
    served: Path

    def buy(self, url: str, caller: str = "bookbuyer") -> tuple[int, str]:
        """The ``caller`` pod's app (in the namespace of its name) GETs ``url``, the mesh doing the rest."""
        query = urllib.parse.urlencode({"url": url})
        status, body = self.cluster.get(
            f"/api/v1/namespaces/{caller}/pods/{caller}:{APP_PORT}/proxy/fetch?{query}"
        )
        return status, body if isinstance(body, str) else json.dumps(body)

    def got(self, url: str, caller: str = "bookbuyer") -> str:
        """The status the ``caller``'s app got for ``url``, or why it got none."""
        status, body = self.buy(url, caller)
        if status == 200:
            return body.split(maxsplit=1)[0]
        return f"no answer: {body.strip().rsplit(': ', 1)[-1]}"  # the app's client error, last part

    def shares(self, count: int) -> dict[str, int]:
        """Which bookstore pod answers each of ``count`` of bookbuyer's calls to the Service's name."""
        return dict(Counter(_answer(*self.buy(f"{BOOKSTORE}/buy-a-book/new")) for _ in range(count)))

    def tcp_answers(self, count: int) -> dict[str, int]:
        """Which mysql pod answers each of ``count`` new connections bookwarehouse opens to the mysql
        Service (a TCP port: split by connection); its app speaks HTTP, which TCP carries as bytes."""
        seen: Counter[str] = Counter()
        for _ in range(count):
            got = self.cluster.kubectl(
                "-n", "bookwarehouse", "exec", "bookwarehouse", "-c", "app", "--",
                "/app", "get", f"http://mysql.bookwarehouse:{MYSQL_PORT}/", check=False,
            )  # fmt: skip
            answer = (
                _answer(200, got.stdout)
                if got.stdout.startswith("200 ")
                else f"{got.returncode} {got.stdout}"
            )
            seen[answer[:80]] += 1
        return dict(seen)

    def commit(self, message: str, *edits: tuple[str, str, str]) -> str:
        """Replace text in files of the mesh (path under it, old, new), commit, push; the new revision."""
        for path, old, new in edits:
            file = self.repo / demo.MESH_PATH / path
            file.write_text(file.read_text().replace(old, new))
        self._git("commit", "-qam", message)
        self._git("push", "-q", str(self.served / "mesh.git"), "main")
        return self._git("rev-parse", "HEAD").strip()

    def _git(self, *args: str) -> str:
        command = [
            "git",
            "-C",
            str(self.repo),
            "-c",
            "user.name=gitmesh",
            "-c",
            "user.email=gitmesh@localhost",
        ]
        return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout


@contextmanager
def running(
    cluster: NodeCluster,
    workdir: Path,
    mesh_files: Mapping[str, str] | None = None,
    before_pods: Callable[[], None] | None = None,
) -> Iterator[PodBookstore]:
    """gitmesh installed with injection, following a copy of examples/repo (and ``mesh_files``: path
    under it -> text) over Git HTTP from this host; ``before_pods`` called once gitmesh runs; the
    bookstore's namespaces labelled for injection and its pods Ready. Uninstalled after."""
    repo, served = workdir / "repo", workdir / "served"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(EXAMPLE_REPO, repo / demo.MESH_PATH)
    for path, text in (mesh_files or {}).items():
        (repo / demo.MESH_PATH / path).write_text(text)
    shop = PodBookstore(cluster, repo, served)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    shop._git("add", "-A")
    shop._git("commit", "-qm", "bookstore")
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(served / "mesh.git")], check=True)
    server = GitHttpServer(served, host=NODE_IP).start()
    install = [
        "install", "--kubeconfig", str(cluster.kubeconfig),
        "--image", cluster.images.gitmesh, "--image-pull-policy", "Never",
        "--proxy-image", cluster.images.envoy,
        "--repo", server.url("mesh.git"), "--path", demo.MESH_PATH, "--interval", "2s",
    ]  # fmt: skip
    try:
        result = CliRunner().invoke(cli, install)
        if result.exit_code != 0:
            raise NodeError(f"gitmesh install failed:\n{result.output}")
        applied = cluster.kubectl
        demo.eventually(
            lambda: (
                applied("-n", "bookstore", "get", "trafficsplit", "bookstore-split", check=False).returncode
            ),
            lambda code: code == 0,
            "the leader applies the bookstore",
            60,
        )
        demo.eventually(
            lambda: json.loads(
                applied("get", "mutatingwebhookconfiguration", "gitmesh-inject", "-o", "json").stdout
            ),
            lambda hook: all(w["clientConfig"].get("caBundle") for w in hook["webhooks"]),
            "a replica publishes the webhook's caBundle",
            30,
        )
        if before_pods is not None:
            before_pods()
        for namespace in NAMESPACES:
            cluster.kubectl("label", "--overwrite", "namespace", namespace, "gitmesh.dev/inject=enabled")
        cluster.apply([book_pod(cluster, *pod) for pod in PODS])
        for name, namespace, *_ in PODS:
            done = cluster.kubectl(
                "-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s",
                timeout=130, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                logs = [
                    cluster.kubectl("-n", namespace, *what, check=False).stdout[-3000:]
                    for what in (
                        ("describe", "pod", name),
                        ("logs", name, "-c", "gitmesh-init"),
                        ("logs", name, "-c", "gitmesh-proxy"),
                    )
                ]
                raise NodeError(f"pod {namespace}/{name} not Ready: {done.stderr}\n" + "\n".join(logs))
        yield shop
    finally:
        CliRunner().invoke(cli, ["uninstall", "--kubeconfig", str(cluster.kubeconfig)])
        cluster.kubectl(
            "delete", "namespace", *NAMESPACES, INSTALL_NAMESPACE, "--ignore-not-found", "--timeout=120s",
            timeout=130,
        )  # fmt: skip
        server.stop()


def _percent(seen: dict[str, int]) -> str:
    total = sum(seen.values())
    return "  ".join(f"{name} {count / total:.0%}" for name, count in sorted(seen.items()))


def main() -> int:
    """``make demo-cluster``: the bookstore on the node, what its traffic does, a commit that moves it."""
    try:
        cluster = node_up()
        print(
            f"The node is up (KUBECONFIG={cluster.kubeconfig}); installing gitmesh and the bookstore pods ..."
        )
        with running(cluster, cluster.directory / "demo-cluster") as shop:
            print("bookbuyer  -> bookstore (100 requests)   " + _percent(_shares_of_both(shop)))
            admin = shop.got(f"{BOOKSTORE}/admin")
            print(f"bookbuyer  -> bookstore /admin          {admin}  (no HTTPRouteGroup match allows it)")
            thief = shop.got(f"{BOOKSTORE}/buy-a-book/new", "bookthief")
            print(f"bookthief  -> bookstore                 {thief}  (no TrafficTarget names it)")
            print("bookwarehouse -> mysql (TCP, 40 connections)  " + _percent(shop.tcp_answers(40)))
            split = "bookstore/split.yaml"
            revision = shop.commit(
                "all to v2", (split, "weight: 75", "weight: 0"), (split, "weight: 25", "weight: 100")
            )
            print(f"\nCommitted: bookstore-split 0/100 ({revision[:12]}); nothing restarts")
            shares = demo.eventually(
                lambda: shop.shares(20), lambda s: set(s) == {"bookstore-v2"}, "all to v2", 60
            )
            print("bookbuyer  -> bookstore (20 requests)    " + _percent(shares))
    except (NodeError, TimeoutError, AssertionError) as exc:
        print(f"demo-cluster: {exc}", file=sys.stderr)
        return 1
    print("\nThe node keeps running: `testenv/down` stops it and removes what it put on this host.")
    return 0


def _shares_of_both(shop: PodBookstore) -> dict[str, int]:
    """A hundred calls once both versions answer (the sidecars take their first config in a moment)."""
    demo.eventually(
        lambda: shop.shares(10), lambda s: set(s) <= {"bookstore-v1", "bookstore-v2"}, "the split", 90
    )
    return shop.shares(100)


if __name__ == "__main__":
    sys.exit(main())
