"""The xDS publisher with a remote certificate provider: a new sidecar is configured at once and
gets its secrets once the provider's certificate arrives (issuing is off the serving path); a
provider that fails leaves the secrets it was sent in place."""

from __future__ import annotations

import datetime

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gitmesh import serve
from gitmesh.certs import ca
from gitmesh.certs.provider import Remote
from gitmesh.xds import resources
from gitmesh.xds.bootstrap import bootstrap
from tests.certs.test_provider import FakeIssuer
from tests.xds.test_rotation import PROXY

HOUR = datetime.timedelta(hours=1)


def test_a_sidecar_is_configured_at_once_and_sent_its_secrets_when_the_provider_answers() -> None:
    issuer = FakeIssuer()
    remote = Remote(issuer, "mesh.test", HOUR)
    publisher = serve.MeshPublisher(workload=remote, clock=lambda: issuer.now)
    config = bootstrap(PROXY, xds_host="127.0.0.1", xds_port=1, admin_port=0)
    key = publisher.opened(json_format.ParseDict(config["node"], base_pb2.Node()))
    first = publisher.cache.snapshot(key)
    assert first is not None and resources.LISTENER in first.resources
    assert resources.SECRET not in first.resources and issuer.asked == []  # nothing waited on the CA

    assert publisher.refresh_certificates(remote.refresh(issuer.now)) == [PROXY.identity]
    sent = publisher.cache.snapshot(key)
    assert sent is not None
    cert = sent.resources[resources.SECRET]["workload-cert"].tls_certificate.certificate_chain.inline_string
    assert ca.identity_of(cert, "mesh.test") == PROXY.identity
    bundle = sent.resources[resources.SECRET]["trust-bundle"].validation_context.trusted_ca.inline_string
    assert bundle == issuer.root.root_pem

    issuer.refusal = "unreachable"
    issuer.now += HOUR * 3 / 4  # due, and the provider fails: the secrets sent stay
    assert publisher.refresh_certificates(remote.refresh(issuer.now)) == []
    assert publisher.cache.snapshot(key) is sent
    assert serve.xds_report([], publisher.cache, {}, remote.expiries(), {}, remote)[
        "certificate_provider"
    ] == {"name": "fake", "problem": "fake: unreachable"}
