"""Small builders for manifests in tests: plain dicts, dumped to YAML where a file is needed."""

from __future__ import annotations

from typing import Any

import yaml


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service_account(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}


def service(ns: str, name: str, *ports: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": f"p{p}", "port": p} for p in ports or (80,)]},
    }


def split(
    ns: str, name: str, root: str, backends: dict[str, int], version: str = "v1alpha4"
) -> dict[str, Any]:
    return {
        "apiVersion": f"split.smi-spec.io/{version}",
        "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"service": root, "backends": [{"service": s, "weight": w} for s, w in backends.items()]},
    }


def http_route(ns: str, name: str, parent: str, backends: dict[str, int], port: int = 80) -> dict[str, Any]:
    """A GAMMA HTTPRoute on Service ``parent`` splitting its traffic among ``backends`` (on ``port``)
    by weight."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent}],
            "rules": [{"backendRefs": [{"name": s, "port": port, "weight": w} for s, w in backends.items()]}],
        },
    }


def route_group(ns: str, name: str, matches: dict[str, str]) -> dict[str, Any]:
    """matches: match name -> pathRegex; every match is GET."""
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"matches": [{"name": n, "pathRegex": p, "methods": ["GET"]} for n, p in matches.items()]},
    }


def tcp_route(ns: str, name: str, *ports: int) -> dict[str, Any]:
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "TCPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"matches": {"ports": list(ports)}},
    }


def target(
    ns: str,
    name: str,
    dest: str,
    sources: list[str],
    group: str,
    matches: list[str] | None = None,
    kind: str = "HTTPRouteGroup",
) -> dict[str, Any]:
    """sources: "ns/sa" identities; dest: the destination service account in ``ns``."""
    rule: dict[str, Any] = {"kind": kind, "name": group}
    if matches is not None:
        rule["matches"] = matches
    return {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": dest, "namespace": ns},
            "rules": [rule],
            "sources": [
                {"kind": "ServiceAccount", "name": s.split("/")[1], "namespace": s.split("/")[0]}
                for s in sources
            ],
        },
    }


def mesh_config(permissive: bool, name: str = "mesh", ns: str = "gitmesh-system") -> dict[str, Any]:
    return {
        "apiVersion": "config.openservicemesh.io/v1alpha2",
        "kind": "MeshConfig",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": permissive}},
    }


def dump(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def bookstore() -> list[dict[str, Any]]:
    """A small consistent mesh: a split bookstore and one caller."""
    return [
        namespace("store"),
        service_account("store", "bookstore"),
        service("store", "bookstore", 80),
        service("store", "bookstore-v1", 80),
        service("store", "bookstore-v2", 80),
        split("store", "bookstore-split", "bookstore", {"bookstore-v1": 90, "bookstore-v2": 10}),
        route_group("store", "routes", {"books": "/books", "buy": "/buy"}),
        target("store", "buyer-to-store", "bookstore", ["buyer/buyer"], "routes", ["books"]),
    ]
