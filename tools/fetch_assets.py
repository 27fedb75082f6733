"""Fetch the web console's third-party scripts (gitmesh/controller/assets.json) from the npm
registry into gitmesh/controller/assets/, each tarball checked against its pinned sha512 integrity.

They are dependencies, not sources: fetched by `make` (and before `make wheel`), never committed.
Standard library only, so that it runs before the virtualenv exists.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

CONTROLLER = Path(__file__).resolve().parents[1] / "gitmesh" / "controller"
REGISTRY = "https://registry.npmjs.org"


def fetch(name: str, pin: dict[str, str], into: Path) -> None:
    package, version = pin["package"], pin["version"]
    url = f"{REGISTRY}/{package}/-/{package.rpartition('/')[2]}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        tarball = response.read()
    algorithm, _, expected = pin["integrity"].partition("-")
    if base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode() != expected:
        raise SystemExit(f"{url}: its {algorithm} is not the pinned one; refusing it")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile(pin["file"])
        if member is None:
            raise SystemExit(f"{url} has no file {pin['file']}")
        (into / name).write_bytes(member.read())
    print(f"fetched {name}: {package}@{version} ({pin['file']})")


def main() -> int:
    pins: dict[str, dict[str, str]] = json.loads((CONTROLLER / "assets.json").read_text())
    into = CONTROLLER / "assets"
    into.mkdir(exist_ok=True)
    stamp = into / ".pins.json"
    wanted = json.dumps(pins, sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted and all((into / n).exists() for n in pins):
        return 0
    for name, pin in pins.items():
        fetch(name, pin, into)
    stamp.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
