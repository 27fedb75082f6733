"""EnvoyPatch with the real Envoy: three useful patches reach bookbuyer's sidecar and change its
traffic, and three bad ones are refused by `gitmesh validate`, at their line, before any proxy
sees them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gitmesh import demo as demo_mod
from gitmesh.cli import cli
from gitmesh.demo import Demo, eventually
from tests import bookstore

pytestmark = pytest.mark.integration

HCM = "/filter_chains/0/filters/0/typed_config"  # the outbound listener's HTTP connection manager


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    try:
        with bookstore.running(tmp_path) as d:
            yield d
    except (AssertionError, TimeoutError):
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise


def patch_file(spec: dict[str, object]) -> str:
    doc = {
        "apiVersion": "gitmesh.dev/v1alpha1",
        "kind": "EnvoyPatch",
        "metadata": {"name": "tune", "namespace": "bookbuyer"},
        "spec": {"selector": {"services": ["bookbuyer"]}, **spec},
    }
    return json.dumps(doc, indent=2) + "\n"


def commit(d: Demo, text: str) -> None:
    (d.repo / demo_mod.MESH_PATH / "bookbuyer" / "patch.json").write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "patch"], check=True)
    d.applied = d.apply()


def test_three_patches_change_bookbuyers_traffic(demo: Demo, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    access_log = {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(log),
            "log_format": {"text_format_source": {"inline_string": "patched %REQ(:PATH)% %RESPONSE_CODE%\n"}},
        },
    }
    lua = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {
                "inline_string": "function envoy_on_request(h)\n"
                '  if h:headers():get(":path") == "/teapot" then\n'
                '    h:respond({[":status"] = "418"}, "lua")\n'
                "  end\n"
                "end\n"
            },
        },
    }
    assert demo.buy("/teapot")[0] == 403  # not a path bookbuyer may call
    commit(
        demo,
        patch_file(
            {
                "patches": [
                    {
                        "type": "Listener",
                        "name": "outbound",
                        "jsonPatch": [
                            {"op": "add", "path": f"{HCM}/access_log", "value": [access_log]},
                            {"op": "add", "path": f"{HCM}/http_filters/0", "value": lua},
                        ],
                    },
                    {
                        "type": "Cluster",
                        "merge": {"upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 77}}},
                    },
                ]
            }
        ),
    )
    eventually(lambda: demo.buy("/teapot"), lambda r: r == (418, "lua"), "the lua filter answering")
    status, _ = demo.buy("/books-bought")
    assert status == 200
    eventually(lambda: log.read_text(), lambda t: "patched /books-bought 200" in t, "the access log line")
    assert "patched /teapot 418" in log.read_text()
    # Keepalive is on the sidecar's connections to bookstore's inbound ports: the kernel shows its timer.
    inbound = {demo.proxies[n].inbound_port for n in ("bookstore-v1", "bookstore-v2")}

    def keepalive_timers() -> list[str]:
        demo.buy("/books-bought")
        lines = subprocess.run(["ss", "-tno", "state", "established"], capture_output=True, text=True).stdout
        return [
            line for line in lines.splitlines() if re.search(rf":({'|'.join(map(str, inbound))})\s", line)
        ]

    timers = eventually(keepalive_timers, lambda ls: any("keepalive" in line for line in ls), "keepalive")
    # Without the patch Envoy sets no keepalive (and the kernel's default would be two hours).
    left = [re.search(r"timer:\(keepalive,(?:(\d+)min)?(\d+)", line) for line in timers]
    assert any(m and int(m.group(1) or 0) * 60 + int(m.group(2)) <= 77 for m in left), timers
    # Other sidecars are not selected: bookthief has neither the filter nor the log.
    assert demo.buy("/teapot", caller="bookthief")[0] != 418


BAD = {
    "unknown field": (  # keepalive_time misspelt
        {
            "type": "Cluster",
            "merge": {"upstream_connection_options": {"tcp_keepalive": {"keepalive_tim": 7}}},
        },
        "GM152",
        "keepalive_tim",
    ),
    "wrong type": ({"type": "Cluster", "merge": {"connect_timeout": 5}}, "GM152", "connect_timeout"),
    "envoy only": ({"type": "Cluster", "merge": {"connect_timeout": "-1s"}}, "GM153", "positive"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_patch_is_refused_at_its_line_and_never_reaches_a_proxy(case: str, tmp_path: Path) -> None:
    entry, code, said = BAD[case]
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(demo_mod.EXAMPLE_REPO), str(repo)], check=True)
    text = patch_file({"patches": [entry]})
    (repo / "bookbuyer" / "patch.json").write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(repo)])
    assert result.exit_code == 1, result.output
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "patches" in t)
    found = re.search(rf"bookbuyer/patch\.json:(\d+):\d+: error {code} (\S+)", result.output)
    assert found, result.output
    assert int(found.group(1)) >= line  # at the patch entry or within it
    assert said in result.output


def test_a_rejection_of_a_patched_resource_names_the_patch(demo: Demo) -> None:
    # Valid everywhere but on this host: the outbound listener moved onto a port another program
    # holds (without SO_REUSEPORT). envoy --mode validate binds nothing, so only the sidecar can say.
    holder = socket.create_server(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    commit(
        demo,
        patch_file(
            {
                "patches": [
                    {
                        "type": "Listener",
                        "name": "outbound",
                        "merge": {"address": {"socket_address": {"port_value": taken}}},
                    }
                ]
            }
        ),
    )

    def status() -> dict[str, Any]:
        result = CliRunner().invoke(cli, ["status", "--store", str(demo.store), "--output", "json"])
        return json.loads(result.output)["sidecars"] or {}

    with holder:
        report = eventually(status, lambda r: bool(r.get("nacks")), "the rejection reported")
    (nack,) = report["nacks"]
    assert nack["type"] == "Listener" and "bookbuyer" in nack["proxy"]
    assert nack["patches"] == ["EnvoyPatch bookbuyer/tune"]
    text = CliRunner().invoke(cli, ["status", "--store", str(demo.store)]).output
    assert "(changed by EnvoyPatch bookbuyer/tune)" in text
    assert demo.buy("/books-bought")[0] == 200  # the last good listener keeps serving
