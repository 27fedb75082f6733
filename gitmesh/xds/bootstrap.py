"""The Envoy bootstrap for one sidecar, and reading a proxy back from its node.

The bootstrap carries everything gitmesh needs to know about a sidecar in the
node's metadata (identity, service, ports), so the ADS server can compute the
proxy's resources from the first request alone.

The ADS connection is mTLS: the bootstrap carries, inline, a certificate for
the sidecar's identity, its key, the mesh's roots, and the SPIFFE ID the
server must present (``XdsClientTls``). The server checks the node's
identity against that certificate. A bootstrap therefore holds a private key:
keep it readable by the sidecar only.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gitmesh.certs import ca
from gitmesh.certs.authority import CaState
from gitmesh.mesh.state import REGEX_MAX_PROGRAM_SIZE, Identity, ServiceRef
from gitmesh.xds.translate import Pod, Proxy, Upstream, local_cluster_name

XDS_CLUSTER = "gitmesh-xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"  # ADS is gRPC: HTTP/2
# Who serves xDS: the control plane's own identity, in the SPIFFE ID of its server certificate.
SERVER_IDENTITY = Identity("gitmesh-system", "gitmesh")
# A bootstrap certificate is only shown when the sidecar (re)connects to xDS; it lives as long as
# the sidecar may run. Its workload certificates are the short-lived ones, renewed over SDS.
BOOTSTRAP_LIFETIME = datetime.timedelta(days=365)


@dataclass(frozen=True)
class XdsClientTls:
    """What a sidecar needs to reach the xDS server over mTLS (all PEM, the server's SPIFFE ID)."""

    cert_pem: str
    key_pem: str
    bundle_pem: str
    server_id: str


def node_id(proxy: Proxy) -> str:
    return f"{proxy.identity.namespace}/{proxy.identity.name}/{proxy.service.name}/{proxy.inbound_port}"


def client_tls(
    state: CaState,
    identity: Identity,
    now: datetime.datetime,
    lifetime: datetime.timedelta = BOOTSTRAP_LIFETIME,
) -> XdsClientTls:
    """A bootstrap certificate for ``identity``, issued by the CA's current signer."""
    issued = ca.issue(state.signing, state.trust_domain, identity, now, lifetime)
    return XdsClientTls(
        issued.cert_pem,
        issued.key_pem,
        "".join(state.bundle()),
        ca.spiffe_id(state.trust_domain, SERVER_IDENTITY),
    )


def bootstrap(
    proxy: Proxy,
    *,
    xds_host: str,
    xds_port: int,
    admin_port: int,
    delta: bool = False,
    tls: XdsClientTls | None = None,
) -> dict[str, Any]:
    """A complete Envoy bootstrap (as JSON-ready data) for ``proxy``; ``delta`` picks incremental xDS,
    ``tls`` an mTLS connection to the server (without it, plaintext)."""
    xds_cluster: dict[str, Any] = {"transport_socket": _xds_tls(tls)} if tls else {}
    return {
        "node": {
            "id": node_id(proxy),
            "cluster": f"{proxy.service.namespace}/{proxy.service.name}",
            "metadata": {
                "namespace": proxy.identity.namespace,
                "service_account": proxy.identity.name,
                "service": proxy.service.name,
                "service_namespace": proxy.service.namespace,
                "app_port": proxy.app_port,
                "outbound_port": proxy.outbound_port,
                "inbound_port": proxy.inbound_port,
                "inbound_address": proxy.inbound_address,
                # Where gitmesh reads this sidecar's stats (rollout analysis): its admin interface.
                "admin_address": f"127.0.0.1:{admin_port}",
                "upstreams": [str(u) for u in proxy.upstreams],
            },
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        # Latency histograms reach /stats only when flushed (default every 5 s); rollout analysis
        # reads them, and its intervals can be a few seconds.
        "stats_flush_interval": "1s",
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    **_static_cluster(local_cluster_name(proxy.app_port), "127.0.0.1", proxy.app_port),
                    # The app gets the protocol the caller's sidecar spoke: HTTP/2 on a gRPC port.
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                            "use_downstream_protocol_config": {
                                "http_protocol_options": {},
                                "http2_protocol_options": {},
                            },
                        }
                    },
                },
                {
                    **_static_cluster(XDS_CLUSTER, xds_host, xds_port),
                    **xds_cluster,
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                },
            ]
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "gitmesh",
                    "static_layer": {"re2.max_program_size.error_level": REGEX_MAX_PROGRAM_SIZE},
                }
            ]
        },
    }


