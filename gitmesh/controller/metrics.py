"""The controller's Prometheus metrics, in a registry of its own (served on ``/metrics``)."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gitmesh.metrics.prometheus import FLEET_COMPLIANCE


class FleetMember(Protocol):
    """A fleet member as the hub shows it (``gitmesh.fleet.model.Seen``, which sits above the
    controller); ``state``'s enum holds every state there is."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> enum.Enum: ...
    @property
    def reason(self) -> str: ...
    @property
    def last_report(self) -> datetime.datetime | None: ...
    @property
    def configurations(self) -> tuple[Mapping[str, Any], ...]: ...  # as its agent reported them


class Fleet(Protocol):
    """A reader of the hub (``gitmesh.fleet.view.FleetView``): its latest members, and why its last
    reading failed, when it did. Neither blocks."""

    @property
    def error(self) -> str: ...
    def members(self) -> Sequence[FleetMember]: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "gitmesh_reconciles",
            "Reconciles of a revision, by source and result (applied, unchanged, invalid, refused, failed).",
            ["source", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gitmesh_reconcile_duration_seconds",
            "Time from the start of a fetch to the recorded result of a reconcile.",
            ["source"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.last_applied = Gauge(
            "gitmesh_last_applied_timestamp_seconds",
            "When the source's current revision was applied (Unix time).",
            ["source"],
            registry=self.registry,
        )
        self.fetches = Counter(
            "gitmesh_fetches", "Fetches of the source's repository.", ["source"], registry=self.registry
        )
        self.suspended_runs = Counter(
            "gitmesh_suspended_runs",
            "Scheduled or requested runs skipped because the source is suspended.",
            ["source"],
            registry=self.registry,
        )
        self.fetch_errors = Counter(
            "gitmesh_fetch_errors", "Fetches that failed.", ["source"], registry=self.registry
        )
        self.webhooks = Counter(
            "gitmesh_webhooks",
            "Webhook requests, by result (accepted, ignored, rejected, invalid).",
            ["result"],
            registry=self.registry,
        )
        self.proxies = Gauge(
            "gitmesh_xds_connected_proxies", "Envoy proxies connected over ADS.", registry=self.registry
        )
        self.nacks = Gauge(
            "gitmesh_xds_nacks",
            "Configurations the connected proxies currently reject (NACKs).",
            registry=self.registry,
        )

        self.cert_expiry = Gauge(
            "gitmesh_certificate_expiry_timestamp_seconds",
            "When the workload certificate gitmesh serves an identity expires (Unix time).",
            ["identity"],
            registry=self.registry,
        )

    def xds(self, report: Mapping[str, Any]) -> None:
        """Take the ADS server's report of its proxies and of the certificates it serves them."""
        self.proxies.set(len(report["proxies"]))
        self.nacks.set(len(report["nacks"]))
        self.cert_expiry.clear()  # identities no proxy holds any more are not reported
        for identity, expires in report.get("certificates", {}).items():
            self.cert_expiry.labels(identity).set(datetime.datetime.fromisoformat(expires).timestamp())

    def watch_fleet(self, members: Callable[[], Sequence[FleetMember]]) -> None:
        """Expose each member's compliance, read when scraped (``members`` must not block)."""
        self.registry.register(_FleetCompliance(members))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _FleetCompliance(Collector):
    """1 for each cluster's current state and 0 for the others, so that every state can be summed
    and a cluster's change of state shows as two series moving."""

    def __init__(self, members: Callable[[], Sequence[FleetMember]]) -> None:
        self.members = members

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            FLEET_COMPLIANCE,
            "A fleet member's compliance as the hub shows it: 1 for its current state, 0 for the others.",
            labels=["cluster", "state"],
        )
        for member in self.members():
            for state in type(member.state):
                family.add_metric([member.name, str(state.value)], 1.0 if state is member.state else 0.0)
        yield family
