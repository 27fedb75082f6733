"""How gitmesh run walks a root rotation: a step is taken only once every connected sidecar has
accepted the secrets the previous one sent; a CA it cannot read stops nothing."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gitmesh import serve
from gitmesh.certs import ca
from gitmesh.certs.authority import ISSUING, STEADY, TRUSTING, begin_rotation
from gitmesh.certs.store import FileKeeper
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from gitmesh.xds.server import StreamInfo
from gitmesh.xds.translate import Proxy

PROXY = Proxy(Identity("app", "alice"), ServiceRef("app", "alice"), 8080, 15001, 15006)
NOW = datetime.datetime.now(datetime.UTC)


class Sidecar:
    """A connected stream as the rotation sees it: the secrets version it last ACKed."""

    def __init__(self, publisher: serve.MeshPublisher) -> None:
        config = bootstrap(PROXY, xds_host="127.0.0.1", xds_port=1, admin_port=0)
        self.key = publisher.opened(json_format.ParseDict(config["node"], base_pb2.Node()))
        self.publisher = publisher
        self.held = ""
        self.stream = StreamInfo("alice-1", self.key, False, lambda: {resources.SECRET: self.held})

    def ack(self) -> None:
        self.held = self.publisher.cache.version(self.key, resources.SECRET) or ""

    def issuer(self) -> x509.Name:
        snapshot = self.publisher.cache.snapshot(self.key)
        assert snapshot is not None
        chain = snapshot.resources[resources.SECRET]["workload-cert"].tls_certificate.certificate_chain
        return x509.load_pem_x509_certificate(chain.inline_string.encode()).issuer

    def bundle(self) -> str:
        snapshot = self.publisher.cache.snapshot(self.key)
        assert snapshot is not None
        return snapshot.resources[resources.SECRET][
            "trust-bundle"
        ].validation_context.trusted_ca.inline_string


def test_each_step_waits_for_every_sidecar(tmp_path: Path) -> None:
    publisher = serve.MeshPublisher()
    keeper = FileKeeper(tmp_path / "ca.json")
    keeper.save(publisher.ca.state)
    sidecar = Sidecar(publisher)
    sidecar.ack()
    old = publisher.ca.state.signing
    assert sidecar.issuer() == x509.load_pem_x509_certificate(old.cert_pem.encode()).subject
    new = ca.new_root(publisher.ca.trust_domain, NOW)
    keeper.save(begin_rotation(publisher.ca.state, new))  # gitmesh certs rotate

    serve._follow_rotation(publisher, keeper, [sidecar.stream])  # taken up: both roots sent
    assert publisher.ca.state.phase == TRUSTING
    assert sidecar.bundle() == old.root_pem + new.root_pem
    serve._follow_rotation(publisher, keeper, [sidecar.stream])
    assert publisher.ca.state.phase == TRUSTING  # the sidecar has not taken the new bundle yet

    sidecar.ack()
    serve._follow_rotation(publisher, keeper, [sidecar.stream])
    assert publisher.ca.state.phase == ISSUING and keeper.load() == publisher.ca.state
    assert sidecar.issuer() == x509.load_pem_x509_certificate(new.cert_pem.encode()).subject  # reissued
    serve._follow_rotation(publisher, keeper, [sidecar.stream])
    assert publisher.ca.state.phase == ISSUING

    sidecar.ack()
    serve._follow_rotation(publisher, keeper, [sidecar.stream])
    assert publisher.ca.state.phase == STEADY and publisher.ca.state.signing == new
    assert sidecar.bundle() == new.root_pem
    assert keeper.load() == publisher.ca.state


def test_a_ca_it_cannot_read_is_logged_and_nothing_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = serve.MeshPublisher()
    before = publisher.ca.state
    keeper = FileKeeper(tmp_path / "ca.json")
    keeper.path.write_text("{broken")
    with caplog.at_level(logging.ERROR, logger="gitmesh.serve"):
        serve._follow_rotation(publisher, keeper, [])
    assert publisher.ca.state == before
    assert "cannot read the mesh CA" in caplog.text and "not a gitmesh CA state" in caplog.text
