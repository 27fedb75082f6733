"""The console's third-party scripts: fetched pinned (tools/fetch_assets.py), served from the package."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gitmesh.controller import console

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("fetch_assets", ROOT / "tools" / "fetch_assets.py")
assert spec is not None and spec.loader is not None
fetch_assets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_assets)


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pin(data: bytes) -> dict[str, str]:
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    return {"package": "lib", "version": "1.2.3", "file": "package/lib.js", "integrity": integrity}


class Served:
    def __init__(self, data: bytes, asked: list[str]) -> None:
        self.data, self.asked = data, asked

    def __call__(self, url: str, timeout: float) -> Any:
        self.asked.append(url)
        return self

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self) -> bytes:
        return self.data


def test_the_pinned_file_alone_is_taken_from_a_tarball_with_the_pinned_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tarball({"package/lib.js": b"var lib = 1;", "package/other.js": b"no"})
    asked: list[str] = []
    monkeypatch.setattr(fetch_assets.urllib.request, "urlopen", Served(data, asked))
    fetch_assets.fetch("lib.js", pin(data), tmp_path)
    assert (tmp_path / "lib.js").read_bytes() == b"var lib = 1;"
    assert [p.name for p in tmp_path.iterdir()] == ["lib.js"]
    assert asked == ["https://registry.npmjs.org/lib/-/lib-1.2.3.tgz"]


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = pin(tarball({"package/lib.js": b"var lib = 1;"}))
    other = tarball({"package/lib.js": b"steal()"})
    monkeypatch.setattr(fetch_assets.urllib.request, "urlopen", Served(other, []))
    with pytest.raises(SystemExit, match="not the pinned one"):
        fetch_assets.fetch("lib.js", pinned, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_pinned_asset_is_fetched_and_served_by_the_console() -> None:
    """`make` fetched them: the console serves each by the name its page loads it by."""
    pins = json.loads((ROOT / "gitmesh" / "controller" / "assets.json").read_text())
    for name in pins:
        assert f"assets/{name}" in console.STATIC
        assert len(console.static(f"assets/{name}")) > 1000
    page = console.page(dict.fromkeys(("status", "edges", "rollouts", "mesh", "sources", "proxies"), ""))
    assert '<script src="/console/assets/elk.js" defer>' in page
