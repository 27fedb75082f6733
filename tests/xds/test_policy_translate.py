"""Policies in the Envoy translation: retries and faults on the caller's outbound virtual host,
connection limits as the destination cluster's circuit breakers; and real Envoy accepting them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from gitmesh.mesh.state import ConnectionLimits, Fault, MeshState, RetryPolicy, ServiceRef
from gitmesh.xds import resources
from gitmesh.xds.translate import Proxy, Resources, translate
from tests.xds.envoy import ENVOY
from tests.xds.test_translate import BOOKBUYER, BOOKSTORE, BOOKTHIEF, as_static_bootstrap, example

WAREHOUSE = ServiceRef("bookwarehouse", "bookwarehouse")
HOST = "bookwarehouse/bookwarehouse|14001"


def with_policies() -> MeshState:
    return replace(
        example(permissive=True),
        retries=(RetryPolicy(BOOKBUYER.identity, WAREHOUSE, "5xx,reset", 5, 250, 10),),
        limits=(
            ConnectionLimits(WAREHOUSE, max_connections=2, max_pending_requests=1, connect_timeout_ms=500),
        ),
        faults=(Fault(WAREHOUSE, BOOKTHIEF.identity, 25.0, 100, 10.5, 503),),
    )


def virtual_host(res: Resources, name: str = HOST) -> object:
    (host,) = [h for h in res[resources.ROUTE]["outbound"].virtual_hosts if h.name == name]
    return host


def test_retry_is_on_the_source_callers_virtual_host_only() -> None:
    mesh = with_policies()
    retry = virtual_host(translate(mesh, BOOKBUYER)).retry_policy  # type: ignore[attr-defined]
    assert (retry.retry_on, retry.num_retries.value) == ("5xx,reset", 5)
    assert retry.per_try_timeout.ToMilliseconds() == 250
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 10
    assert not virtual_host(translate(mesh, BOOKSTORE)).HasField("retry_policy")  # type: ignore[attr-defined]


def test_connection_limits_are_the_destination_clusters_circuit_breakers() -> None:
    cluster = translate(with_policies(), BOOKSTORE)[resources.CLUSTER][HOST]
    (thresholds,) = cluster.circuit_breakers.thresholds  # type: ignore[attr-defined]
    assert (thresholds.max_connections.value, thresholds.max_pending_requests.value) == (2, 1)
    assert not thresholds.HasField("max_requests")  # not set: Envoy's default
    assert cluster.connect_timeout.ToMilliseconds() == 500  # type: ignore[attr-defined]


def test_fault_reaches_only_its_source_and_the_outbound_listener_has_the_filter() -> None:
    mesh = with_policies()
    thief = translate(mesh, BOOKTHIEF)
    config = fault_pb2.HTTPFault()
    virtual_host(thief).typed_per_filter_config["envoy.filters.http.fault"].Unpack(config)  # type: ignore[attr-defined]
    assert config.delay.fixed_delay.ToMilliseconds() == 100
    assert config.delay.percentage.numerator == 250_000
    assert (config.abort.http_status, config.abort.percentage.numerator) == (503, 105_000)
    assert "envoy.filters.http.fault" not in virtual_host(translate(mesh, BOOKBUYER)).typed_per_filter_config  # type: ignore[attr-defined]
    hcm = hcm_pb2.HttpConnectionManager()
    thief[resources.LISTENER]["outbound"].filter_chains[0].filters[0].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]


def test_a_mesh_without_faults_has_no_fault_filter() -> None:
    hcm = hcm_pb2.HttpConnectionManager()
    listener = translate(example(permissive=True), BOOKBUYER)[resources.LISTENER]["outbound"]
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]


@pytest.mark.integration
@pytest.mark.parametrize("proxy", [BOOKBUYER, BOOKTHIEF], ids=["retry", "fault"])
def test_real_envoy_accepts_the_policies(proxy: Proxy, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(as_static_bootstrap(translate(with_policies(), proxy), proxy)))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
