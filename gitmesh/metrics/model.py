"""The metrics model, pure: per source -> destination service (each backend of a split is a destination
of its own, since the caller's sidecar picks the backend), requests per second, success rate, latency
p50/p90/p99, TCP bytes and connections, and the calls the mesh refused; rollouts and ``gitmesh top``
read it, and the Prometheus rules and the dashboards (``prometheus.py``, ``dashboards.py``) record and
show the same.

It is computed from readings of the sidecars' own Envoy stats (Prometheus text format). A reading is
cumulative and plain JSON data (a rollout keeps its last one as its mark); a window is the difference
between two readings of each sidecar, so that a restarted sidecar (counters back at zero) counts from
zero rather than going negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The upstream stats of the caller's sidecar per destination cluster (``<namespace>/<service>|<port>``).
RESPONSES = "envoy_cluster_upstream_rq_xx"
LATENCY = "envoy_cluster_upstream_rq_time_bucket"
CONNECTIONS = "envoy_cluster_upstream_cx_total"
ACTIVE = "envoy_cluster_upstream_cx_active"
SENT = "envoy_cluster_upstream_cx_tx_bytes_total"
RECEIVED = "envoy_cluster_upstream_cx_rx_bytes_total"
# A caller's requests for a service it may not call, refused by its own sidecar: the outbound
# routes' catch-all has an RBAC policy per service named ``<namespace>/<service>`` (there is no
# cluster of it to count them, as the caller is sent none).
DENIED = "envoy_http_rbac_policy_denied"
DENIED_BY = "outbound"  # the HTTP connection manager whose RBAC filter refuses them
# What to ask the admin endpoint for, so that a sidecar sends only these (and only those it used).
ADMIN_FILTER = (
    "^(cluster\\..+\\.(upstream_rq_[0-9]xx|upstream_rq_time"
    "|upstream_cx_(total|active|tx_bytes_total|rx_bytes_total))"
    f"|http\\.{DENIED_BY}\\.rbac\\.policy\\..+\\.denied)$"
)

# How each wanted line starts, as Envoy writes it (labels in this order, the cluster name's first),
# and what it counts: split at its quotes, a line is read without a regular expression. Counters
# are matched under either name (``_total`` added the OpenMetrics way or not).
_CLUSTER = "envoy_cluster_name="
_CLASS = "envoy_response_code_class="
_POLICY = "envoy_rbac_policy_name="
_HEADS = {
    f"{LATENCY}{{{_CLUSTER}": "bucket",
    f"{RESPONSES}{{{_CLASS}": "responses",
    f"{RESPONSES}_total{{{_CLASS}": "responses",
    f"{CONNECTIONS}{{{_CLUSTER}": "connections",
    f"{ACTIVE}{{{_CLUSTER}": "active",
    f"{SENT}{{{_CLUSTER}": "sent",
    f"{RECEIVED}{{{_CLUSTER}": "received",
    f"{DENIED}{{{_POLICY}": "denied",
    f"{DENIED}_total{{{_POLICY}": "denied",
}

Row = dict[str, Any]  # requests, errors, buckets {le: count}, connections, active, sent, received, denied
Reading = dict[str, Row]  # destination (namespace/service) -> its cumulative row, from one sidecar


def _row() -> Row:
    return {
        "requests": 0.0,
        "errors": 0.0,
        "buckets": {},
        "connections": 0.0,
        "active": 0.0,
        "sent": 0.0,
        "received": 0.0,
        "denied": 0.0,
    }


def parse(text: str) -> Reading:
    """One sidecar's cumulative stats per destination. Only the lines the model needs are read (a
    sidecar of a large mesh has thousands of others); other clusters (the local app's, the ADS
    cluster) have no namespace in their name and are left out. A refused call counts for the
    destination its policy names."""
    out: Reading = {}
    for line in text.split("\n"):
        parts = line.split('"', 5)  # head, value, ..., the rest: '} <number>'
        kind = _HEADS.get(parts[0])
        if kind is None:
            continue
        if kind == "denied":
            # The policy names the destination; other HTTP connection managers' are not refusals.
            backend, sep, value = parts[1], "" if parts[3] != DENIED_BY else "|", parts[4]
        else:
            if kind == "responses":
                code_class, cluster, value = parts[1], parts[3], parts[4]
            elif kind == "bucket":
                cluster, le, value = parts[1], parts[3], parts[4]
            else:
                cluster, value = parts[1], parts[2]
            backend, sep, _port = cluster.partition("|")
        if not sep or "/" not in backend:
            continue
        row = out.get(backend)
        if row is None:
            row = out[backend] = _row()
        number = float(value[2:])
        if kind == "bucket":
            buckets = row["buckets"]
            buckets[le] = buckets.get(le, 0.0) + number
        elif kind == "responses":
            row["requests"] += number
            if code_class == "5":
                row["errors"] += number
        else:
            row[kind] += number
    return out


@dataclass
class Totals:
    """What was sent over a window, summed over sidecars: counts, not yet rates."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # latency ms upper bound -> cumulative count
    connections: float = 0.0  # opened in the window
    active: float = 0.0  # open at the end of it
    sent: float = 0.0  # bytes
    received: float = 0.0
    denied: float = 0.0  # requests the mesh refused (counted apart: they are not in ``requests``)

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for le, count in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + count
        self.connections += other.connections
        self.active += other.active
        self.sent += other.sent
        self.received += other.received
        self.denied += other.denied

    @property
    def success_rate(self) -> float | None:
        return 100.0 * (1 - self.errors / self.requests) if self.requests > 0 else None

    def latency(self, q: float) -> float | None:
        return quantile(q, self.buckets)


