"""The ADS server against the real Envoy binary: serving, live changes, NACKs, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from gitmesh.demo import App, free_port
from gitmesh.xds import resources
from gitmesh.xds.cache import SnapshotCache
from gitmesh.xds.server import RunningServer, serve
from gitmesh.xds.snapshot import Snapshot
from tests.xds import builders as b
from tests.xds.envoy import ENVOY

pytestmark = pytest.mark.integration

NODE = "envoy-under-test"
T = TypeVar("T")
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@contextlib.contextmanager
def upstream(name: str) -> Iterator[int]:
    """A loopback HTTP app that answers with its own name (the demo's), yielding its port."""
    app = App(name)
    try:
        yield app.port
    finally:
        app.close()


def bootstrap(api_type: str, ads_port: int, admin_port: int) -> dict[str, object]:
    """The least Envoy needs to take everything else from ADS."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": NODE, "cluster": "gitmesh-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": HTTP_OPTIONS,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": ads_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


@dataclass
class Mesh:
    """A running ADS server, one Envoy that uses it, and two upstreams it can route to."""

    cache: SnapshotCache
    ads: RunningServer
    admin: str
    listen_port: int
    upstreams: dict[str, int]
    log: Path

    def snapshot(self, version: str, upstream: str = "alpha", **changes: object) -> Snapshot:
        return b.mesh(version, self.upstreams[upstream], self.listen_port, **changes)  # type: ignore[arg-type]

    async def get(self, path: str = "/") -> str:
        return await asyncio.to_thread(fetch, f"http://127.0.0.1:{self.listen_port}{path}")

    async def admin_get(self, path: str) -> str:
        return await asyncio.to_thread(fetch, self.admin + path)

    async def eventually(self, probe: Callable[[], Awaitable[T]], want: Callable[[T], bool]) -> T:
        """Poll ``probe`` until ``want`` holds; fail with Envoy's log if it never does."""
        last: object = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                last = await probe()
                if want(last):  # type: ignore[arg-type]
                    return last  # type: ignore[return-value]
            except (OSError, urllib.error.URLError) as failure:
                last = failure
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"gave up; last result {last!r}\n--- envoy log ---\n{self.log.read_text()[-3000:]}"
        )


