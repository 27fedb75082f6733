"""Soak: the ADS server under proxies that come and go and proxies that reject everything.

The issue's case: one sidecar certificate opening and closing thousands of streams, each with a
new node key (a new app port each time), and a NACK storm; the server's memory must stay flat and
a split change must reach the connected proxies as fast after the churn as before it.

Processes, as in ``ads_bench.py`` (whose server and load client this reuses): the **server**
(``ads_bench.py _server``: the mesh of ``--services`` services in a ``MeshPublisher``, served over
mTLS as ``gitmesh run`` serves it) and one **load client** holding ``--proxies`` connected proxies
that ACK everything. This process is the orchestrator and the attacker:

1. connects the proxies, times ``--changes`` split changes (until every affected proxy ACKed the
   new routes) and reads the server's RSS at rest;
2. **churn**: ``--churn`` streams over one channel, holding one certificate, each a new node key
   (workload 0's identity and service, app port 20000 + i), ``--concurrency`` at a time; each
   subscribes to listeners, reads the answer and closes;
3. reads the RSS at rest and the number of snapshot keys again, and times the split changes again;
4. **NACK storm**: ``--nack-streams`` streams (new keys again) each reject their listeners
   ``--nacks`` times with a message of ``--nack-bytes``; reads the RSS while they are open and the
   size of the report ``gitmesh run`` would write for ``gitmesh status``; then closes them and
   reads the RSS at rest.

Peaks are the highest RSS read (every 0.1 s) during a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ads_bench  # bench/ is not a package: found on the path just set

ROOT = ads_bench.ROOT
MiB = 1 << 20


class Peak:
    """The highest RSS of ``pid`` read every 0.1 s while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = 0
        self._stop = threading.Event()

    def __enter__(self) -> Peak:
        def sample() -> None:
            while not self._stop.wait(0.1):
                self.value = max(self.value, ads_bench.rss_bytes(self.pid))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Attacker:
    """ADS streams from one sidecar certificate (workload 0's identity), on one mTLS channel."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        import grpc

        from gitmesh.certs import ca, store
        from gitmesh.mesh.state import Identity, ServiceRef

        state = store.FileKeeper(Path(args.ca_file)).load()
        assert state is not None, f"no CA in {args.ca_file}"
        workload = ads_bench.workloads(args.services, 1)[0]
        self.identity = Identity(workload.namespace, workload.service_account)
        self.service = ServiceRef(workload.namespace, workload.service)
        self.address = workload.address  # the service's endpoint it claims to front
        issued = ca.issue(
            state.signing, state.trust_domain, self.identity, datetime.datetime.now(datetime.UTC)
        )
        self.credentials = grpc.ssl_channel_credentials(
            "".join(state.bundle()).encode(), issued.key_pem.encode(), issued.cert_pem.encode()
        )
        self.target = f"127.0.0.1:{port}"

    def node(self, app_port: int) -> Any:
        from envoy.config.core.v3 import base_pb2
        from google.protobuf import json_format

        from gitmesh.xds.bootstrap import bootstrap
        from gitmesh.xds.translate import Proxy

        ports = (app_port, ads_bench.OUTBOUND_PORT, ads_bench.INBOUND_PORT)
        proxy = Proxy(self.identity, self.service, *ports, inbound_address=self.address)
        config = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)
        return json_format.ParseDict(config["node"], base_pb2.Node())

    async def _listeners(self, call: Any, app_port: int) -> Any:
        from envoy.service.discovery.v3 import discovery_pb2

        request = discovery_pb2.DiscoveryRequest(type_url=ads_bench.LDS, node=self.node(app_port))
        await call.write(request)
        return discovery_pb2.DiscoveryResponse.FromString(await asyncio.wait_for(call.read(), 60))

    async def churn(self, count: int, concurrency: int) -> float:
        """``count`` streams, each a new node key, opened and closed; the seconds it took."""
        import grpc

        started = time.monotonic()
        async with grpc.aio.secure_channel(self.target, self.credentials) as channel:
            stream = channel.stream_stream(
                ads_bench.ADS + "StreamAggregatedResources",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )

            async def one(i: int) -> None:
                call = stream()
                await self._listeners(call, 20_000 + i)
                call.cancel()

            for first in range(0, count, concurrency):
                await asyncio.gather(*(one(i) for i in range(first, min(first + concurrency, count))))
        return time.monotonic() - started

    async def nack_storm(self, streams: int, nacks: int, size: int, report: Any) -> Any:
        """Every stream rejects its listeners ``nacks`` times with ``size`` bytes of text; ``report()``
        is called while they are all still connected, and what it returns is returned."""
        import grpc
        from envoy.service.discovery.v3 import discovery_pb2
        from google.rpc import status_pb2

        async with grpc.aio.secure_channel(self.target, self.credentials) as channel:
            stream = channel.stream_stream(
                ads_bench.ADS + "StreamAggregatedResources",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            calls = []
            detail = status_pb2.Status(code=3, message="x" * size)
            for i in range(streams):
                call = stream()
                response = await self._listeners(call, 40_000 + i)
                for _ in range(nacks):
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=ads_bench.LDS, response_nonce=response.nonce, error_detail=detail
                        )
                    )
                calls.append(call)
            await asyncio.sleep(2)  # the server has read them all
            seen = await asyncio.to_thread(report)
            for call in calls:
                call.cancel()
            return seen


def split_changes(
    args: argparse.Namespace, server: ads_bench.Child, client: ads_bench.Child, affected: int
) -> list[float]:
    """Every affected proxy's time to ACK the new routes, over ``--changes`` split changes."""
    latencies: list[float] = []
    for _ in range(args.changes):
        client.ask("arm")
        stamp = server.ask("change", timeout=args.timeout)
        ads_bench._wait([client], server, "changed", affected, args.timeout, 12 << 30)
        times = client.ask("times", timeout=120)
        latencies += [t - stamp["t0"] for t in times["changed"] if t]
    return latencies


