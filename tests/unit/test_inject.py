"""Sidecar injection's pure parts: the patch for each kind, probes, opt-out, idempotency, the
capture rules, and ``gitmesh inject`` over multi-document YAML."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import replace
from typing import Any

import jsonpatch
import pytest
import yaml
from click.testing import CliRunner

from gitmesh.certs import ca
from gitmesh.cli import cli
from gitmesh.inject import capture, patch, webhook
from gitmesh.xds.bootstrap import SERVER_IDENTITY

CONFIG = patch.Config("localhost/envoy:1", "localhost/gitmesh:dev", "gitmesh.gitmesh-system.svc", 15010)
CONFIG_ARGS = ["--xds-address", "gitmesh.gitmesh-system.svc:15010"]


def app(**extra: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "image": "localhost/gitmesh-test-app:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        **extra,
    }


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "bookstore"},
        "spec": {"containers": [app()], **spec},
    }


def injected(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(obj, patch.object_patch(obj, CONFIG))
    return result


def template(obj: dict[str, Any]) -> dict[str, Any]:
    for key in patch.TEMPLATE_PATHS[obj["kind"]]:
        obj = obj[key]
    return obj


def init_args(spec: dict[str, Any]) -> list[str]:
    init = spec["initContainers"][0]
    assert init["name"] == patch.INIT_NAME
    args: list[str] = init["args"]
    return args


def test_a_pod_gets_capture_then_a_native_sidecar_then_its_own_init_containers() -> None:
    own = {"name": "migrate", "image": "localhost/gitmesh-test-app:1"}
    result = injected(pod(initContainers=[own], volumes=[{"name": "data", "emptyDir": {}}]))
    spec = result["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [patch.INIT_NAME, patch.PROXY_NAME, "migrate"]
    proxy = spec["initContainers"][1]
    assert proxy["restartPolicy"] == "Always"
    assert proxy["securityContext"]["runAsUser"] == CONFIG.proxy_uid
    assert [v["name"] for v in spec["volumes"]] == ["data", patch.TOKEN_VOLUME, patch.IDENTITY_VOLUME]
    token = spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == patch.TOKEN_AUDIENCE
    # The token goes to the init container alone; the certificate it gets, to the proxy too.
    init = spec["initContainers"][0]
    assert {m["name"] for m in init["volumeMounts"]} == {patch.TOKEN_VOLUME, patch.IDENTITY_VOLUME}
    assert [m["name"] for m in proxy["volumeMounts"]] == [patch.IDENTITY_VOLUME]
    assert proxy["volumeMounts"][0]["readOnly"] is True
    assert result["metadata"]["annotations"] == {patch.INJECTED: "true"}
    assert spec["containers"] == [app()]  # no probes: the app is left as it was


def test_the_bootstrap_carries_no_identity_only_the_downward_api() -> None:
    proxy = injected(pod())["spec"]["initContainers"][1]
    assert proxy["args"][0] == "--config-yaml"
    bootstrap = json.loads(proxy["args"][1])
    assert bootstrap["node"]["id"] == "$(POD_NAMESPACE)/$(POD_NAME)"
    assert bootstrap["node"]["metadata"]["service_account"] == "$(SERVICE_ACCOUNT)"
    assert {e["name"] for e in proxy["env"]} == {
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_UID",
        "POD_IP",
        "SERVICE_ACCOUNT",
    }
    text = proxy["args"][1]
    assert "BEGIN" not in text  # no certificate, no key: nothing issued at injection
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "gitmesh-xds")
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": CONFIG.xds_host, "port_value": CONFIG.xds_port}
    # mTLS to gitmesh with the files the init container writes; the server must be gitmesh itself.
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["tls_certificates"][0]["private_key"] == {"filename": f"{patch.IDENTITY_DIR}/key.pem"}
    names = context["validation_context"]["match_typed_subject_alt_names"]
    assert names == [{"san_type": "URI", "matcher": {"suffix": patch.SERVER_ID_SUFFIX}}]
    assert ca.spiffe_id("any.domain", SERVER_IDENTITY).endswith(patch.SERVER_ID_SUFFIX)


def test_the_init_container_trades_the_token_for_the_certificate_before_capture() -> None:
    config = replace(CONFIG, ca_bundle="-----BEGIN CERTIFICATE-----\n")
    init = jsonpatch.apply_patch(pod(), patch.object_patch(pod(), config))["spec"]["initContainers"][0]
    args = init["args"]
    assert (
        args[args.index("--identity-url") + 1] == f"https://{CONFIG.xds_host}:{CONFIG.identity_port}/identity"
    )
    assert args[args.index("--token-file") + 1] == f"{patch.TOKEN_DIR}/token"
    assert init["env"] == [{"name": patch.CA_BUNDLE_ENV, "value": config.ca_bundle}]


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("Job", "batch/v1"),
        ("CronJob", "batch/v1"),
    ],
)
def test_a_workload_gets_the_patch_in_its_pod_template(kind: str, api_version: str) -> None:
    body: dict[str, Any] = {
        "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [app()]}}
    }
    if kind == "CronJob":
        body = {"schedule": "* * * * *", "jobTemplate": {"spec": body}}
    workload = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "w"}, "spec": body}
    result = injected(workload)
    spec = template(result)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [patch.INIT_NAME, patch.PROXY_NAME]
    assert template(result)["metadata"]["annotations"] == {patch.INJECTED: "true"}
    assert "annotations" not in result["metadata"]  # the workload's own metadata is untouched


def test_injecting_twice_changes_nothing() -> None:
    once = injected(pod(initContainers=[{"name": "x", "image": "i"}]))
    assert patch.object_patch(once, CONFIG) == []
    assert patch.pod_patch(once, CONFIG) == []


@pytest.mark.parametrize(
    ("value", "by_default", "expected"),
    [
        ("disabled", True, False),
        ("false", True, False),
        ("enabled", False, True),
        ("", True, True),
        ("", False, False),
    ],
)
def test_the_pod_annotation_opts_in_or_out(value: str, by_default: bool, expected: bool) -> None:
    obj = pod()
    if value:
        obj["metadata"]["annotations"] = {patch.INJECT: value}
    assert bool(patch.object_patch(obj, CONFIG, by_default=by_default)) is expected


def test_other_kinds_are_left_alone() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    assert patch.object_patch(service, CONFIG) == []


def test_an_http_probe_goes_to_the_health_port_and_on_to_the_app() -> None:
    probe = {
        "httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
        "periodSeconds": 3,
    }
    result = injected(pod(containers=[app(readinessProbe=probe)]))
    rewritten = result["spec"]["containers"][0]["readinessProbe"]
    assert rewritten == {
        "httpGet": {"path": "/app-health/app/readinessProbe", "port": CONFIG.health_port, "scheme": "HTTP"},
        "periodSeconds": 3,
    }
    bootstrap = json.loads(result["spec"]["initContainers"][1]["args"][1])
    routes = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"]
    route = next(r for r in routes if r["match"]["path"] == "/app-health/app/readinessProbe")
    assert route["route"] == {"cluster": "app-8080", "prefix_rewrite": "/healthz"}
    assert route["request_headers_to_add"] == [{"header": {"key": "X-Probe", "value": "1"}}]
    assert {c["name"] for c in bootstrap["static_resources"]["clusters"]} == {
        "app-8080",
        patch.ADMIN_CLUSTER,
        "gitmesh-xds",
    }
    # The sidecar is ready when Envoy's admin interface says it is live (configured).
    ready = next(r for r in routes if r["match"]["path"] == "/ready")
    assert ready["route"] == {"cluster": patch.ADMIN_CLUSTER}
    assert (
        "8080"
        not in init_args(result["spec"])[init_args(result["spec"]).index("--exclude-inbound-ports") + 1]
    )


def test_the_sidecars_stats_are_read_at_the_pods_address_and_no_more_of_its_admin() -> None:
    result = injected(pod())
    bootstrap = json.loads(result["spec"]["initContainers"][1]["args"][1])
    # Kubernetes puts the pod's address in for $(POD_IP): where gitmesh's rollouts, top and console read.
    assert bootstrap["node"]["metadata"]["admin_address"] == f"$(POD_IP):{CONFIG.health_port}"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    health = bootstrap["static_resources"]["listeners"][0]
    assert health["address"]["socket_address"]["port_value"] == CONFIG.health_port
    routes = health["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    to_admin = {r["match"]["path"] for r in routes if r["route"]["cluster"] == patch.ADMIN_CLUSTER}
    assert to_admin == {"/ready", "/stats/prometheus"}
    assert all("prefix" not in r["match"] for r in routes)  # exact paths only: no other admin page


def test_tcp_grpc_and_https_probe_ports_are_exempt_from_inbound_capture() -> None:
    containers = [
        app(livenessProbe={"tcpSocket": {"port": 8080}}),
        {
            "name": "b",
            "image": "i",
            "readinessProbe": {"grpc": {"port": 9000}},
            "startupProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
        },
    ]
    result = injected(pod(containers=containers))
    args = init_args(result["spec"])
    assert args[args.index("--exclude-inbound-ports") + 1] == "8080,8443,9000,15021"
    assert result["spec"]["containers"] == containers  # not rewritten


def test_exclusion_annotations_reach_the_capture_rules() -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {
        patch.EXCLUDE_INBOUND_PORTS: "9090",
        patch.EXCLUDE_OUTBOUND_PORTS: "3306, 5432",
        patch.EXCLUDE_OUTBOUND_CIDRS: "10.96.0.1/32",
    }
    result = injected(obj)
    args = init_args(result["spec"])
    assert args[args.index("--exclude-inbound-ports") + 1] == "9090,15021"
    assert args[args.index("--exclude-outbound-ports") + 1] == "3306,5432"
    assert args[args.index("--exclude-outbound-cidrs") + 1] == "10.96.0.1/32"
    assert result["metadata"]["annotations"][patch.INJECTED] == "true"


def test_a_malformed_annotation_is_refused_by_name() -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {patch.EXCLUDE_OUTBOUND_CIDRS: "10.0.0.0/33"}
    with pytest.raises(ValueError, match=patch.EXCLUDE_OUTBOUND_CIDRS):
        patch.object_patch(obj, CONFIG)


def test_the_patch_does_not_change_its_input() -> None:
    obj = pod(containers=[app(readinessProbe={"httpGet": {"path": "/", "port": 8080}})])
    before = copy.deepcopy(obj)
    patch.object_patch(obj, CONFIG)
    assert obj == before


def test_capture_rules_exempt_the_proxy_loopback_and_exclusions() -> None:
    rules = capture.rules(
        capture.Capture(
            proxy_uid=1337,
            inbound_port=15006,
            outbound_port=15001,
            exclude_inbound_ports=(15021, 8080),
            exclude_outbound_ports=(3306,),
            exclude_outbound_cidrs=("10.96.0.1",),
        )
    )
    assert rules.splitlines() == [
        "*nat",
        ":GITMESH_INBOUND - [0:0]",
        ":GITMESH_OUTBOUND - [0:0]",
        "-A PREROUTING -p tcp -j GITMESH_INBOUND",
        "-A OUTPUT -p tcp -j GITMESH_OUTBOUND",
        "-A GITMESH_INBOUND -p tcp --dport 8080 -j RETURN",
        "-A GITMESH_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A GITMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A GITMESH_OUTBOUND -s 127.0.0.6/32 -o lo -j RETURN",
        "-A GITMESH_OUTBOUND ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j GITMESH_INBOUND",
        "-A GITMESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
        "-A GITMESH_OUTBOUND -d 127.0.0.1/32 -j RETURN",
        "-A GITMESH_OUTBOUND -d 10.96.0.1/32 -j RETURN",
        "-A GITMESH_OUTBOUND -p tcp --dport 3306 -j RETURN",
        "-A GITMESH_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
        "COMMIT",
    ]


@pytest.mark.parametrize("text", ["0", "65536", "80,x", "-1"])
def test_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        capture.parse_ports(text)


def test_gitmesh_inject_reads_multi_document_yaml_and_leaves_other_objects() -> None:
    manifests = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}},
        pod(),
        {"apiVersion": "v1", "kind": "List", "items": [pod()]},
    ]
    text = yaml.safe_dump_all(manifests)
    result = CliRunner().invoke(cli, ["inject", "-f", "-", *CONFIG_ARGS], input=text)
    assert result.exit_code == 0, result.output
    service, injected_pod, listed = yaml.safe_load_all(result.output)
    assert service == manifests[0]
    assert injected_pod == injected(pod())
    assert listed["items"] == [injected(pod())]
    again = CliRunner().invoke(cli, ["inject", "-f", "-", *CONFIG_ARGS], input=result.output)
    assert again.output == result.output


def test_gitmesh_inject_names_the_document_with_a_bad_annotation() -> None:
    bad = pod()
    bad["metadata"]["annotations"] = {patch.EXCLUDE_INBOUND_PORTS: "http"}
    result = CliRunner().invoke(
        cli, ["inject", "-f", "-", *CONFIG_ARGS], input=yaml.safe_dump_all([pod(), bad])
    )
    assert result.exit_code == 1
    assert "document 2" in result.output and patch.EXCLUDE_INBOUND_PORTS in result.output


def test_gitmesh_capture_dry_run_prints_the_rules() -> None:
    args = ["capture", "--proxy-uid", "1337", "--inbound-port", "15006", "--outbound-port", "15001"]
    result = CliRunner().invoke(cli, [*args, "--exclude-outbound-cidrs", "10.0.0.0/8", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "-A GITMESH_OUTBOUND -d 10.0.0.0/8 -j RETURN" in result.output
    bad = CliRunner().invoke(cli, [*args, "--exclude-inbound-ports", "99999", "--dry-run"])
    assert bad.exit_code == 2


def admission(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    request = {"uid": "u-1", "operation": operation, "namespace": "bookstore", "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_the_webhook_answers_with_the_same_patch_as_the_command() -> None:
    answer = webhook.review(admission(pod()), CONFIG, by_default=True)["response"]
    assert answer["uid"] == "u-1" and answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(answer["patch"])) == patch.object_patch(pod(), CONFIG)


@pytest.mark.parametrize(("annotation", "by_default"), [("disabled", True), ("", False)])
def test_the_webhook_allows_a_pod_not_wanted_unchanged(annotation: str, by_default: bool) -> None:
    obj = pod()
    if annotation:
        obj["metadata"]["annotations"] = {patch.INJECT: annotation}
    answer = webhook.review(admission(obj), CONFIG, by_default=by_default)["response"]
    assert answer == {"uid": "u-1", "allowed": True}


def test_the_webhook_refuses_a_pod_with_a_malformed_annotation() -> None:
    obj = pod()
    obj["metadata"]["annotations"] = {patch.EXCLUDE_OUTBOUND_PORTS: "mysql"}
    answer = webhook.review(admission(obj), CONFIG, by_default=True)["response"]
    assert answer["allowed"] is False
    assert patch.EXCLUDE_OUTBOUND_PORTS in answer["status"]["message"]


def test_the_webhook_configuration_never_selects_system_namespaces() -> None:
    config = webhook.configuration(
        {"service": {"name": "gitmesh", "namespace": "gitmesh-system", "port": 15017}}, "PEM"
    )
    labelled, opted_in = config["webhooks"]
    for hook in (labelled, opted_in):
        never = hook["namespaceSelector"]["matchExpressions"][0]
        assert never["operator"] == "NotIn" and set(never["values"]) == {"kube-system", "gitmesh-system"}
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == b"PEM"
    assert (labelled["failurePolicy"], labelled["clientConfig"]["service"]["path"]) == ("Fail", "/inject")
    assert (opted_in["failurePolicy"], opted_in["clientConfig"]["service"]["path"]) == (
        "Ignore",
        "/inject-opted-in",
    )
