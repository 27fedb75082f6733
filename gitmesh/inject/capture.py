"""Transparent capture: the iptables rules an injected pod's init container sets, as pure text.

All TCP a pod sends goes to the sidecar's outbound listener and all TCP it receives to its inbound
listener, by NAT ``REDIRECT`` (the listeners read the original destination, ``SO_ORIGINAL_DST``).
Exempt: the proxy's own traffic (by UID, or it would loop) but for what it sends its own pod,
loopback, and the ports and CIDRs a pod names; inbound also the proxy's own ports (admin, health)
and the probe ports left to the kubelet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Chains of our own, so the rules can be read (and counted) apart from the pod's others.
INBOUND_CHAIN = "GITMESH_INBOUND"
OUTBOUND_CHAIN = "GITMESH_OUTBOUND"
# The source address the sidecar passes what it received on to its app from: the one connection of
# its own to its pod's address that is not captured again.
INBOUND_SOURCE = "127.0.0.6"


@dataclass(frozen=True)
class Capture:
    """What to capture and what to leave alone."""

    proxy_uid: int
    inbound_port: int
    outbound_port: int
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for port in (self.inbound_port, self.outbound_port, *self.exclude_inbound_ports):
            _check_port(port)
        for port in self.exclude_outbound_ports:
            _check_port(port)
        for cidr in self.exclude_outbound_cidrs:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1-65535")


def rules(capture: Capture) -> str:
    """The ``nat`` table for ``iptables-restore --noflush``: our chains, and the jumps to them."""
    lines = [
        "*nat",
        f":{INBOUND_CHAIN} - [0:0]",
        f":{OUTBOUND_CHAIN} - [0:0]",
        f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}",
        f"-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}",
    ]
    for port in sorted(set(capture.exclude_inbound_ports)):
        lines.append(f"-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN")
    lines.append(f"-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {capture.inbound_port}")
    lines += [
        f"-A {OUTBOUND_CHAIN} -s {INBOUND_SOURCE}/32 -o lo -j RETURN",
        # The proxy calling its own pod (a Service whose endpoint is this pod) goes to its own
        # inbound listener, as a call from another pod would, not in mTLS straight to the app.
        f"-A {OUTBOUND_CHAIN} ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {capture.proxy_uid} "
        f"-j {INBOUND_CHAIN}",
        # Its other connections (upstream, xDS) leave as they are.
        f"-A {OUTBOUND_CHAIN} -m owner --uid-owner {capture.proxy_uid} -j RETURN",
        f"-A {OUTBOUND_CHAIN} -d 127.0.0.1/32 -j RETURN",
    ]
    for cidr in sorted({str(ipaddress.ip_network(c, strict=False)) for c in capture.exclude_outbound_cidrs}):
        lines.append(f"-A {OUTBOUND_CHAIN} -d {cidr} -j RETURN")
    for port in sorted(set(capture.exclude_outbound_ports)):
        lines.append(f"-A {OUTBOUND_CHAIN} -p tcp --dport {port} -j RETURN")
    lines += [f"-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {capture.outbound_port}", "COMMIT", ""]
    return "\n".join(lines)


def parse_ports(text: str) -> tuple[int, ...]:
    """``"8080, 9090"`` -> (8080, 9090); ValueError on anything else."""
    ports = tuple(int(p) for p in (part.strip() for part in text.split(",")) if p)
    for port in ports:
        _check_port(port)
    return ports


def parse_cidrs(text: str) -> tuple[str, ...]:
    """``"10.0.0.0/8,192.168.1.1/32"`` -> the CIDRs, each checked; ValueError on a bad one."""
    cidrs = tuple(c for c in (part.strip() for part in text.split(",")) if c)
    for cidr in cidrs:
        ipaddress.ip_network(cidr, strict=False)
    return cidrs