def at_rest(server: ads_bench.Child, settle: float) -> dict[str, Any]:
    time.sleep(settle)
    return server.ask("rss", timeout=120)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.TemporaryDirectory(prefix="soak.")
    args.ca_file = str(Path(workdir.name) / "ca.json")
    xds = ["--xds", "mtls", "--ca-file", args.ca_file]
    server = ads_bench.Child("server", ["_server", "--services", str(args.services), *xds])
    client: ads_bench.Child | None = None
    try:
        info = server.read(180)
        argv = ["_client", "--port", str(info["port"]), "--services", str(args.services)]
        argv += ["--proxies", str(args.proxies), "--identities", str(args.proxies), "--mode", "sotw"]
        argv += ["--clients", "1", "--client-index", "0", *xds]
        client = ads_bench.Child("client", argv)
        client.read(120)
        client.ask("connect")
        ads_bench._wait([client], server, "configured", args.proxies, args.timeout, 12 << 30)
        affected = ads_bench.affected_proxies(args.services, args.proxies, args.proxies)
        before = split_changes(args, server, client, affected)
        rest0 = at_rest(server, args.settle)
        print(
            f"  {args.proxies} proxies connected: RSS {rest0['rss'] / MiB:,.1f} MiB, {rest0['keys']} keys",
            flush=True,
        )
        print(
            f"  split change before the churn ({affected} proxies): {ads_bench._summary(before)}", flush=True
        )

        attacker = Attacker(args, info["port"])
        with Peak(server.proc.pid) as churn_peak:
            churn_s = asyncio.run(attacker.churn(args.churn, args.concurrency))
        rest1 = at_rest(server, args.settle)
        print(
            f"  churned {args.churn:,} node keys in {churn_s:.1f} s: "
            f"RSS peak {churn_peak.value / MiB:,.1f} MiB, "
            f"at rest {rest1['rss'] / MiB:,.1f} MiB, {rest1['keys']} keys",
            flush=True,
        )
        after = split_changes(args, server, client, affected)
        print(f"  split change after the churn: {ads_bench._summary(after)}", flush=True)

        with Peak(server.proc.pid) as storm_peak:
            report = asyncio.run(
                attacker.nack_storm(
                    args.nack_streams, args.nacks, args.nack_bytes, lambda: server.ask("report")
                )
            )
        rest2 = at_rest(server, args.settle)
        print(
            f"  NACK storm, {args.nack_streams} x {args.nacks} NACKs of {args.nack_bytes:,} bytes: RSS peak "
            f"{storm_peak.value / MiB:,.1f} MiB, at rest {rest2['rss'] / MiB:,.1f} MiB; report "
            f"{report['nacks']} NACKs, {report['bytes']:,} bytes",
            flush=True,
        )
        return {
            "services": args.services,
            "proxies": args.proxies,
            "affected_proxies": affected,
            "churn": args.churn,
            "churn_s": churn_s,
            "rss_rest_before": rest0["rss"],
            "rss_peak_churn": churn_peak.value,
            "rss_rest_after_churn": rest1["rss"],
            "keys_before": rest0["keys"],
            "keys_after_churn": rest1["keys"],
            "split_before": {
                "p50_s": ads_bench.percentile(before, 0.5),
                "p99_s": ads_bench.percentile(before, 0.99),
            },
            "split_after": {
                "p50_s": ads_bench.percentile(after, 0.5),
                "p99_s": ads_bench.percentile(after, 0.99),
            },
            "nack_storm": {"streams": args.nack_streams, "nacks": args.nacks, "bytes": args.nack_bytes},
            "rss_peak_storm": storm_peak.value,
            "rss_rest_after_storm": rest2["rss"],
            "report_nacks": report["nacks"],
            "report_bytes": report["bytes"],
        }
    finally:
        for child in (client, server):
            if child is not None:
                child.stop()
        workdir.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--proxies", type=int, default=200, help="connected proxies (one key each)")
    parser.add_argument("--churn", type=int, default=10_000, help="node keys opened and closed")
    parser.add_argument("--concurrency", type=int, default=50, help="churned streams open at once")
    parser.add_argument("--changes", type=int, default=3, help="split changes timed before and after")
    parser.add_argument("--nack-streams", type=int, default=6)
    parser.add_argument("--nacks", type=int, default=10, help="NACKs per stream")
    parser.add_argument("--nack-bytes", type=int, default=900 * 1024, help="each NACK's message")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of rest before memory is read")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for each phase")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    print(
        f"soak: Python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"{args.services} services, {args.proxies} proxies, {args.churn:,} churned node keys",
        flush=True,
    )
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