Sidecar = tuple[str, Reading]  # the source service (namespace/service, "" when not known), its reading


def window(now: Mapping[str, Sidecar], before: Mapping[str, Sidecar] | None) -> dict[tuple[str, str], Totals]:
    """(source, destination) -> what was sent between two readings of every sidecar (sidecar -> reading)."""
    out: dict[tuple[str, str], Totals] = {}
    empty = _row()
    for sidecar, (source, reading) in now.items():
        old = (before or {}).get(sidecar, ("", {}))[1]
        for destination, row in reading.items():
            prev = old.get(destination, empty)
            restarted = (
                row["requests"] < prev["requests"]
                or row["connections"] < prev.get("connections", 0.0)
                or row.get("denied", 0.0) < prev.get("denied", 0.0)
            )
            base = empty if restarted else prev
            acc = out.get((source, destination))
            if acc is None:
                acc = out[(source, destination)] = Totals()
            acc.add(_difference(row, base))
    return out


def _difference(row: Row, base: Row) -> Totals:
    old = base["buckets"]
    return Totals(
        row["requests"] - base["requests"],
        row["errors"] - base["errors"],
        {float(le): c - old.get(le, 0.0) for le, c in row["buckets"].items()},
        row.get("connections", 0.0) - base.get("connections", 0.0),
        row.get("active", 0.0),
        row.get("sent", 0.0) - base.get("sent", 0.0),
        row.get("received", 0.0) - base.get("received", 0.0),
        row.get("denied", 0.0) - base.get("denied", 0.0),  # a mark kept before refusals were read has none
    )


def per_destination(edges: Mapping[tuple[str, str], Totals]) -> dict[str, Totals]:
    """What each destination got from every source together (what a rollout judges a backend by)."""
    out: dict[str, Totals] = {}
    for (_source, destination), totals in edges.items():
        out.setdefault(destination, Totals()).add(totals)
    return out


@dataclass(frozen=True)
class Edge:
    """One source -> destination over a window, as people read it."""

    source: str
    destination: str
    rps: float
    success_rate: float | None  # percent; None without requests
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    connections: float  # open at the end of the window
    sent_bps: float  # bytes per second, to the destination
    received_bps: float
    denied_rps: float  # requests per second the mesh refused (not in ``rps``)


def edges(totals: Mapping[tuple[str, str], Totals], seconds: float) -> list[Edge]:
    """The edges of a window ``seconds`` long, worst first: refused calls, then lowest success rate,
    then slowest p99."""
    out = [
        Edge(
            source,
            destination,
            t.requests / seconds,
            t.success_rate,
            t.latency(0.5),
            t.latency(0.9),
            t.latency(0.99),
            t.active,
            t.sent / seconds,
            t.received / seconds,
            t.denied / seconds,
        )
        for (source, destination), t in totals.items()
    ]
    return sorted(out, key=_badness)


def _badness(e: Edge) -> tuple[bool, float, float, str, str]:
    rate = 100.0 if e.success_rate is None else e.success_rate
    return (e.denied_rps <= 0, rate, -(e.p99_ms or 0.0), e.source, e.destination)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound -> count), interpolated within its
    bucket as Prometheus's histogram_quantile does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower
