"""What one idle gRPC stream costs a grpc.aio server, whatever the server does with it.

The floor under ``ads_bench.py``'s memory per proxy: a server process with a
handler that answers each message with PAYLOAD bytes and keeps nothing, and a
client opening N streams, each on its own connection (as N sidecars would),
sending one message (``--messages``: that many, one after the other) and reading each answer.
The server's VmRSS before and after, divided by N, is what grpc itself holds per connected
stream. With ``--tls`` every connection is mutual TLS, as ``gitmesh run`` serves ADS (ECDSA
P-256 certificates from a throwaway CA; ``--dynamic-tls`` serves them through
``grpc.dynamic_ssl_server_credentials``, as ``gitmesh.xds.server`` does).

The server's RSS is read twice after the streams are open: as it is, and after glibc's
``malloc_trim(0)`` (what ``gitmesh.xds.memory.AfterBursts`` does after each burst of responses), so
memory freed but kept by malloc is told apart from memory in use. Every answer is checked byte for
byte by the client (a pseudo-random PAYLOAD bytes), so a setting that breaks large messages fails here.
It also prints how long the client took to open the streams and read the answers and the server's
CPU time, so what a setting costs in throughput shows too (``--streams 100 --payload 8000000``).

Knobs to try what lowers the floor, each applied to the server process only:

- ``--option KEY=VALUE`` (repeatable): a channel argument for ``grpc.aio.server`` (an integer if
  VALUE parses as one), e.g. ``--option grpc.tsi.max_frame_size=4096``;
- ``--mallopt NAME=VALUE`` (repeatable): glibc ``mallopt`` before the server starts, NAME one of
  M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_TEST, M_ARENA_MAX;
- ``--env KEY=VALUE`` (repeatable): an environment variable for the server process, e.g.
  ``MALLOC_ARENA_MAX=2`` or ``GRPC_EXPERIMENTS=...``.

    python bench/grpc_stream_floor.py [--streams 1000] [--payload 0] [--messages 1]
        [--tls [--dynamic-tls]] [--sync] [--option KEY=VALUE ...] [--mallopt NAME=VALUE ...]
        [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# glibc's mallopt parameters (malloc.h).
MALLOPT = {
    "M_TRIM_THRESHOLD": -1,
    "M_TOP_PAD": -2,
    "M_MMAP_THRESHOLD": -3,
    "M_MMAP_MAX": -4,
    "M_ARENA_TEST": -7,
    "M_ARENA_MAX": -8,
}


def answer_bytes(payload: int) -> bytes:
    """What the server answers and the client expects: PAYLOAD pseudo-random bytes, the same on both sides."""
    return random.Random(payload).randbytes(payload)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def channel_option(text: str) -> tuple[str, int | str]:
    key, value = key_value(text)
    try:
        return key, int(value)
    except ValueError:
        return key, value


def malloc_trim() -> None:
    ctypes.CDLL(None).malloc_trim(0)


def apply_mallopt(settings: list[tuple[str, str]]) -> None:
    libc = ctypes.CDLL(None)
    for name, value in settings:
        if libc.mallopt(MALLOPT[name], int(value)) != 1:
            raise RuntimeError(f"mallopt({name}, {value}) failed")


def throwaway_pki(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
        san: list[x509.GeneralName],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor-ca")])
    files = {"ca": cert("floor-ca", ca_key, ca_name, ca_key, True, [])}
    keys = {}
    for who, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), ("client", [])):
        keys[who] = ec.generate_private_key(ec.SECP256R1())
        files[who] = cert(who, keys[who], ca_name, ca_key, False, san)
    for name, c in files.items():
        (directory / f"{name}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    for name, k in keys.items():
        pem = k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (directory / f"{name}.key").write_bytes(pem)


def server_credentials(pki: Path, dynamic_tls: bool) -> grpc.ServerCredentials:
    key_chain = [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())]
    roots = (pki / "ca.pem").read_bytes()
    if dynamic_tls:
        config = grpc.ssl_server_certificate_configuration(key_chain, roots)
        return grpc.dynamic_ssl_server_credentials(config, lambda: None, require_client_authentication=True)
    return grpc.ssl_server_credentials(key_chain, root_certificates=roots, require_client_auth=True)


def listen(srv: grpc.Server | grpc.aio.Server, pki: Path | None, dynamic_tls: bool) -> int:
    if pki is None:
        return srv.add_insecure_port("127.0.0.1:0")
    return srv.add_secure_port("127.0.0.1:0", server_credentials(pki, dynamic_tls))


def report() -> None:
    """The RSS with the client's streams open, then after malloc_trim, and the CPU so far."""
    after = rss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    malloc_trim()
    print(after, rss_bytes(), usage.ru_utime + usage.ru_stime, flush=True)


