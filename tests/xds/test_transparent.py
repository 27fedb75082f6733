"""An injected pod's sidecar: transparent listeners by original destination, keyed by its pod."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format, struct_pb2

from gitmesh import pipeline
from gitmesh.apis import read
from gitmesh.inject import patch
from gitmesh.inject.capture import INBOUND_SOURCE
from gitmesh.mesh.state import Identity, MeshState, ServiceRef
from gitmesh.serve import proxy_key
from gitmesh.sync.git import read_directory
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import proxy_of
from gitmesh.xds.translate import INBOUND_PASSTHROUGH, PASSTHROUGH, Pod, Proxy, Translator
from tests.conftest import EXAMPLE_REPO
from tests.factory import mesh_config
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import as_static_bootstrap

CLUSTER_IPS = {
    ("bookstore", "bookstore"): "10.96.0.20",
    ("bookstore", "bookstore-v1"): "10.96.0.21",
    ("bookstore", "bookstore-v2"): "10.96.0.22",
    ("bookwarehouse", "mysql"): "10.96.0.30",
    ("bookwarehouse", "mysql-v1"): "10.96.0.31",
}


def pod_proxy(account: str, pod: Pod) -> Proxy:
    """An injected pod's sidecar, as its bootstrap describes it (outbound 15001, inbound 15006)."""
    return Proxy(Identity(pod.namespace, account), ServiceRef(pod.namespace, ""), 0, 15001, 15006, pod=pod)


V1_POD = Pod("bookstore", "bookstore-v1-abc", "uid-v1", "10.244.0.7")
V1_PROXY = pod_proxy("bookstore", V1_POD)
BUYER_POD = Pod("bookbuyer", "bookbuyer-xyz", "uid-buyer", "10.244.0.9")
BUYER = pod_proxy("bookbuyer", BUYER_POD)
WAREHOUSE = pod_proxy("bookwarehouse", Pod("bookwarehouse", "bookwarehouse-1", "uid-w", "10.244.0.11"))
THIEF = pod_proxy("bookthief", Pod("bookthief", "bookthief-1", "uid-t", "10.244.0.13"))
MYSQL_V1 = pod_proxy("mysql", Pod("bookwarehouse", "mysql-v1-0", "uid-m", "10.244.0.12"))