def _xds_tls(tls: XdsClientTls) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": tls.cert_pem},
                        "private_key": {"inline_string": tls.key_pem},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"inline_string": tls.bundle_pem},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": tls.server_id}}
                    ],
                },
            },
        },
    }


def _static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A cluster of one fixed endpoint, written in the bootstrap (the local app, gitmesh's ADS)."""
    endpoint = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def proxy_of(node: base_pb2.Node) -> Proxy:
    """The proxy a node describes; ValueError when its metadata lacks what a gitmesh bootstrap puts there."""
    meta = json_format.MessageToDict(node.metadata)
    try:
        if "pod_uid" in meta:
            return _pod_proxy(meta)
        return Proxy(
            identity=Identity(str(meta["namespace"]), str(meta["service_account"])),
            service=ServiceRef(str(meta["service_namespace"]), str(meta["service"])),
            app_port=int(meta["app_port"]),
            outbound_port=int(meta["outbound_port"]),
            inbound_port=int(meta["inbound_port"]),
            upstreams=tuple(sorted(parse_upstream(str(u)) for u in meta.get("upstreams") or ())),
            inbound_address=str(meta.get("inbound_address") or "127.0.0.1"),
            grpc=node.user_agent_name.startswith("gRPC"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"node {node.id!r} was not bootstrapped by gitmesh: metadata lacks {e}") from e


def _pod_proxy(meta: dict[str, Any]) -> Proxy:
    """An injected pod's sidecar: what the downward API filled in (``gitmesh.inject.patch``)."""
    pod = Pod(str(meta["pod_namespace"]), str(meta["pod_name"]), str(meta["pod_uid"]), str(meta["pod_ip"]))
    if not (pod.namespace and pod.name and pod.uid and meta["service_account"]):
        raise ValueError("an empty pod field")
    ipaddress.ip_address(pod.ip)
    return Proxy(
        identity=Identity(pod.namespace, str(meta["service_account"])),
        service=ServiceRef(pod.namespace, ""),
        app_port=0,
        outbound_port=int(meta["outbound_port"]),
        inbound_port=int(meta["inbound_port"]),
        pod=pod,
    )


def admin_address(node: base_pb2.Node) -> str:
    """The sidecar's admin interface, HOST:PORT, as its bootstrap gives it ("" if it does not)."""
    return str(node.metadata.fields["admin_address"].string_value)


def parse_upstream(text: str, namespace: str = "") -> Upstream:
    """``SERVICE[.NAMESPACE]:PORT=LOCAL_PORT`` (or ``NAMESPACE/SERVICE:PORT=LOCAL_PORT``, as in the
    node metadata); a short name is in ``namespace``. ValueError says what is wrong."""
    target, _, local = text.partition("=")
    name, _, port = target.rpartition(":")
    if "/" in name:
        ns, _, svc = name.partition("/")
    else:
        svc, _, ns = name.partition(".")
        ns = ns or namespace
    if not (svc and ns and port.isdigit() and local.isdigit()):
        raise ValueError(f"{text!r}: expected SERVICE[.NAMESPACE]:PORT=LOCAL_PORT")
    if not (0 < int(port) < 65536 and 0 < int(local) < 65536):
        raise ValueError(f"{text!r}: ports are 1-65535")
    return Upstream(ServiceRef(ns, svc), int(port), int(local))
