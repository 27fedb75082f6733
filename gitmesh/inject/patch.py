"""Sidecar injection as a pure function: a pod, or a workload with a pod template, -> an RFC 6902
JSON patch that adds the mesh to it. The admission webhook and ``gitmesh inject`` share it.

An injected pod gets, before its own init containers:

- ``gitmesh-init``: sets the iptables rules of ``capture`` and exits;
- ``gitmesh-proxy``: Envoy as a native sidecar (an init container with ``restartPolicy: Always``,
  Kubernetes 1.29+), so the app starts once the proxy runs and a Job completes when its app does.
  Its bootstrap is in its arguments and carries no identity: the pod's name, namespace, UID, IP
  and ServiceAccount come from the downward API. Before capture starts, ``gitmesh-init`` proves
  them with the pod's projected ServiceAccount token (audience ``gitmesh``, which only the kubelet
  writes) and gets, for the token's ServiceAccount, the sidecar's xDS client certificate
  (``gitmesh.inject.identity``), checking gitmesh against the mesh's roots (``Config.ca_bundle``,
  which the webhook keeps current); Envoy reads it from a memory volume that only the two share.

Probes: an ``httpGet`` probe over HTTP is rewritten to the sidecar's health port, which forwards it
to the app's port on 127.0.0.1 (so it also works when the app port only takes mTLS); the ports of
``tcpSocket``, ``grpc`` and HTTPS probes are exempted from inbound capture instead.

Idempotent: a pod that has the ``gitmesh.dev/injected`` annotation gets an empty patch.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from gitmesh.inject import capture

INJECT = "gitmesh.dev/inject"  # namespace label (enabled), pod annotation (enabled / disabled)
INJECTED = "gitmesh.dev/injected"  # pod annotation: the patch was applied
EXCLUDE_INBOUND_PORTS = "gitmesh.dev/exclude-inbound-ports"
EXCLUDE_OUTBOUND_PORTS = "gitmesh.dev/exclude-outbound-ports"
EXCLUDE_OUTBOUND_CIDRS = "gitmesh.dev/exclude-outbound-cidrs"
INIT_NAME = "gitmesh-init"
PROXY_NAME = "gitmesh-proxy"
TOKEN_VOLUME = "gitmesh-token"
TOKEN_DIR = "/var/run/secrets/gitmesh"
TOKEN_AUDIENCE = "gitmesh"
IDENTITY_VOLUME = "gitmesh-identity"
IDENTITY_DIR = "/var/run/gitmesh/identity"  # cert.pem, key.pem, bundle.pem: the sidecar's xDS client TLS
CA_BUNDLE_ENV = "GITMESH_CA_BUNDLE"
# The xDS server's SPIFFE ID ends so (gitmesh.xds.bootstrap.SERVER_IDENTITY, whatever the trust domain).
SERVER_ID_SUFFIX = "/ns/gitmesh-system/sa/gitmesh"
PROBE_PREFIX = "/app-health"
ADMIN_CLUSTER = "gitmesh-admin"

# Where the pod template sits in each kind that has one ("" is a Pod itself).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class Config:
    """What every injected pod shares: images, where gitmesh serves xDS, the proxy's ports."""

    proxy_image: str
    init_image: str
    xds_host: str
    xds_port: int
    ca_bundle: str = ""  # the mesh's roots (PEM): what the init container trusts gitmesh by
    identity_port: int = 15017  # where gitmesh answers a pod's token with its certificate (HTTPS)
    proxy_uid: int = 1337
    admin_port: int = 15000
    outbound_port: int = 15001
    inbound_port: int = 15006
    health_port: int = 15021


def wanted(pod: dict[str, Any], *, by_default: bool) -> bool:
    """Whether a pod is to be injected: its annotation decides, else ``by_default`` (its namespace)."""
    value = (pod.get("metadata") or {}).get("annotations", {}).get(INJECT, "")
    if value in ("enabled", "true"):
        return True
    if value in ("disabled", "false"):
        return False
    return by_default


def injected(pod: dict[str, Any]) -> bool:
    return INJECTED in ((pod.get("metadata") or {}).get("annotations") or {})


def object_patch(obj: dict[str, Any], config: Config, *, by_default: bool = True) -> list[dict[str, Any]]:
    """The patch for a Pod or a workload's pod template; [] for other kinds and for pods not wanted.
    ValueError when an annotation of the pod is malformed."""
    path = TEMPLATE_PATHS.get(str(obj.get("kind", "")))
    if path is None:
        return []
    pod: Any = obj
    for key in path:
        pod = pod.get(key) if isinstance(pod, dict) else None
    if not isinstance(pod, dict) or not wanted(pod, by_default=by_default) or injected(pod):
        return []
    prefix = "".join(f"/{key}" for key in path)
    return [{**op, "path": prefix + op["path"]} for op in pod_patch(pod, config)]


