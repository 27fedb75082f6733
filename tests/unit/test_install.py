"""gitmesh install's objects: what each holds, and that the secrets stay in the Secrets they name."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gitmesh.apis.kinds import KINDS
from gitmesh.cli import cli
from gitmesh.controller.config import load_config
from gitmesh.install.manifests import INSTALL_LABELS, NAMESPACE, InstallOptions, config_file, objects
from gitmesh.plan import crds

OPTIONS = InstallOptions(image="example.org/gitmesh:1", repo="https://git.example.org/mesh.git")


def by_kind(rendered: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in rendered:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def test_every_object_is_labelled_and_lives_in_gitmesh_system() -> None:
    rendered = objects(OPTIONS)
    official = {c["metadata"]["name"] for c in crds.official()}
    assert official == {
        f"{plural}.gateway.networking.k8s.io" for plural in ("httproutes", "grpcroutes", "referencegrants")
    }
    for obj in rendered:
        if obj["metadata"]["name"] in official:  # Gateway API's own, as released: uninstall leaves them
            assert "labels" not in obj["metadata"]
            continue
        assert obj["metadata"]["labels"].items() >= INSTALL_LABELS.items(), obj["kind"]
        cluster_scoped = obj["kind"] in {
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
        }
        assert obj["metadata"].get("namespace") == (None if cluster_scoped else NAMESPACE), obj["kind"]
    kinds = by_kind(rendered)
    assert [c["metadata"]["name"] for c in kinds["CustomResourceDefinition"]] == [
        c["metadata"]["name"] for c in crds.render_all()
    ]
    assert rendered.index(kinds["Namespace"][0]) < rendered.index(kinds["ServiceAccount"][0])


def test_deployment_has_two_replicas_probes_and_rolls_without_a_gap() -> None:
    (deployment,) = by_kind(objects(OPTIONS))["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "example.org/gitmesh:1"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "--leader-election" in container["args"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert spec["template"]["spec"]["serviceAccountName"] == "gitmesh"
    (pdb,) = by_kind(objects(OPTIONS))["PodDisruptionBudget"]
    assert pdb["spec"]["selector"] == spec["selector"]
    services = {s["metadata"]["name"]: s for s in by_kind(objects(OPTIONS))["Service"]}
    every, leader = services["gitmesh"], services["gitmesh-leader"]
    assert {p["name"]: p["port"] for p in every["spec"]["ports"]} == {"xds": 15010, "http": 9090}
    assert every["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert [p["name"] for p in leader["spec"]["ports"]] == ["http"]
    assert leader["spec"]["selector"] == {**spec["selector"]["matchLabels"], "gitmesh.io/leader": "true"}


def test_rbac_grants_leases_and_secrets_only_in_gitmesh_system() -> None:
    kinds = by_kind(objects(OPTIONS))
    (cluster_role,) = kinds["ClusterRole"]
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert "secrets" not in cluster_resources and "leases" not in cluster_resources
    assert {"trafficsplits", "services", "endpointslices", "tokenreviews"} <= cluster_resources
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in cluster_role["rules"])
    (role,) = kinds["Role"]
    assert {r for rule in role["rules"] for r in rule["resources"]} == {
        "configmaps",
        "secrets",
        "leases",
        "pods",
        "certificaterequests",
    }
    assert "certificaterequests" not in cluster_resources
    assert [rule["verbs"] for rule in role["rules"] if rule["resources"] == ["pods"]] == [["patch"]]
    for binding in kinds["ClusterRoleBinding"] + kinds["RoleBinding"]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gitmesh", "namespace": NAMESPACE}]


def test_secrets_are_mounted_by_name_never_inline(tmp_path: Any) -> None:
    options = InstallOptions(
        image="i",
        repo="https://git.example.org/mesh.git",
        branch="main",
        path="mesh",
        git_username="deploy",
        git_secret="mesh-git",
        webhook_secret="mesh-webhook",
    )
    rendered = objects(options)
    assert "Secret" not in by_kind(rendered)
    (deployment,) = by_kind(rendered)["Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["secret"]["secretName"] for v in volumes if "secret" in v} == {"mesh-git", "mesh-webhook"}
    # The configuration file is one the controller reads, pointing at the mounted files.
    path = tmp_path / "config.yaml"
    path.write_text(config_file(options))
    config = load_config(path)
    (source,) = config.sources
    assert (source.url, source.ref.value, source.path) == ("https://git.example.org/mesh.git", "main", "mesh")
    assert source.auth is not None and str(source.auth.password_file) == "/etc/gitmesh/git/password"
    assert str(config.webhook_secret_file) == "/etc/gitmesh/webhook/webhook-secret"
    mounts = {m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {"/etc/gitmesh/git", "/etc/gitmesh/webhook", "/etc/gitmesh/config"} <= mounts


def test_a_git_username_needs_its_secret() -> None:
    with pytest.raises(ValueError, match="go together"):
        InstallOptions(image="i", repo="r", git_username="deploy")


def test_dry_run_prints_the_objects_as_yaml() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "install",
            "--dry-run",
            "-o",
            "yaml",
            "--image",
            "i:1",
            "--repo",
            "https://g/m.git",
            "--replicas",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = list(yaml.safe_load_all(result.output))
    assert printed == objects(InstallOptions(image="i:1", repo="https://g/m.git", replicas=3))


def test_install_without_image_or_repo_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["install", "--dry-run", "--repo", "https://g/m.git"])
    assert result.exit_code == 2
    assert "--image and --repo" in result.output


def test_a_new_configuration_rolls_the_pods_and_the_same_one_does_not() -> None:
    def template(options: InstallOptions) -> Any:
        (deployment,) = by_kind(objects(options))["Deployment"]
        return deployment["spec"]["template"]

    assert template(OPTIONS) == template(InstallOptions(image=OPTIONS.image, repo=OPTIONS.repo))
    assert template(OPTIONS) != template(
        InstallOptions(image=OPTIONS.image, repo=OPTIONS.repo, interval="5m")
    )


def test_a_configuration_the_controller_would_refuse_is_refused_by_install() -> None:
    result = CliRunner().invoke(
        cli, ["install", "--dry-run", "--image", "i:1", "--repo", "https://g/m.git", "--interval", "soon"]
    )
    assert result.exit_code == 1
    assert "'soon' is not a duration" in result.output
    result = CliRunner().invoke(
        cli, ["install", "--dry-run", "--image", "i:1", "--repo", "https://g/m.git", "--source", "Bad_Name"]
    )
    assert result.exit_code == 1
    assert "sources.0.name" in result.output


def test_leader_election_needs_a_cluster(tmp_path: Any) -> None:
    result = CliRunner(env={"KUBECONFIG": None}).invoke(
        cli,
        ["run", "--leader-election", "--store", str(tmp_path / "store.db"), "--xds-address", "127.0.0.1:0"],
    )
    assert result.exit_code == 2, result.output
    assert "--leader-election needs a cluster" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--branch", "main"], "--branch needs --repo"),
        (["--path", "mesh"], "--path needs --repo"),
        (["--repo", ".", "--tag", "v1", "--branch", "main"], "give one of --branch, --tag"),
        (["--repo", ".", "--username", "u"], "--username and --password-file go together"),
        (["--repo", ".", "--interval", "soon"], "'soon' is not a duration"),
        (["--config", __file__, "--repo", "."], "give --config or --repo"),
        (
            ["--config", __file__, "--rollout-webhook", "http://x"],
            "rollout settings go in its rollouts section",
        ),
    ],
)
def test_run_refuses_source_options_that_do_not_fit(tmp_path: Any, args: list[str], message: str) -> None:
    result = CliRunner(env={"KUBECONFIG": None}).invoke(
        cli, ["run", "--store", str(tmp_path / "store.db"), "--xds-address", "127.0.0.1:0", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cluster_role_writes_every_kind_gitmesh_reads() -> None:
    (cluster_role,) = by_kind(objects(OPTIONS))["ClusterRole"]
    granted = {
        (group, resource)
        for rule in cluster_role["rules"]
        if {"get", "list", "watch", "create", "patch", "delete"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert {(k.group, k.plural) for k in KINDS if k.read} <= granted


def test_with_a_proxy_image_install_registers_the_injection_webhook_and_lets_it_keep_its_bundle() -> None:
    assert "MutatingWebhookConfiguration" not in by_kind(objects(OPTIONS))
    kinds = by_kind(objects(InstallOptions(**{**OPTIONS.__dict__, "proxy_image": "example.org/envoy:1"})))
    (registration,) = kinds["MutatingWebhookConfiguration"]
    for hook in registration["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]  # the controller's field, not install's
        assert hook["clientConfig"]["service"]["name"] == "gitmesh"
    args = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--inject-proxy-image") + 1] == "example.org/envoy:1"
    assert args[args.index("--inject-init-image") + 1] == OPTIONS.image
    rule = next(
        r for r in kinds["ClusterRole"][0]["rules"] if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert rule["resourceNames"] == ["gitmesh-inject"] and set(rule["verbs"]) == {"get", "patch"}
    service = next(s for s in kinds["Service"] if s["metadata"]["name"] == "gitmesh")
    assert {p["name"] for p in service["spec"]["ports"]} == {"xds", "http", "inject"}
