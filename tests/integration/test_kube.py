"""gitmesh against a real kube-apiserver, checked with kubectl as the independent client."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gitmesh.cli import cli
from gitmesh.settings import kubernetes
from tests import factory as f
from tests.conftest import EXAMPLE_OBJECTS, EXAMPLE_REPO, GitRepo
from tests.kube import Cluster

pytestmark = pytest.mark.integration


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cluster(crd_cluster: Cluster) -> Cluster:
    return crd_cluster


@pytest.fixture
def mesh(git_repo: GitRepo) -> GitRepo:
    shutil.copytree(EXAMPLE_REPO, git_repo.path / "mesh")
    git_repo.commit("bookstore")
    return git_repo


def gitmesh(c: Cluster, command: str, repo: GitRepo, *args: str) -> Result:
    return run(command, "--repo", repo.path, "--path", "mesh", "--kubeconfig", c.kubeconfig, *args)


def kubectl_json(c: Cluster, *args: str) -> Any:
    return json.loads(c.kubectl("get", "-o", "json", "--show-managed-fields", *args).stdout)


def plan_json(c: Cluster, repo: GitRepo) -> dict[str, Any]:
    result = gitmesh(c, "plan", repo, "--output", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def changed(plan: dict[str, Any]) -> dict[str, str]:
    return {
        f"{c['object']['kind']}/{c['object']['namespace']}/{c['object']['name']}".replace("//", "/"): c[
            "action"
        ]
        for c in plan["changes"]
        if c["action"] != "no-op"
    }


def test_crds_are_established_with_one_served_version(cluster: Cluster) -> None:
    crds = {c["metadata"]["name"]: c for c in kubectl_json(cluster, "crd")["items"]}
    assert set(crds) == {
        "trafficsplits.split.smi-spec.io",
        "traffictargets.access.smi-spec.io",
        "httproutegroups.specs.smi-spec.io",
        "tcproutes.specs.smi-spec.io",
        "udproutes.specs.smi-spec.io",
        "meshconfigs.config.openservicemesh.io",
        "meshrootcertificates.config.openservicemesh.io",
        "envoypatches.gitmesh.dev",
        "retries.policy.openservicemesh.io",
        "upstreamtrafficsettings.policy.openservicemesh.io",
        "egresses.policy.openservicemesh.io",
        "ingressbackends.policy.openservicemesh.io",
        "faultinjections.gitmesh.dev",
        "httproutes.gateway.networking.k8s.io",  # Gateway API's own, as released
        "grpcroutes.gateway.networking.k8s.io",
        "referencegrants.gateway.networking.k8s.io",
    }
    for name, crd in crds.items():
        assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
        served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
        official = {
            "httproutes.gateway.networking.k8s.io": ["v1", "v1beta1"],
            "grpcroutes.gateway.networking.k8s.io": ["v1"],
            "referencegrants.gateway.networking.k8s.io": ["v1", "v1beta1"],
        }
        assert served == official.get(name, served[:1])


def test_an_envoy_patch_keeps_its_free_form_fields(cluster: Cluster) -> None:
    """The merge and JSON patch values are Envoy's, not the CRD's: the API server keeps them whole."""
    merge = {"upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 60}}}
    lua = {"name": "envoy.filters.http.lua", "typed_config": {"@type": "type.googleapis.com/x"}}
    patch = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "EnvoyPatch",
        "metadata": {"name": "tune", "namespace": "default"},
        "spec": {
            "patches": [
                {"type": "Cluster", "merge": merge},
                {"type": "Listener", "jsonPatch": [{"op": "add", "path": "/a/0", "value": lua}]},
            ]
        },
    }
    cluster.kubectl("apply", "--validate=strict", "-f", "-", input=json.dumps(patch))
    try:
        kept = kubectl_json(cluster, "envoypatch", "-n", "default", "tune")["spec"]
        assert kept == patch["spec"]
    finally:
        cluster.kubectl("delete", "envoypatch", "-n", "default", "tune")


def test_the_example_repo_applies_and_kubectl_sees_it(cluster: Cluster, mesh: GitRepo) -> None:
    result = gitmesh(cluster, "apply", mesh)
    assert result.exit_code == 0, result.output
    split = kubectl_json(cluster, "trafficsplit", "-n", "bookstore", "bookstore-split")
    assert [(b["service"], b["weight"]) for b in split["spec"]["backends"]] == [
        ("bookstore-v1", 75),
        ("bookstore-v2", 25),
    ]
    assert split["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gitmesh"
    managers = {m["manager"] for m in split["metadata"]["managedFields"]}
    assert managers == {"gitmesh"}
    # Inferred namespace (bookbuyer.yaml names none) and server defaults on Services.
    svc = kubectl_json(cluster, "service", "-n", "bookbuyer", "bookbuyer")
    assert svc["spec"]["clusterIP"]
    assert svc["spec"]["sessionAffinity"] == "None"
    assert svc["spec"]["ports"][0]["protocol"] == "TCP"
    routes = kubectl_json(cluster, "httproutegroup", "-n", "bookstore", "bookstore-service-routes")
    assert routes["spec"]["matches"][0]["headers"] == [{"user-agent": ".*-http-client/.*"}]


def test_policies_apply_and_the_plan_names_their_effect(cluster: Cluster, git_repo: GitRepo) -> None:
    ns = {"metadata": {"namespace": "shop"}}
    retry = {
        "apiVersion": "policy.openservicemesh.io/v1alpha1",
        "kind": "Retry",
        "metadata": {"name": "retry", **ns["metadata"]},
        "spec": {
            "source": {"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"},
            "destinations": [{"kind": "Service", "name": "bookstore", "namespace": "shop"}],
            "retryPolicy": {
                "retryOn": "5xx",
                "perTryTimeout": "1s",
                "numRetries": 5,
                "retryBackoffBaseInterval": "10ms",
            },
        },
    }
    egress = {
        "apiVersion": "policy.openservicemesh.io/v1alpha1",
        "kind": "Egress",
        "metadata": {"name": "out", **ns["metadata"]},
        "spec": {
            "sources": [{"kind": "ServiceAccount", "name": "bookbuyer", "namespace": "shop"}],
            "hosts": ["api.example.com"],
            "ports": [{"number": 443, "protocol": "tls"}],
        },
    }
    fault = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "FaultInjection",
        "metadata": {"name": "slow", **ns["metadata"]},
        "spec": {
            "destination": {"name": "bookstore", "namespace": "shop"},
            "delay": {"percent": 10, "duration": "1s"},
        },
    }
    objects = (f.namespace("shop"), f.service("shop", "bookstore", 80), retry, egress, fault)
    git_repo.commit("policies", {"mesh/policies.yaml": f.dump(*objects)})
    plan = plan_json(cluster, git_repo)
    assert {"line": "shop/bookbuyer may reach api.example.com:443 (tls)", "change": "gained"} in plan[
        "impact"
    ]["policies"]
    result = gitmesh(cluster, "apply", git_repo)
    assert result.exit_code == 0, result.output
    assert kubectl_json(cluster, "retry", "-n", "shop", "retry")["spec"]["retryPolicy"]["numRetries"] == 5
    assert kubectl_json(cluster, "egress", "-n", "shop", "out")["spec"]["hosts"] == ["api.example.com"]
    assert kubectl_json(cluster, "faultinjection", "-n", "shop", "slow")["spec"]["delay"]["percent"] == 10


def test_a_repo_identical_to_the_cluster_plans_no_changes(cluster: Cluster, mesh: GitRepo) -> None:
    assert gitmesh(cluster, "apply", mesh).exit_code == 0
    plan = plan_json(cluster, mesh)
    assert changed(plan) == {}
    assert plan["summary"]["no-op"] == EXAMPLE_OBJECTS


def test_defaulted_fields_never_show_as_changes(cluster: Cluster, git_repo: GitRepo) -> None:
    svc = f.service("app", "web", 80)  # no protocol, type, sessionAffinity, ipFamilies: all defaulted
    git_repo.commit("web", {"mesh/web.yaml": f.dump(f.namespace("app"), svc)})
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    # Someone else's change bumps the resourceVersion: now the plan must really dry-run and compare.
    cluster.kubectl("annotate", "-n", "app", "service", "web", "note=x")
    plan = plan_json(cluster, git_repo)
    assert changed(plan) == {}, plan["changes"]


def test_plan_agrees_with_kubectl_diff(cluster: Cluster, git_repo: GitRepo, tmp_path: Path) -> None:
    objs = [
        f.namespace("shop"),
        f.service("shop", "api", 80),
        f.service("shop", "api-v1", 80),
        f.service("shop", "api-v2", 80),
        f.split("shop", "api-split", "api", {"api-v1": 90, "api-v2": 10}),
        f.route_group("shop", "routes", {"list": "/items"}),
    ]
    git_repo.commit("shop", {"mesh/shop.yaml": f.dump(*objs)})
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    objs[4] = f.split("shop", "api-split", "api", {"api-v1": 50, "api-v2": 50})
    objs[1] = f.service("shop", "api", 80, 8080)
    objs.append(f.service_account("shop", "new"))
    git_repo.commit("change", {"mesh/shop.yaml": f.dump(*objs)})
    ours = changed(plan_json(cluster, git_repo))
    assert ours == {
        "Service/shop/api": "update",
        "ServiceAccount/shop/new": "create",
        "TrafficSplit/shop/api-split": "update",
    }
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(f.dump(*objs))
    diff = cluster.kubectl("diff", "--server-side", "--force-conflicts", "-f", str(manifest), check=False)
    assert diff.returncode == 1, diff.stderr  # 1: differences found
    # kubectl names each object's diff file group.version.Kind.namespace.name
    theirs = set(
        re.findall(r"^\+\+\+ \S+/[^/\s]*?\.?([A-Za-z]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\s", diff.stdout, re.M)
    )
    assert {f"{kind}/{ns}/{name}" for kind, ns, name in theirs} == set(ours)


def test_drift_is_planned_and_put_back(cluster: Cluster, mesh: GitRepo) -> None:
    assert gitmesh(cluster, "apply", mesh).exit_code == 0
    cluster.kubectl(
        "patch",
        "trafficsplit",
        "-n",
        "bookstore",
        "bookstore-split",
        "--type=merge",
        "-p",
        '{"spec":{"backends":[{"service":"bookstore-v1","weight":0},{"service":"bookstore-v2","weight":100}]}}',
    )
    cluster.kubectl("label", "-n", "bookbuyer", "service", "bookbuyer", "app=changed-by-hand", "--overwrite")
    cluster.kubectl("delete", "-n", "bookthief", "serviceaccount", "bookthief")
    plan = gitmesh(cluster, "plan", mesh)
    assert "drift: changed in the cluster since gitmesh applied it" in plan.output
    assert "deleted from the cluster since gitmesh applied it" in plan.output
    # kubectl patch/label took the fields from gitmesh; the manifest is unchanged, so Git takes them back.
    assert 'taking back from another field manager: conflict with "kubectl-patch"' in plan.output
    assert "bookstore-v1       0% -> 75%" in plan.output
    assert changed(plan_json(cluster, mesh)) == {
        "TrafficSplit/bookstore/bookstore-split": "update",
        "Service/bookbuyer/bookbuyer": "update",
        "ServiceAccount/bookthief/bookthief": "create",
    }
    applied = gitmesh(cluster, "apply", mesh)
    assert applied.exit_code == 0, applied.output
    split = kubectl_json(cluster, "trafficsplit", "-n", "bookstore", "bookstore-split")
    assert [b["weight"] for b in split["spec"]["backends"]] == [75, 25]
    assert (
        kubectl_json(cluster, "service", "-n", "bookbuyer", "bookbuyer")["metadata"]["labels"]["app"]
        == "bookbuyer"
    )
    assert (
        kubectl_json(cluster, "serviceaccount", "-n", "bookthief", "bookthief")["metadata"]["name"]
        == "bookthief"
    )
    assert changed(plan_json(cluster, mesh)) == {}


def test_prune_deletes_only_what_gitmesh_applied(cluster: Cluster, mesh: GitRepo) -> None:
    assert gitmesh(cluster, "apply", mesh).exit_code == 0
    # Someone else's objects, in gitmesh's namespaces: never touched.
    cluster.kubectl("create", "serviceaccount", "-n", "bookthief", "theirs")
    cluster.kubectl("create", "serviceaccount", "-n", "bookthief", "labelled")
    cluster.kubectl(
        "label", "-n", "bookthief", "serviceaccount", "labelled", "app.kubernetes.io/managed-by=gitmesh"
    )
    mesh.remove("mesh/bookthief")
    mesh.commit("drop bookthief")
    plan = plan_json(cluster, mesh)
    assert changed(plan) == {
        "Namespace/bookthief": "delete",
        "ServiceAccount/bookthief/bookthief": "delete",
        "Service/bookthief/bookthief": "delete",
    }
    # Deleting the Namespace would take them with it: refused until the user says so.
    refused = gitmesh(cluster, "apply", mesh)
    assert refused.exit_code == 1
    assert (
        "Namespace/bookthief holds 2: ServiceAccount/bookthief/labelled, ServiceAccount/bookthief/theirs"
        in (refused.output)
    )
    assert gitmesh(cluster, "apply", mesh, "--delete-namespace-contents").exit_code == 0
    namespaces = {n["metadata"]["name"] for n in kubectl_json(cluster, "namespaces")["items"]}
    phase = (
        kubectl_json(cluster, "namespace", "bookthief")["status"]["phase"]
        if "bookthief" in namespaces
        else None
    )
    assert phase in (None, "Terminating")  # no namespace controller here: deletion is requested, not finished


def test_field_conflicts_are_reported_not_forced(cluster: Cluster, mesh: GitRepo, tmp_path: Path) -> None:
    assert gitmesh(cluster, "apply", mesh).exit_code == 0

    def weights() -> list[int]:
        split = kubectl_json(cluster, "trafficsplit", "-n", "bookstore", "bookstore-split")
        return [b["weight"] for b in split["spec"]["backends"]]

    def split_yaml(v1: int, v2: int) -> str:
        return (
            (EXAMPLE_REPO / "bookstore/split.yaml").read_text().replace("75", str(v1)).replace("25", str(v2))
        )

    # Another manager takes the weights, and Git changes them too: not drift, a real disagreement.
    theirs = tmp_path / "split.yaml"
    theirs.write_text(split_yaml(10, 90))
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=hand-edit", "--force-conflicts", "-f", str(theirs)
    )
    mesh.commit("shift", {"mesh/bookstore/split.yaml": split_yaml(60, 40)})
    plan = plan_json(cluster, mesh)
    (split,) = [c for c in plan["changes"] if c["object"]["name"] == "bookstore-split"]
    assert split["action"] == "update"
    assert "hand-edit" in split["conflict"]["detail"]
    assert split["conflict"]["fields"] and all(f.startswith(".spec.") for f in split["conflict"]["fields"])
    assert "take_over" not in split
    refused = gitmesh(cluster, "apply", mesh)
    assert refused.exit_code == 1
    assert "--force-conflicts" in refused.output
    assert weights() == [10, 90]
    assert gitmesh(cluster, "apply", mesh, "--force-conflicts").exit_code == 0
    assert weights() == [60, 40]


def test_older_api_versions_are_converted_and_the_plan_says_so(cluster: Cluster, git_repo: GitRepo) -> None:
    objs = [
        f.namespace("old"),
        f.service("old", "root", 80),
        f.service("old", "v1", 80),
        f.split("old", "s", "root", {"v1": 1}, version="v1alpha2"),
    ]
    git_repo.commit("old", {"mesh/old.yaml": f.dump(*objs)})
    plan = gitmesh(cluster, "plan", git_repo)
    assert "converted from split.smi-spec.io/v1alpha2" in plan.output
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    assert (
        kubectl_json(cluster, "trafficsplit", "-n", "old", "s")["apiVersion"] == "split.smi-spec.io/v1alpha4"
    )
    assert changed(plan_json(cluster, git_repo)) == {}


def bad_service(ns: str, name: str) -> dict[str, Any]:
    """Valid to gitmesh's schema, refused by the server: two ports with one name."""
    svc = f.service(ns, name, 80)
    svc["spec"]["ports"].append({"name": "p80", "port": 81})
    return svc