def pod_patch(pod: dict[str, Any], config: Config) -> list[dict[str, Any]]:
    """The patch for one pod (or pod template), paths relative to it."""
    if injected(pod):
        return []
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    spec = pod.get("spec") or {}
    routes: list[dict[str, Any]] = []
    exempt: set[int] = {config.health_port}
    ops: list[dict[str, Any]] = []
    for i, container in enumerate(spec.get("containers") or []):
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            rewritten, port = _probe(container, kind, probe, config.health_port)
            if rewritten is not None:
                ops.append({"op": "replace", "path": f"/spec/containers/{i}/{kind}", "value": rewritten})
                routes.append(_probe_route(container["name"], kind, probe["httpGet"], port))
            elif port:
                exempt.add(port)
    rules = capture.Capture(
        proxy_uid=config.proxy_uid,
        inbound_port=config.inbound_port,
        outbound_port=config.outbound_port,
        exclude_inbound_ports=tuple(sorted(exempt | set(_ports(annotations, EXCLUDE_INBOUND_PORTS)))),
        exclude_outbound_ports=_ports(annotations, EXCLUDE_OUTBOUND_PORTS),
        exclude_outbound_cidrs=_cidrs(annotations),
    )
    first = [_init_container(config, rules), _proxy_container(config, routes)]
    if spec.get("initContainers"):
        ops += [{"op": "add", "path": f"/spec/initContainers/{i}", "value": c} for i, c in enumerate(first)]
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": first})
    volume = {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ]
        },
    }
    shared = {"name": IDENTITY_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    if spec.get("volumes"):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in (volume, shared)]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": [volume, shared]})
    mark = {INJECTED: "true"}
    if not metadata:
        ops.append({"op": "add", "path": "/metadata", "value": {"annotations": mark}})
    elif not metadata.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": mark})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations/" + _escape(INJECTED), "value": "true"})
    return ops


def _escape(key: str) -> str:
    """A JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _ports(annotations: dict[str, str], key: str) -> tuple[int, ...]:
    try:
        return capture.parse_ports(annotations.get(key, ""))
    except ValueError as e:
        raise ValueError(f"annotation {key}: {e}") from e


def _cidrs(annotations: dict[str, str]) -> tuple[str, ...]:
    try:
        return capture.parse_cidrs(annotations.get(EXCLUDE_OUTBOUND_CIDRS, ""))
    except ValueError as e:
        raise ValueError(f"annotation {EXCLUDE_OUTBOUND_CIDRS}: {e}") from e


def _container_port(container: dict[str, Any], port: Any) -> int:
    """A probe's port as a number (a named port resolved in its container); 0 if it names none."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return 0


def _probe(
    container: dict[str, Any], kind: str, probe: dict[str, Any], health_port: int
) -> tuple[dict[str, Any] | None, int]:
    """(the rewritten probe, its app port) for a plain-HTTP probe; (None, a port to exempt) otherwise."""
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = _container_port(container, get.get("port"))
        if get.get("scheme", "HTTP").upper() != "HTTP" or not port:
            return None, port
        rewritten = copy.deepcopy(probe)
        rewritten["httpGet"] = {
            "path": f"{PROBE_PREFIX}/{container['name']}/{kind}",
            "port": health_port,
            "scheme": "HTTP",
        }
        return rewritten, port
    for handler in ("tcpSocket", "grpc"):
        if handler in probe:
            return None, _container_port(container, probe[handler].get("port"))
    return None, 0  # exec: runs in the container, no network


def _probe_route(container: str, kind: str, get: dict[str, Any], port: int) -> dict[str, Any]:
    headers = [{"header": {"key": h["name"], "value": h["value"]}} for h in get.get("httpHeaders") or []]
    route: dict[str, Any] = {
        "match": {"path": f"{PROBE_PREFIX}/{container}/{kind}"},
        "route": {"cluster": f"app-{port}", "prefix_rewrite": get.get("path") or "/"},
    }
    if headers:
        route["request_headers_to_add"] = headers
    return route


