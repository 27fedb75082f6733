"""The xDS resource vocabulary: type URLs and the order in which types are pushed.

A leaf module with no imports from the cache or the server, so both (and the
translator) agree on one spelling of every type URL.
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = _PREFIX + "envoy.service.runtime.v3.Runtime"

# Make before break: a cluster (and its endpoints) exists before a listener or
# route refers to it, so an update never points traffic at a missing cluster.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

# Types whose responses always carry every resource the proxy should have.
WILDCARD_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})


def type_url(full_name: str) -> str:
    """The type URL of a protobuf message type, e.g. for ``Cluster.DESCRIPTOR.full_name``."""
    return _PREFIX + full_name


def push_rank(url: str) -> int:
    """Position of a type in a push: the ordered types first, anything else after them."""
    try:
        return PUSH_ORDER.index(url)
    except ValueError:
        return len(PUSH_ORDER)


__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "RUNTIME",
    "SECRET",
    "WILDCARD_TYPES",
    "push_rank",
    "type_url",
]