def test_an_object_the_server_refuses_fails_the_plan_naming_its_file(
    cluster: Cluster, git_repo: GitRepo
) -> None:
    good = [f.namespace("app"), f.service("app", "a", 80)]
    git_repo.commit("good", {"mesh/app.yaml": f.dump(*good)})
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    git_repo.commit("bad", {"mesh/app.yaml": f.dump(*good, bad_service("app", "b"))})
    result = gitmesh(cluster, "plan", git_repo)
    assert result.exit_code == 1
    assert "could not be dry-run applied" in result.output
    assert "Service/app/b (mesh/app.yaml:" in result.output
    assert "422 Invalid" in result.output
    assert "spec.ports[1].name: Duplicate value" in result.output


def test_a_failed_apply_names_the_object_and_the_inventory_stays_true(
    cluster: Cluster, git_repo: GitRepo
) -> None:
    git_repo.commit("good", {"mesh/app.yaml": f.dump(f.namespace("app"), f.service("app", "a", 80))})
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    # In a namespace the same plan creates, nothing can be dry-run: the server refuses only at apply.
    fresh = [f.namespace("fresh"), f.service_account("fresh", "sa"), bad_service("fresh", "b")]
    git_repo.commit("more", {"mesh/fresh.yaml": f.dump(*fresh)})
    result = gitmesh(cluster, "apply", git_repo)
    assert result.exit_code == 1
    assert "could not be applied" in result.output
    assert "Service/fresh/b (mesh/fresh.yaml:" in result.output
    backend = kubernetes(str(cluster.kubeconfig))
    inventory = {str(r) for r in backend.state.inventories.get("default")}
    assert inventory == {"Namespace/app", "Service/app/a", "Namespace/fresh", "ServiceAccount/fresh/sa"}
    assert kubectl_json(cluster, "serviceaccount", "-n", "fresh", "sa")["metadata"]["name"] == "sa"
    (status,) = backend.state.inventories.status()
    assert "Service/fresh/b" in status.last_error
    # Fixing the file converges: the next apply creates the Service and clears the error.
    git_repo.commit("fix", {"mesh/fresh.yaml": f.dump(*fresh[:2], f.service("fresh", "b", 80))})
    assert gitmesh(cluster, "apply", git_repo).exit_code == 0
    (status,) = backend.state.inventories.status()
    assert status.last_error == ""
    assert len(backend.state.inventories.get("default")) == 5