async def server(
    payload: int, pki: Path | None, dynamic_tls: bool, options: list[tuple[str, int | str]]
) -> None:
    answer = answer_bytes(payload)

    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        # context.read(), as gitmesh's server reads: the request iterator keeps the last message.
        while (request := await context.read()) is not grpc.aio.EOF:
            del request
            await context.write(answer)

    srv = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1 << 16), *options])
    method = grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=bytes, response_serializer=bytes
    )
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Stream": method}),))
    port = listen(srv, pki, dynamic_tls)
    await srv.start()
    loop = asyncio.get_running_loop()
    print(port, rss_bytes(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the client has its streams open
    report()
    await loop.run_in_executor(None, sys.stdin.readline)
    await srv.stop(None)


def sync_server(
    payload: int, pki: Path | None, dynamic_tls: bool, options: list[tuple[str, int | str]], streams: int
) -> None:
    """grpcio's synchronous server: a thread of its pool per open stream."""
    from concurrent import futures

    answer = answer_bytes(payload)

    def handler(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            del request
            yield answer

    threads = futures.ThreadPoolExecutor(max_workers=streams + 8)
    srv = grpc.server(
        threads,
        options=[("grpc.max_concurrent_streams", 1 << 16), *options],
        maximum_concurrent_rpcs=streams + 8,
    )
    method = grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=bytes, response_serializer=bytes
    )
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Stream": method}),))
    port = listen(srv, pki, dynamic_tls)
    srv.start()
    print(port, rss_bytes(), flush=True)
    sys.stdin.readline()
    report()
    sys.stdin.readline()
    srv.stop(None)


async def client(port: int, streams: int, payload: int, messages: int, pki: Path | None) -> list[object]:
    held: list[object] = []
    expected = answer_bytes(payload)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    for _ in range(streams):
        if pki is None:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                (pki / "ca.pem").read_bytes(),
                (pki / "client.key").read_bytes(),
                (pki / "client.pem").read_bytes(),
            )
            channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
        call = channel.stream_stream(
            "/floor.Floor/Stream", request_serializer=bytes, response_deserializer=bytes
        )()
        for _ in range(messages):
            await call.write(b"hello")
            answer = await call.read()
            if answer != expected:
                got = len(answer) if isinstance(answer, bytes) else answer
                raise SystemExit(f"stream {len(held) // 2}: wrong answer ({got} bytes, expected {payload})")
        held += [channel, call]
    return held


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=0, help="bytes in each answer")
    parser.add_argument("--messages", type=int, default=1, help="messages each stream sends, each answered")
    parser.add_argument("--tls", action="store_true", help="mutual TLS on every connection")
    parser.add_argument(
        "--dynamic-tls",
        action="store_true",
        help="with --tls: grpc.dynamic_ssl_server_credentials, as gitmesh.xds.server serves",
    )
    parser.add_argument(
        "--option",
        type=channel_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a channel argument for the server (repeatable)",
    )
    parser.add_argument(
        "--mallopt",
        type=key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"glibc mallopt in the server before it starts (repeatable): {', '.join(MALLOPT)}",
    )
    parser.add_argument(
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server process (repeatable)",
    )
    parser.add_argument(
        "--sync", action="store_true", help="grpcio's synchronous server (a thread per stream), not grpc.aio"
    )
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pki", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, _ in args.mallopt:
        if name not in MALLOPT:
            parser.error(f"--mallopt {name}: not one of {', '.join(MALLOPT)}")
    if args.server:
        apply_mallopt(args.mallopt)
        pki = Path(args.pki) if args.pki else None
        if args.sync:
            sync_server(args.payload, pki, args.dynamic_tls, args.option, args.streams)
        else:
            asyncio.run(server(args.payload, pki, args.dynamic_tls, args.option))
        return 0
    pki = Path(tempfile.mkdtemp(prefix="grpc-floor-")) if args.tls else None
    if pki is not None:
        throwaway_pki(pki)
    command = [sys.executable, __file__, "--server", "--payload", str(args.payload), "--pki", str(pki or "")]
    command += (
        ["--dynamic-tls"] * args.dynamic_tls + ["--sync"] * args.sync + ["--streams", str(args.streams)]
    )
    for key, value in args.option:
        command += ["--option", f"{key}={value}"]
    for name, value in args.mallopt:
        command += ["--mallopt", f"{name}={value}"]
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **dict(args.env)},
    )
    assert child.stdin is not None and child.stdout is not None
    port, before = map(int, child.stdout.readline().split())

    async def measure() -> tuple[float, int, int, float]:
        start = time.monotonic()
        held = await client(port, args.streams, args.payload, args.messages, pki)
        elapsed = time.monotonic() - start
        await asyncio.sleep(1)
        child.stdin.write("\n")
        child.stdin.flush()
        after, trimmed, cpu = child.stdout.readline().split()
        for channel in held[::2]:
            await channel.close()  # type: ignore[attr-defined]
        return elapsed, int(after), int(trimmed), float(cpu)

    elapsed, after, trimmed, cpu = asyncio.run(measure())
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(30)
    if pki is not None:
        shutil.rmtree(pki)
    kind = (
        ("mutual TLS (dynamic credentials)" if args.dynamic_tls else "mutual TLS")
        if args.tls
        else "plaintext"
    ) + (" (sync server)" if args.sync else "")
    settings = [f"{k}={v}" for k, v in (*args.option, *args.mallopt, *args.env)]
    print(
        f"{args.streams} {kind} streams, {args.payload}-byte answers, opened and answered in {elapsed:.1f} s "
        f"(server CPU {cpu:.1f} s)"
        f"{' with ' + ' '.join(settings) if settings else ''}: server RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, {(after - before) / args.streams / 1024:.1f} KiB per stream; "
        f"after malloc_trim {trimmed / 2**20:.1f} MiB, {(trimmed - before) / args.streams / 1024:.1f} KiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
