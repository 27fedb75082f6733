"""The policy values of the mesh model as Envoy configuration: retries and faults on a caller's
outbound virtual host, connection limits as the destination cluster's circuit breakers."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from gitmesh.mesh.state import ConnectionLimits, Fault, RetryPolicy

FAULT_FILTER = "envoy.filters.http.fault"


def retry_policy(retry: RetryPolicy) -> route_components_pb2.RetryPolicy:
    return route_components_pb2.RetryPolicy(
        retry_on=retry.retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=retry.retries),
        per_try_timeout=_millis(retry.per_try_timeout_ms),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=_millis(retry.backoff_base_ms)
        ),
    )


def circuit_breakers(limits: ConnectionLimits) -> circuit_breaker_pb2.CircuitBreakers:
    """Envoy's defaults (1024 connections, requests, pending; 3 retries) where a limit is not set."""
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for field, value in (
        ("max_connections", limits.max_connections),
        ("max_requests", limits.max_requests),
        ("max_pending_requests", limits.max_pending_requests),
        ("max_retries", limits.max_retries),
    ):
        if value is not None:
            getattr(thresholds, field).value = value
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def http_fault(fault: Fault) -> fault_pb2.HTTPFault:
    config = fault_pb2.HTTPFault()
    if fault.delay_percent:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=_millis(fault.delay_ms), percentage=_per_million(fault.delay_percent)
            )
        )
    if fault.abort_percent:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(http_status=fault.abort_status, percentage=_per_million(fault.abort_percent))
        )
    return config


def _per_million(percent: float) -> percent_pb2.FractionalPercent:
    # Millionths, so that fractional percents such as 0.5 are carried exactly enough.
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _millis(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
