from __future__ import annotations

import datetime
import json
import stat
import subprocess
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from gitmesh.certs import ca
from gitmesh.certs.authority import CaState
from gitmesh.certs.store import FileKeeper, ca_path
from gitmesh.mesh.state import Identity, ServiceRef
from gitmesh.xds.bootstrap import bootstrap, client_tls, parse_upstream, proxy_of
from gitmesh.xds.translate import Proxy, Upstream
from tests.xds.envoy import ENVOY

PROXY = Proxy(
    Identity("bookstore", "bookstore"),
    ServiceRef("bookstore", "bookstore-v1"),
    8080,
    15101,
    15106,
    (Upstream(ServiceRef("bookwarehouse", "mysql"), 3306, 13306),),
)


def test_the_node_carries_the_proxy_and_reads_back() -> None:
    config = bootstrap(PROXY, xds_host="127.0.0.1", xds_port=15010, admin_port=15000)
    node = json_format.ParseDict(config["node"], base_pb2.Node())
    assert proxy_of(node) == PROXY
    assert config["layered_runtime"]["layers"][0]["static_layer"] == {
        "re2.max_program_size.error_level": 1000
    }


@pytest.mark.parametrize(
    "text",
    ["mysql.bookwarehouse:3306=13306", "bookwarehouse/mysql:3306=13306", "mysql:3306=13306"],
)
def test_upstreams_are_written_short_or_qualified(text: str) -> None:
    assert parse_upstream(text, "bookwarehouse") == Upstream(
        ServiceRef("bookwarehouse", "mysql"), 3306, 13306
    )


@pytest.mark.parametrize("text", ["mysql:3306", "mysql=13306", ":3306=1", "mysql:0=13306", "mysql:x=1"])
def test_a_malformed_upstream_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected SERVICE|ports are 1-65535"):
        parse_upstream(text, "bookwarehouse")


def test_a_node_without_gitmesh_metadata_is_refused() -> None:
    with pytest.raises(ValueError, match="not bootstrapped by gitmesh"):
        proxy_of(base_pb2.Node(id="stranger"))


@pytest.mark.integration
def test_real_envoy_accepts_the_bootstrap(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    tls = client_tls(CaState("cluster.local", (ca.new_root("cluster.local", now),)), PROXY.identity, now)
    path = tmp_path / "bootstrap.json"
    config = bootstrap(PROXY, xds_host="127.0.0.1", xds_port=15010, admin_port=0, tls=tls)
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--use-dynamic-base-id", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_bootstrap_command_writes_it_with_a_certificate_for_the_identity(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gitmesh.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "bootstrap",
            "--namespace",
            "bookstore",
            "--service-account",
            "bookstore",
            "--service",
            "bookstore-v1",
            "--app-port",
            "8080",
            "--outbound-port",
            "15101",
            "--inbound-port",
            "15106",
            "--xds-address",
            "127.0.0.1:15010",
            "--upstream",
            "mysql.bookwarehouse:3306=13306",
            "--store",
            str(tmp_path / "store.db"),
            "--out",
            str(tmp_path / "bootstrap.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    written = tmp_path / "bootstrap.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # it holds a private key
    config = json.loads(written.read_text())
    assert proxy_of(json_format.ParseDict(config["node"], base_pb2.Node())) == PROXY
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"gitmesh-xds", "local|8080"}
    xds = clusters["gitmesh-xds"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert xds["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15010}

    # The ADS connection is mTLS: a certificate for the sidecar's identity from the store's CA, and
    # the server must prove it is gitmesh.
    context = clusters["gitmesh-xds"]["transport_socket"]["typed_config"]["common_tls_context"]
    (pair,) = context["tls_certificates"]
    assert ca.identity_of(pair["certificate_chain"]["inline_string"], "cluster.local") == PROXY.identity
    kept = FileKeeper(ca_path(tmp_path / "store.db")).load()
    assert kept is not None
    assert context["validation_context"]["trusted_ca"]["inline_string"] == "".join(kept.bundle())
    assert context["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/gitmesh-system/sa/gitmesh"}}
    ]