def test_forbidden_and_unreachable_are_clear_errors(cluster: Cluster, mesh: GitRepo, tmp_path: Path) -> None:
    viewer = cluster.kubeconfig_for(tmp_path / "viewer", cluster.viewer_token)
    forbidden = run("apply", "--repo", mesh.path, "--path", "mesh", "--kubeconfig", viewer)
    assert forbidden.exit_code == 1
    assert "403 Forbidden" in forbidden.output
    # The same through the admin kubeconfig's other context, and through $KUBECONFIG.
    by_context = run(
        "plan",
        "--repo",
        mesh.path,
        "--path",
        "mesh",
        "--kubeconfig",
        cluster.kubeconfig,
        "--context",
        "viewer",
    )
    assert by_context.exit_code == 1
    assert "403 Forbidden" in by_context.output
    by_env = CliRunner(env={"KUBECONFIG": str(viewer)}).invoke(
        cli, ["plan", "--repo", str(mesh.path), "--path", "mesh"]
    )
    assert by_env.exit_code == 1
    assert "403 Forbidden" in by_env.output
    down = tmp_path / "down"
    down.write_text(cluster.kubeconfig.read_text().replace(cluster.server, "https://127.0.0.1:1"))
    unreachable = run("plan", "--repo", mesh.path, "--path", "mesh", "--kubeconfig", down)
    assert unreachable.exit_code == 1
    assert "is unreachable" in unreachable.output


ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookstore, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules:
  - matches: [{path: {type: Exact, value: /books-bought}, method: GET}]
    backendRefs: [{name: bookstore-v2, port: 14001}]
  - backendRefs: [{name: bookstore-v1, port: 14001, weight: 9}, {name: bookstore-v2, port: 14001, weight: 1}]
