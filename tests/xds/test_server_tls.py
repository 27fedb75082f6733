"""The xDS server over mTLS, as gitmesh run serves it, against grpcio clients holding various
certificates: the node must be the identity its certificate names, and gets only its own secrets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from gitmesh.apis.core import SERVICE_NAME_LABEL
from gitmesh.certs import ca
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.serve import MeshPublisher, endpoint_addresses, unbacked_claim
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.server import RunningServer, serve
from gitmesh.xds.translate import Proxy
from tests import factory as f

ALICE = Proxy(Identity("app", "alice"), ServiceRef("app", "alice"), 8080, 15001, 15006)
BOB = Proxy(Identity("app", "bob"), ServiceRef("app", "bob"), 8081, 15002, 15007)


def node(proxy: Proxy) -> base_pb2.Node:
    config = bootstrap(proxy, xds_host="127.0.0.1", xds_port=1, admin_port=0)
    return json_format.ParseDict(config["node"], base_pb2.Node())


@contextlib.asynccontextmanager
async def control() -> AsyncIterator[tuple[MeshPublisher, RunningServer]]:
    publisher = MeshPublisher()
    running = await serve(
        publisher.cache,
        "127.0.0.1:0",
        nodes=publisher,
        tls=publisher.server_tls("127.0.0.1"),
        authorize=publisher.authorize,
    )
    try:
        yield publisher, running
    finally:
        await running.stop(None)


async def ask(
    port: int, roots: str, issued: ca.Issued | None, proxy: Proxy, secret_names: list[str]
) -> discovery_pb2.DiscoveryResponse:
    """One SDS request on an ADS stream, as ``proxy`` holding ``issued``; the first response."""
    credentials = grpc.ssl_channel_credentials(
        roots.encode(),
        issued.key_pem.encode() if issued else None,
        issued.cert_pem.encode() if issued else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        request = discovery_pb2.DiscoveryRequest(
            node=node(proxy), type_url=resources.SECRET, resource_names=secret_names
        )
        await call.write(request)
        response = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        return response  # type: ignore[no-any-return]


def secret_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The secrets a response carries, sorted (their order in it is the snapshot's)."""
    out = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        out.append(secret.name)
    return sorted(out)


def secret_pem(response: discovery_pb2.DiscoveryResponse, name: str) -> str:
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        if secret.name == name:
            return secret.tls_certificate.certificate_chain.inline_string
    raise KeyError(name)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_a_proxy_gets_its_own_secrets_and_nothing_of_another_identity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with control() as (publisher, running):
            roots = "".join(publisher.ca.bundle())
            alice = ca.issue(publisher.ca.state.signing, publisher.ca.trust_domain, ALICE.identity, now())
            own = await ask(running.port, roots, alice, ALICE, ["workload-cert", "trust-bundle"])
            assert secret_names(own) == ["trust-bundle", "workload-cert"]
            assert (
                ca.identity_of(secret_pem(own, "workload-cert"), publisher.ca.trust_domain) == ALICE.identity
            )
            # Bob's proxy is connected and has its secrets; Alice asks for them by every name it might.
            bob = ca.issue(publisher.ca.state.signing, publisher.ca.trust_domain, BOB.identity, now())
            assert secret_names(await ask(running.port, roots, bob, BOB, ["workload-cert"])) == [
                "workload-cert"
            ]
            with caplog.at_level(logging.WARNING, logger="gitmesh.xds.server"):
                other = await ask(
                    running.port, roots, alice, ALICE, ["workload-cert", "identity:app/bob", "app/bob"]
                )
            assert secret_names(other) == ["workload-cert"]
            assert (
                ca.identity_of(secret_pem(other, "workload-cert"), publisher.ca.trust_domain)
                == ALICE.identity
            )
            assert (
                "asked for secrets that are not its own, sent nothing: ['app/bob', 'identity:app/bob']"
                in caplog.text
            )

    asyncio.run(main())


def test_a_node_claiming_another_identity_than_its_certificate_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with control() as (publisher, running):
            roots = "".join(publisher.ca.bundle())
            alice = ca.issue(publisher.ca.state.signing, publisher.ca.trust_domain, ALICE.identity, now())
            with (
                caplog.at_level(logging.WARNING, logger="gitmesh.xds.server"),
                pytest.raises(grpc.aio.AioRpcError) as refused,
            ):
                await ask(running.port, roots, alice, BOB, ["workload-cert"])
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node claims identity app/bob, its certificate is for app/alice" in refused.value.details()
            assert "refused node app/bob/bob/15007" in caplog.text
            assert publisher.cache.snapshot("app/bob|app/bob|8081,15002,15007") is None  # nothing made for it

    asyncio.run(main())


@pytest.mark.parametrize("holding", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_mesh_certificate_cannot_connect(holding: str) -> None:
    async def main() -> None:
        async with control() as (publisher, running):
            roots = "".join(publisher.ca.bundle())
            stranger = None
            if holding != "no certificate":
                other_root = ca.new_root(publisher.ca.trust_domain, now())
                stranger = ca.issue(other_root, publisher.ca.trust_domain, ALICE.identity, now())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ask(running.port, roots, stranger, ALICE, ["workload-cert"])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
            assert publisher.cache.snapshot("app/alice|app/alice|8080,15001,15006") is None

    asyncio.run(main())


def test_a_node_key_is_forgotten_when_its_last_stream_closes() -> None:
    publisher = MeshPublisher()
    first, second = node(ALICE), node(ALICE)
    first.id, second.id = "alice-1", "alice-2"
    key = publisher.opened(first)
    assert publisher.opened(second) == key
    streams = [publisher.cache.watch(key, lambda: None, lambda _: False) for _ in range(2)]
    streams[0].close()
    publisher.closed("alice-1", key)
    assert publisher.cache.snapshot(key) is not None
    streams[1].close()
    publisher.closed("alice-2", key)
    assert publisher.cache.snapshot(key) is None
    assert publisher.sidecars() == {}
    publisher.update([])  # a mesh change republishes only the keys of connected proxies
    assert publisher.cache.snapshot(key) is None


@pytest.mark.parametrize(
    ("claim", "refusal"),
    [
        (ALICE, None),
        (
            Proxy(Identity("app", "alice"), ServiceRef("other", "alice"), 8080, 15001, 15006),
            "only an identity of the service's own namespace can back it",
        ),
        (
            Proxy(Identity("app", "alice"), ServiceRef("app", "alice"), 8080, 15001, 15006, (), "10.0.0.9"),
            "which is not the address of any of its endpoints",
        ),
        # A replica whose pod is not ready yet: its sidecar is configured before it is.
        (
            Proxy(Identity("app", "alice"), ServiceRef("app", "alice"), 8080, 15001, 15006, (), "10.0.0.2"),
            None,
        ),
        (Proxy(Identity("app", "alice"), ServiceRef("app", "new"), 8080, 15001, 15006, (), "10.0.0.9"), None),
    ],
    ids=["backed", "another-namespace", "not-an-endpoint", "not-ready-yet", "no-endpoints-yet"],
)
def test_a_claim_is_checked_against_the_namespace_and_the_endpoints(
    claim: Proxy, refusal: str | None
) -> None:
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "alice", "namespace": "app", "labels": {SERVICE_NAME_LABEL: "alice"}},
        "ports": [{"name": "p8080", "port": 15006}],
        "endpoints": [
            {"addresses": ["127.0.0.1"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        ],
    }
    addresses = endpoint_addresses([f.service("app", "alice", 8080), f.service("app", "new", 8080), slice_])
    found = unbacked_claim(addresses, claim)
    assert found is None if refusal is None else refusal in (found or "")