@contextlib.asynccontextmanager
async def running_mesh(tmp_path: Path, api_type: str) -> AsyncIterator[Mesh]:
    with upstream("alpha") as alpha, upstream("beta") as beta:
        cache = SnapshotCache()
        ads = await serve(cache, "127.0.0.1:0")
        admin_port = free_port()
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(bootstrap(api_type, ads.port, admin_port)))
        log = tmp_path / "envoy.log"
        mesh = Mesh(
            cache, ads, f"http://127.0.0.1:{admin_port}", free_port(), {"alpha": alpha, "beta": beta}, log
        )
        with log.open("w") as log_file:
            envoy = subprocess.Popen(
                [ENVOY, "-c", str(config), "--concurrency", "1", "--use-dynamic-base-id", "-l", "info"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                yield mesh
            finally:
                envoy.terminate()
                try:
                    envoy.wait(10)
                except subprocess.TimeoutExpired:
                    envoy.kill()
                    envoy.wait()
                await mesh.ads.stop(None)


def warming(config_dump: str) -> list[object]:
    dump = json.loads(config_dump)
    return [
        cluster
        for section in dump["configs"]
        if section["@type"].endswith("ClustersConfigDump")
        for cluster in section.get("dynamic_warming_clusters", [])
    ]


def route_versions(config_dump: str) -> list[str]:
    dump = json.loads(config_dump)
    return [
        route["version_info"]
        for section in dump["configs"]
        if section["@type"].endswith("RoutesConfigDump")
        for route in section.get("dynamic_route_configs", [])
    ]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def test_envoy_serves_and_follows_changes(tmp_path: Path, api_type: str) -> None:
    async def scenario() -> None:
        async with running_mesh(tmp_path, api_type) as mesh:
            mesh.cache.set_snapshot(NODE, mesh.snapshot("v1"))
            await mesh.eventually(mesh.get, lambda body: body == "alpha")

            mesh.cache.set_snapshot(NODE, mesh.snapshot("v2", upstream="beta"))  # endpoints only
            await mesh.eventually(mesh.get, lambda body: body == "beta")
            clusters = await mesh.admin_get("/clusters")
            assert f"web::127.0.0.1:{mesh.upstreams['beta']}::" in clusters

            mesh.cache.set_snapshot(NODE, mesh.snapshot("v3", "beta", route=b.route("http", body="direct")))
            await mesh.eventually(mesh.get, lambda body: body == "direct")

            # A changed EDS cluster stays warming until its endpoints arrive again.
            changed = b.eds_cluster("web", timeout_ms=250)
            mesh.cache.set_snapshot(NODE, mesh.snapshot("v4", "alpha", cluster=changed))
            await mesh.eventually(lambda: mesh.admin_get("/config_dump"), lambda text: '"0.250s"' in text)
            await mesh.eventually(lambda: mesh.admin_get("/config_dump"), lambda text: not warming(text))
            await mesh.eventually(mesh.get, lambda body: body == "alpha")
            assert mesh.ads.servicer.connections == {NODE: 1}
            assert mesh.cache.nacks(NODE) == []

    asyncio.run(scenario())


def test_envoy_rejection_is_recorded_and_old_config_keeps_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_mesh(tmp_path, "GRPC") as mesh:
            good = mesh.snapshot("v1")
            mesh.cache.set_snapshot(NODE, good)
            await mesh.eventually(mesh.get, lambda body: body == "alpha")

            bad = mesh.snapshot("v2", route=b.route("http", cluster="web", regex="(unclosed"))
            mesh.cache.set_snapshot(NODE, bad)
            [nack] = await mesh.eventually(lambda: asyncio.sleep(0, mesh.cache.nacks(NODE)), bool)
            assert nack.type_url == resources.ROUTE
            assert nack.version == bad.type_version(resources.ROUTE)
            assert nack.message == "missing ): (unclosed"  # RE2's own words, passed on by Envoy
            assert await mesh.get() == "alpha"
            dump = await mesh.admin_get("/config_dump")
            assert route_versions(dump) == [good.type_version(resources.ROUTE)]

            mesh.cache.set_snapshot(NODE, mesh.snapshot("v3", route=b.route("http", body="fixed")))
            await mesh.eventually(mesh.get, lambda body: body == "fixed")

    asyncio.run(scenario())


def test_envoy_keeps_serving_while_the_server_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_mesh(tmp_path, "GRPC") as mesh:
            mesh.cache.set_snapshot(NODE, mesh.snapshot("v1"))
            await mesh.eventually(mesh.get, lambda body: body == "alpha")

            outcomes: list[bool] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    try:
                        outcomes.append(fetch(f"http://127.0.0.1:{mesh.listen_port}/") == "alpha")
                    except OSError:
                        outcomes.append(False)

            loader = threading.Thread(target=load)
            loader.start()
            try:
                port = mesh.ads.port
                await mesh.ads.stop(None)
                await asyncio.sleep(1)  # Envoy notices and retries against a closed port
                cache = SnapshotCache()  # a fresh control plane, rebuilt from the same source
                cache.set_snapshot(NODE, mesh.snapshot("v1"))
                mesh.cache, mesh.ads = cache, await serve(cache, f"127.0.0.1:{port}")
                await mesh.eventually(lambda: asyncio.sleep(0, mesh.ads.servicer.connections), bool)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.to_thread(loader.join)
            assert outcomes and all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} requests failed"

            mesh.cache.set_snapshot(NODE, mesh.snapshot("v2", route=b.route("http", body="after restart")))
            await mesh.eventually(mesh.get, lambda body: body == "after restart")

    asyncio.run(scenario())