def _init_container(config: Config, rules: capture.Capture) -> dict[str, Any]:
    args = [
        "capture",
        "--proxy-uid",
        str(rules.proxy_uid),
        "--inbound-port",
        str(rules.inbound_port),
        "--outbound-port",
        str(rules.outbound_port),
        "--identity-url",
        f"https://{config.xds_host}:{config.identity_port}/identity",
        "--token-file",
        f"{TOKEN_DIR}/token",
        "--identity-dir",
        IDENTITY_DIR,
    ]
    for flag, values in (
        ("--exclude-inbound-ports", rules.exclude_inbound_ports),
        ("--exclude-outbound-ports", rules.exclude_outbound_ports),
        ("--exclude-outbound-cidrs", rules.exclude_outbound_cidrs),
    ):
        if values:
            args += [flag, ",".join(str(v) for v in values)]
    return {
        "name": INIT_NAME,
        "image": config.init_image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [{"name": CA_BUNDLE_ENV, "value": config.ca_bundle}],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            # CHOWN: the certificate's key is handed to the proxy's UID alone.
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "CHOWN"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR},
        ],
    }


def _env(name: str, field: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}


def _proxy_container(config: Config, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": PROXY_NAME,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        # Kubernetes expands $(POD_NAME) and the others in the arguments: one bootstrap text per pod.
        "args": [
            "--config-yaml",
            json.dumps(proxy_bootstrap(config, routes), sort_keys=True),
            "--disable-hot-restart",  # one Envoy per container: no shared memory to hand over
        ],
        "env": [
            _env("POD_NAME", "metadata.name"),
            _env("POD_NAMESPACE", "metadata.namespace"),
            _env("POD_UID", "metadata.uid"),
            _env("POD_IP", "status.podIP"),
            _env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "ports": [{"name": "gitmesh-health", "containerPort": config.health_port}],
        # Ready once Envoy is live (its first configuration from gitmesh taken, or given up on
        # after the initial fetch timeout): the app starts after that, and its first call is meshed.
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": config.health_port},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": True}],
    }


def proxy_bootstrap(config: Config, routes: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidecar's bootstrap: who it is comes from the downward API and the token file, nothing
    issued by gitmesh. Static: the admin interface, the health listener (Envoy's readiness from its
    admin interface, and the app's rewritten probes), and the xDS cluster; the rest comes over ADS."""
    ports = sorted({int(r["route"]["cluster"].removeprefix("app-")) for r in routes})
    clusters = [_static_cluster(f"app-{port}", "127.0.0.1", port, "STATIC") for port in ports]
    clusters.append(_static_cluster(ADMIN_CLUSTER, "127.0.0.1", config.admin_port, "STATIC"))
    xds = _static_cluster("gitmesh-xds", config.xds_host, config.xds_port, "STRICT_DNS")
    xds["transport_socket"] = _xds_tls()
    xds["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    # The admin interface is bound to loopback; of it, the health port serves /ready (200 LIVE, else
    # 503) and the stats gitmesh reads (rollouts, top, the console), nothing else.
    ready = {"match": {"path": "/ready"}, "route": {"cluster": ADMIN_CLUSTER}}
    stats = {"match": {"path": "/stats/prometheus"}, "route": {"cluster": ADMIN_CLUSTER}}
    health = {
        "name": "gitmesh-health",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": config.health_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "gitmesh_health",
                            "route_config": {
                                "virtual_hosts": [
                                    {"name": "health", "domains": ["*"], "routes": [ready, stats, *routes]}
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/"
                                        "envoy.extensions.filters.http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return {
        "node": {
            "id": "$(POD_NAMESPACE)/$(POD_NAME)",
            "cluster": "$(POD_NAMESPACE)/$(SERVICE_ACCOUNT)",
            "metadata": {
                "pod_name": "$(POD_NAME)",
                "pod_namespace": "$(POD_NAMESPACE)",
                "pod_uid": "$(POD_UID)",
                "pod_ip": "$(POD_IP)",
                "service_account": "$(SERVICE_ACCOUNT)",
                "admin_address": f"$(POD_IP):{config.health_port}",  # where its stats are read
                "inbound_port": config.inbound_port,
                "outbound_port": config.outbound_port,
            },
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "gitmesh-xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"listeners": [health], "clusters": [*clusters, xds]},
    }


def _xds_tls() -> dict[str, Any]:
    """mTLS to gitmesh with what the init container wrote: the pod's certificate, the mesh's roots;
    the server must be gitmesh's own identity."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": f"{IDENTITY_DIR}/cert.pem"},
                        "private_key": {"filename": f"{IDENTITY_DIR}/key.pem"},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": f"{IDENTITY_DIR}/bundle.pem"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"suffix": SERVER_ID_SUFFIX}}
                    ],
                },
            },
        },
    }


def _static_cluster(name: str, host: str, port: int, kind: str) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
    return {
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
