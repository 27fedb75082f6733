"""The Envoy bootstrap for one sidecar, and reading a proxy back from its node.

The bootstrap carries everything gitmesh needs to know about a sidecar in the
node's metadata (identity, service, ports), so the ADS server can compute the
proxy's resources from the first request alone.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gitmesh import smi
from gitmesh.mesh.state import ServiceRef
from gitmesh.smi import Identity
from gitmesh.xds.translate import Proxy, identity_address, local_cluster_name

XDS_CLUSTER = "gitmesh-xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"  # ADS is gRPC: HTTP/2
DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_INBOUND_PORT = 15006


def node_id(proxy: Proxy) -> str:
    return f"{proxy.identity.namespace}/{proxy.identity.name}/{proxy.service.name}/{proxy.inbound_port}"


def bootstrap(
    proxy: Proxy, *, xds_host: str, xds_port: int, admin_port: int, delta: bool = False
) -> dict[str, Any]:
    """A complete Envoy bootstrap (as JSON-ready data) for ``proxy``; ``delta`` picks incremental xDS."""
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
            },
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        # Latency histograms reach /stats only when flushed (default every 5 s); rollout analysis
        # reads them, and its intervals can be a few seconds.
        "stats_flush_interval": "1s",
        # Every connection this sidecar makes comes from its identity's own loopback address: that
        # is how, until mTLS, the destination's RBAC knows who calls.
        "cluster_manager": {
            "upstream_bind_config": {
                "source_address": {"address": identity_address(proxy.identity), "port_value": 0}
            }
        },
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
                    "name": local_cluster_name(proxy.app_port),
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": local_cluster_name(proxy.app_port),
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": proxy.app_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ]
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "gitmesh",
                    "static_layer": {"re2.max_program_size.error_level": smi.REGEX_MAX_PROGRAM_SIZE},
                }
            ]
        },
    }


def proxy_of(node: base_pb2.Node) -> Proxy:
    """The proxy a node describes; ValueError when its metadata lacks what a gitmesh bootstrap puts there."""
    meta = json_format.MessageToDict(node.metadata)
    try:
        return Proxy(
            identity=Identity(str(meta["namespace"]), str(meta["service_account"])),
            service=ServiceRef(str(meta["service_namespace"]), str(meta["service"])),
            app_port=int(meta["app_port"]),
            outbound_port=int(meta["outbound_port"]),
            inbound_port=int(meta["inbound_port"]),
            grpc=node.user_agent_name.startswith("gRPC"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"node {node.id!r} was not bootstrapped by gitmesh: metadata lacks {e}") from e
