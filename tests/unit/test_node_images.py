"""The test node's image writer: a docker-archive tarball that containerd can import."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

from tests.node import write_image


def test_a_written_image_is_a_one_layer_docker_archive(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF pretend")
    binary.chmod(0o755)
    os.link(binary, tmp_path / "tool-alias")
    out = tmp_path / "image.tar"
    write_image(
        out,
        "localhost/tool:1",
        {
            "usr/bin/tool": binary,
            "usr/bin/alias": tmp_path / "tool-alias",
            "etc/passwd": b"root:x:0:0::/:/\n",
        },
        {"Entrypoint": ["/usr/bin/tool"]},
    )

    with tarfile.open(out) as archive:
        (manifest,) = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["RepoTags"] == ["localhost/tool:1"]
        config = json.load(archive.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        layer_bytes = archive.extractfile(manifest["Layers"][0]).read()  # type: ignore[union-attr]

    assert config["config"] == {"Entrypoint": ["/usr/bin/tool"]}
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]
    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(layer_bytes)
    with tarfile.open(layer_path) as layer:
        members = {m.name: m for m in layer.getmembers()}
        assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
        assert members["usr"].isdir() and members["usr/bin"].isdir() and members["etc"].isdir()
        assert members["usr/bin/tool"].mode == 0o755
        # The second name of the same file is a hard link, not a second copy.
        assert members["usr/bin/alias"].islnk() or members["usr/bin/tool"].islnk()
        assert layer.extractfile("etc/passwd").read() == b"root:x:0:0::/:/\n"  # type: ignore[union-attr]