def _slice(namespace: str, service: str, port_name: str, port: int, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


def cluster_mesh(permissive: bool = False) -> MeshState:
    """The example bookstore as a cluster holds it: Services with ClusterIPs, pods behind them."""
    objects = []
    for m in pipeline.check(read_directory(str(EXAMPLE_REPO))).desired:
        obj = json.loads(json.dumps(m.obj))
        meta = obj["metadata"]
        ip = CLUSTER_IPS.get((meta.get("namespace"), meta["name"]))
        if obj["kind"] == "Service" and ip:
            obj["spec"]["clusterIP"] = ip
        objects.append(obj)
    objects += [
        _slice("bookstore", "bookstore-v1", "http", 8080, V1_POD.ip),
        _slice("bookstore", "bookstore", "http", 8080, V1_POD.ip),
        _slice("bookwarehouse", "mysql-v1", "mysql", 3306, MYSQL_V1.pod.ip if MYSQL_V1.pod else ""),
    ]
    return read.mesh([*objects, *([mesh_config(True)] if permissive else [])])


def _chains(listener: listener_pb2.Listener) -> dict[str, listener_pb2.FilterChain]:
    return {c.name: c for c in listener.filter_chains}


def _unpack(chain: listener_pb2.FilterChain, cls: type[Any]) -> Any:
    msg = cls()
    for f in chain.filters:
        if f.typed_config.Is(cls.DESCRIPTOR):
            f.typed_config.Unpack(msg)
            return msg
    raise AssertionError(f"no {cls.__name__} in chain {chain.name}")


def test_the_outbound_listener_routes_by_original_destination_and_closes_the_rest() -> None:
    res = Translator(cluster_mesh()).resources(WAREHOUSE)
    outbound = res[resources.LISTENER]["outbound"]
    assert outbound.address.socket_address.address == "0.0.0.0"
    assert outbound.address.socket_address.port_value == 15001
    assert [f.name for f in outbound.listener_filters] == ["envoy.filters.listener.original_dst"]
    chains = _chains(outbound)
    # TCP by ClusterIP and port: mysql is split between its versions.
    mysql = chains["bookwarehouse/mysql|3306"]
    assert mysql.filter_chain_match.destination_port.value == 3306
    assert [r.address_prefix for r in mysql.filter_chain_match.prefix_ranges] == ["10.96.0.30"]
    tcp = _unpack(mysql, tcp_proxy_pb2.TcpProxy)
    assert {c.name for c in tcp.weighted_clusters.clusters} <= {
        "bookwarehouse/mysql-v1|3306",
        "bookwarehouse/mysql-v2|3306",
    }
    # Anything else (the API server, DNS over TCP, the internet) no Egress names is closed...
    assert outbound.default_filter_chain.name == "outbound|refused"
    assert [f.name for f in outbound.default_filter_chain.filters] == [
        "envoy.filters.network.direct_response"
    ]
    # ... unless the MeshConfig lets it out (OSM's enableEgress): then it goes on as it came.
    opened = Translator(replace(cluster_mesh(), egress_open=True)).resources(WAREHOUSE)
    default = _unpack(opened[resources.LISTENER]["outbound"].default_filter_chain, tcp_proxy_pb2.TcpProxy)
    assert default.cluster == PASSTHROUGH
    passthrough = res[resources.CLUSTER][PASSTHROUGH]
    assert passthrough.type == cluster_pb2.Cluster.ORIGINAL_DST


def test_http_by_service_name_or_cluster_ip_is_routed_by_the_mesh() -> None:
    res = Translator(cluster_mesh()).resources(BUYER)
    chain = _chains(res[resources.LISTENER]["outbound"])["outbound|14001"]
    assert {r.address_prefix for r in chain.filter_chain_match.prefix_ranges} >= {"10.96.0.20", "10.96.0.21"}
    hcm = _unpack(chain, hcm_pb2.HttpConnectionManager)
    assert hcm.rds.route_config_name == "outbound"
    hosts = {h.name: h for h in res[resources.ROUTE]["outbound"].virtual_hosts}
    store = hosts["bookstore/bookstore|14001"]
    assert {"bookstore.bookstore:14001", "10.96.0.20:14001", "10.96.0.20"} <= set(store.domains)
    # The split applies whichever way the caller named the service.
    weights = {c.name: c.weight.value for c in store.routes[0].route.weighted_clusters.clusters}
    assert weights == {"bookstore/bookstore-v1|14001": 75, "bookstore/bookstore-v2|14001": 25}


def test_http_to_a_service_the_pod_may_not_call_reaches_its_routes_to_be_refused() -> None:
    mesh = cluster_mesh()
    thief = Translator(mesh).resources(THIEF)
    chain = _chains(thief[resources.LISTENER]["outbound"])["outbound|14001"]
    # Every HTTP service's ClusterIPs, though bookthief may call none: its routes refuse them (403)
    # and its sidecar counts that per destination; it is sent no cluster of them.
    every = {ip for s in mesh.services.values() if any(p.is_http for p in s.ports) for ip in s.cluster_ips}
    assert {r.address_prefix for r in chain.filter_chain_match.prefix_ranges} == every
    assert not [name for name in thief[resources.CLUSTER] if "/" in name]
    (refused,) = [h for h in thief[resources.ROUTE]["outbound"].virtual_hosts if h.name == "refused"]
    assert refused.domains == ["*"]
    # TCP stays closed by the listener: a TCP port of a service it may not call has no chain.
    assert "bookwarehouse/mysql|3306" not in _chains(thief[resources.LISTENER]["outbound"])


def test_the_inbound_listener_takes_mtls_on_the_ports_the_pod_serves_and_hands_on_to_the_app() -> None:
    res = Translator(cluster_mesh()).resources(V1_PROXY)
    inbound = res[resources.LISTENER]["inbound"]
    assert inbound.address.socket_address.port_value == 15006
    assert [f.name for f in inbound.listener_filters] == ["envoy.filters.listener.original_dst"]
    chains = _chains(inbound)
    assert set(chains) == {"inbound|8080"}  # the target port of its endpoints
    served = chains["inbound|8080"]
    assert served.filter_chain_match.destination_port.value == 8080
    assert served.transport_socket.name == "envoy.transport_sockets.tls"
    assert served.filters[0].name == "envoy.filters.network.rbac"  # callers only
    route = res[resources.ROUTE]["inbound"].virtual_hosts[0].routes[0]
    # To the app, at the address the caller sent to, from the one source capture leaves alone.
    assert route.route.cluster == INBOUND_PASSTHROUGH
    default = _unpack(inbound.default_filter_chain, tcp_proxy_pb2.TcpProxy)
    assert default.cluster == INBOUND_PASSTHROUGH
    to_app = res[resources.CLUSTER][INBOUND_PASSTHROUGH]
    assert to_app.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert to_app.upstream_bind_config.source_address.address == INBOUND_SOURCE


def test_a_tcp_port_takes_only_its_allowed_callers_in_the_handshake() -> None:
    res = Translator(cluster_mesh()).resources(MYSQL_V1)
    served = _chains(res[resources.LISTENER]["inbound"])["inbound|3306"]
    assert _unpack(served, tcp_proxy_pb2.TcpProxy).cluster == INBOUND_PASSTHROUGH
    assert served.transport_socket.name == "envoy.transport_sockets.tls"


def test_a_pod_without_endpoints_yet_is_ready_for_the_ports_of_its_namespace() -> None:
    fresh = pod_proxy("bookstore", Pod("bookstore", "bookstore-v2-new", "uid-2", "10.244.0.40"))
    assert set(_chains(Translator(cluster_mesh()).resources(fresh)[resources.LISTENER]["inbound"])) == {
        "inbound|8080"
    }


def test_pods_of_a_scope_share_the_outbound_listener_and_are_keyed_each_by_its_pod() -> None:
    translator = Translator(cluster_mesh())
    other = pod_proxy("bookbuyer", Pod("bookbuyer", "bookbuyer-2", "uid-b2", "10.244.0.10"))
    a, b = translator.resources(BUYER), translator.resources(other)
    assert a[resources.LISTENER]["outbound"] is b[resources.LISTENER]["outbound"]
    assert a[resources.CLUSTER] is b[resources.CLUSTER]
    assert proxy_key(BUYER) != proxy_key(other)


def _node(metadata: dict[str, Any]) -> base_pb2.Node:
    node = base_pb2.Node(id="x")
    node.metadata.CopyFrom(json_format.ParseDict(metadata, struct_pb2.Struct()))
    return node


def test_the_injected_bootstrap_describes_a_pod_proxy() -> None:
    config = patch.Config("envoy", "gitmesh", "gitmesh.gitmesh-system.svc", 15010)
    meta = patch.proxy_bootstrap(config, [])["node"]["metadata"]
    filled = {
        k: v.replace("$(POD_NAME)", "bookbuyer-xyz")
        .replace("$(POD_NAMESPACE)", "bookbuyer")
        .replace("$(POD_UID)", "uid-buyer")
        .replace("$(POD_IP)", "10.244.0.9")
        .replace("$(SERVICE_ACCOUNT)", "bookbuyer")
        if isinstance(v, str)
        else v
        for k, v in meta.items()
    }
    assert proxy_of(_node(filled)) == BUYER
    with pytest.raises(ValueError, match="pod_ip"):
        proxy_of(_node({k: v for k, v in filled.items() if k != "pod_ip"}))
    with pytest.raises(ValueError):
        proxy_of(_node({**filled, "pod_ip": "$(POD_IP)"}))  # not filled in: not a pod's


@pytest.mark.integration
@pytest.mark.parametrize(
    "proxy", [BUYER, V1_PROXY, WAREHOUSE, MYSQL_V1, THIEF], ids=["buyer", "v1", "warehouse", "mysql", "thief"]
)
@pytest.mark.parametrize("permissive", [False, True], ids=["rbac", "permissive"])
def test_real_envoy_accepts_the_transparent_translation(
    proxy: Proxy, permissive: bool, tmp_path: Path
) -> None:
    config = tmp_path / "bootstrap.json"
    res = Translator(cluster_mesh(permissive)).resources(proxy)
    config.write_text(json.dumps(as_static_bootstrap(res, proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout


def test_a_grpc_port_is_http_and_its_cluster_speaks_http2_to_the_app() -> None:
    """``appProtocol: kubernetes.io/h2c`` (HTTP/2 in cleartext, as gRPC servers speak it) is an HTTP
    port whose cluster speaks HTTP/2; the inbound hands on in the protocol the caller used."""
    grpc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "bookstore"},
        "spec": {
            "clusterIP": "10.96.0.40",
            "selector": {"app": "echo"},
            "ports": [{"name": "grpc", "port": 7070, "appProtocol": "kubernetes.io/h2c"}],
        },
    }
    mesh = read.mesh(
        [
            *[
                json.loads(json.dumps(m.obj))
                for m in pipeline.check(read_directory(str(EXAMPLE_REPO))).desired
            ],
            grpc,
            mesh_config(True),
        ]
    )
    (port,) = mesh.services[ServiceRef("bookstore", "echo")].ports
    assert port.is_http and port.is_http2
    res = Translator(mesh).resources(V1_PROXY)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = res[resources.CLUSTER]["bookstore/echo|7070"].typed_extension_protocol_options
    packed["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" not in (
        res[resources.CLUSTER]["bookstore/bookstore|14001"].typed_extension_protocol_options
    )
    to_app = res[resources.CLUSTER][INBOUND_PASSTHROUGH].typed_extension_protocol_options
    to_app["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.HasField("use_downstream_protocol_config")