"""


def test_an_http_route_applies_under_the_official_crd_and_a_reinstall_keeps_a_newer_one(
    cluster: Cluster, mesh: GitRepo
) -> None:
    (mesh.path / "mesh" / "bookstore" / "split.yaml").unlink()
    mesh.commit("an HTTPRoute for the bookstore", {"mesh/bookstore/route.yaml": ROUTE})
    result = gitmesh(cluster, "apply", mesh)
    assert result.exit_code == 0, result.output
    route = kubectl_json(cluster, "httproute", "-n", "bookstore", "bookstore")
    # The API server defaulted what the official CRD defaults: a rule's match, a backend's group and kind.
    assert route["spec"]["rules"][1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "Service"
    assert changed(plan_json(cluster, mesh)) == {}  # defaults are no drift

    # Gateway API's CRD installed by someone else (here: a newer release) is left as it is.
    crd = "crd/httproutes.gateway.networking.k8s.io"
    newer = "gateway.networking.k8s.io/bundle-version=v1.7.0"
    cluster.kubectl("annotate", "--overwrite", crd, newer)
    assert run("install", "crds", "--kubeconfig", cluster.kubeconfig).exit_code == 0
    annotations = kubectl_json(cluster, crd)["metadata"]["annotations"]
    assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.7.0"


def test_each_replica_s_xds_report_is_kept_and_status_shows_them_as_one(cluster: Cluster) -> None:
    """Replicas save their reports side by side in ConfigMap gitmesh-xds (a field manager each): one
    saving never drops the other's, and readers get every fresh replica's sidecars."""
    import time

    from gitmesh.state.reports import STALE_SECONDS

    xds = kubernetes(str(cluster.kubeconfig)).state.xds
    now = time.time()
    base = {"proxies": [], "nacks": [], "certificates": {}}
    xds.save({**base, "replica": "gitmesh-a", "at": now, "sidecars": {"10.1.0.1:15021": "b/buyer"}})
    xds.save({**base, "replica": "gitmesh-b", "at": now, "sidecars": {"10.1.0.2:15021": "s/v2"}})
    xds.save({**base, "replica": "gitmesh-a", "at": now + 1, "sidecars": {"10.1.0.3:15021": "b/buyer"}})
    gone = {
        **base,
        "replica": "gitmesh-gone",
        "at": now - STALE_SECONDS - 5,
        "sidecars": {"10.1.0.9:15021": "x/y"},
    }
    xds.save(gone)
    data = kubectl_json(cluster, "-n", "gitmesh-system", "configmap", "gitmesh-xds")["data"]
    assert set(data) == {"gitmesh-a", "gitmesh-b", "gitmesh-gone"}
    result = run("status", "--kubeconfig", cluster.kubeconfig, "-o", "json")
    assert result.exit_code == 0, result.output
    sidecars = json.loads(result.output)["sidecars"]
    assert sidecars["sidecars"] == {"10.1.0.2:15021": "s/v2", "10.1.0.3:15021": "b/buyer"}
    assert set(sidecars["replicas"]) == {"gitmesh-a", "gitmesh-b"}
    text = run("status", "--kubeconfig", cluster.kubeconfig).output
    assert "connected   0 to 2 replicas" in text, text
