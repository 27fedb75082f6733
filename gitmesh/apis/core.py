"""The core reader: Services, EndpointSlices and ServiceAccounts into the mesh model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from gitmesh.mesh.state import Endpoint, Identity, Port, Service, ServiceRef

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def namespace(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def identities(service_accounts: Iterable[Mapping[str, Any]]) -> frozenset[Identity]:
    return frozenset(Identity(namespace(sa), sa["metadata"]["name"]) for sa in service_accounts)


def services(
    svcs: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]] = ()
) -> dict[ServiceRef, Service]:
    """Each Service with its ports, and per port the ready endpoints its EndpointSlices list."""
    endpoints: dict[ServiceRef, dict[str, set[Endpoint]]] = defaultdict(lambda: defaultdict(set))
    for s in slices:
        owner = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not owner:
            continue
        ref = ServiceRef(namespace(s), owner)
        for port in s.get("ports") or ():
            for ep in s.get("endpoints") or ():
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for address in ep.get("addresses") or ():
                    endpoints[ref][port.get("name") or ""].add(Endpoint(address, int(port["port"])))
    out = {}
    for svc in svcs:
        ref = ServiceRef(namespace(svc), svc["metadata"]["name"])
        ports = tuple(
            Port(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP", p.get("appProtocol") or "")
            for p in (svc.get("spec") or {}).get("ports") or ()
        )
        by_name = endpoints.get(ref, {})
        spec = svc.get("spec") or {}
        ips = spec.get("clusterIPs") or [spec.get("clusterIP") or ""]
        out[ref] = Service(
            ref,
            ports,
            {p.port: tuple(sorted(by_name.get(p.name, ()))) for p in ports},
            tuple(ip for ip in ips if ip and ip != "None"),
        )
    return out
