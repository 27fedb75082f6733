"""What one idle gRPC stream costs a grpc.aio server, whatever the server does with it.

The floor under ``ads_bench.py``'s memory per proxy: a server process with a
handler that answers each message with PAYLOAD bytes and keeps nothing, and a
client opening N streams, each on its own connection (as N sidecars would),
sending one message and reading the answer. The server's VmRSS before and after,
divided by N, is what grpc itself holds per connected stream. With ``--tls`` every
connection is mutual TLS, as ``gitmesh run`` serves ADS (ECDSA P-256 certificates from a
throwaway CA).

    python bench/grpc_stream_floor.py [--streams 1000] [--payload 0] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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


async def server(payload: int, pki: Path | None) -> None:
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
    if pki is None:
        port = srv.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
            root_certificates=(pki / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        port = srv.add_secure_port("127.0.0.1:0", credentials)
    await srv.start()
    loop = asyncio.get_running_loop()
    print(port, rss_bytes(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the client has its streams open
    print(rss_bytes(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await srv.stop(None)


async def client(port: int, streams: int, pki: Path | None) -> list[object]:
    held: list[object] = []
    options = [("grpc.use_local_subchannel_pool", 1)]
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
    parser.add_argument("--tls", action="store_true", help="mutual TLS on every connection")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pki", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        asyncio.run(server(args.payload, Path(args.pki) if args.pki else None))
        return 0
    pki = Path(tempfile.mkdtemp(prefix="grpc-floor-")) if args.tls else None
    if pki is not None:
        throwaway_pki(pki)
    child = subprocess.Popen(
        [sys.executable, __file__, "--server", "--payload", str(args.payload), "--pki", str(pki or "")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    port, before = map(int, child.stdout.readline().split())

    async def measure() -> int:
        held = await client(port, args.streams, pki)
        await asyncio.sleep(1)
        child.stdin.write("\n")
        child.stdin.flush()
        after = int(child.stdout.readline())
        for channel in held[::2]:
            await channel.close()  # type: ignore[attr-defined]
        return after

    after = asyncio.run(measure())
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(30)
    per_stream = (after - before) / args.streams
    if pki is not None:
        shutil.rmtree(pki)
    kind = "mutual TLS" if args.tls else "plaintext"
    print(
        f"{args.streams} {kind} streams, {args.payload}-byte answers: server RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, {per_stream / 1024:.1f} KiB per stream"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
