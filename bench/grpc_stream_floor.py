"""What one idle gRPC stream costs a grpc.aio server, whatever the server does with it.

The floor under ``ads_bench.py``'s memory per proxy: a server process with a
handler that answers each message with PAYLOAD bytes and keeps nothing, and a
client opening N streams, each on its own connection (as N sidecars would),
sending one message and reading the answer. The server's VmRSS before and after,
divided by N, is what grpc itself holds per connected stream.

    python bench/grpc_stream_floor.py [--streams 1000] [--payload 0]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def server(payload: int) -> None:
    answer = b"x" * payload

    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        async for request in requests:
            del request
            await context.write(answer)

    srv = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1 << 16)])
    method = grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=bytes, response_serializer=bytes
    )
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Stream": method}),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    loop = asyncio.get_running_loop()
    print(port, rss_bytes(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the client has its streams open
    print(rss_bytes(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await srv.stop(None)


async def client(port: int, streams: int) -> list[object]:
    held: list[object] = []
    for _ in range(streams):
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = channel.stream_stream(
            "/floor.Floor/Stream", request_serializer=bytes, response_deserializer=bytes
        )()
        await call.write(b"hello")
        await call.read()
        held += [channel, call]
    return held


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=0, help="bytes in each answer")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        asyncio.run(server(args.payload))
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--server", "--payload", str(args.payload)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    port, before = map(int, child.stdout.readline().split())

    async def measure() -> int:
        held = await client(port, args.streams)
        await asyncio.sleep(1)
        child.stdin.write("\n")
        child.stdin.flush()
        after = int(child.stdout.readline())
        del held
        return after

    after = asyncio.run(measure())
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(30)
    per_stream = (after - before) / args.streams
    print(
        f"{args.streams} streams, {args.payload}-byte answers: server RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, {per_stream / 1024:.1f} KiB per stream"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
