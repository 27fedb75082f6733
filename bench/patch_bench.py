"""What checking EnvoyPatches adds to `gitmesh validate`: 20 patches over 1,000 services.

A repository of 1,000 HTTP Services in 20 namespaces (50 each), permissive, with one EnvoyPatch per
namespace selecting its 50 services: ten change the outbound listener (an access log, by JSON patch),
ten a named cluster (TCP keepalive, by merge patch). ``pipeline.check`` is timed with and without
the patches (CPU and wall, median of ``--repeat`` runs); the difference is what the patches cost:
translating the selected proxies, patching, parsing against the protos and one `envoy --mode
validate` run. The envoy answer cache is cleared before each run, so every run asks Envoy.

    python bench/patch_bench.py [--services 1000] [--patches 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gitmesh import pipeline
from gitmesh.sync.git import read_directory
from gitmesh.xds import envoy_check


def write_repo(root: Path, services: int, patches: int) -> None:
    per = services // patches
    docs: list[dict[str, object]] = [
        {
            "apiVersion": "config.openservicemesh.io/v1alpha2",
            "kind": "MeshConfig",
            "metadata": {"name": "mesh", "namespace": "ns0"},
            "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": True}},
        }
    ]
    for n in range(patches):
        ns = f"ns{n}"
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(per):
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"svc{i}", "namespace": ns},
                    "spec": {"ports": [{"name": "http", "port": 8080}]},
                }
            )
        if n % 2:
            change: dict[str, object] = {
                "type": "Cluster",
                "name": f"{ns}/svc0|8080",
                "merge": {"upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 60 + n}}},
            }
        else:
            log = {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    "log_format": {"text_format_source": {"inline_string": f"{ns} %RESPONSE_CODE%\n"}},
                },
            }
            change = {
                "type": "Listener",
                "name": "outbound",
                "jsonPatch": [
                    {
                        "op": "add",
                        "path": "/filter_chains/0/filters/0/typed_config/access_log",
                        "value": [log],
                    }
                ],
            }
        docs.append(
            {
                "apiVersion": "gitmesh.dev/v1alpha1",
                "kind": "EnvoyPatch",
                "metadata": {"name": "tune", "namespace": ns},
                "spec": {"patches": [change]},
            }
        )
    patched = [d for d in docs if d["kind"] == "EnvoyPatch"]
    plain = [d for d in docs if d["kind"] != "EnvoyPatch"]
    (root / "with").mkdir()
    (root / "without").mkdir()
    (root / "with" / "mesh.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": plain + patched})
    )
    (root / "without" / "mesh.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": plain})
    )


def timed(directory: Path, repeat: int) -> tuple[float, float, int]:
    walls, cpus = [], []
    errors = 0
    for _ in range(repeat):
        envoy_check._run.cache_clear()
        revision = read_directory(str(directory))
        wall, cpu = time.perf_counter(), time.process_time()
        validated = pipeline.check(revision)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        errors = len(validated.errors)
        pipeline.thaw()
    return statistics.median(walls), statistics.median(cpus), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--patches", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_repo(root, args.services, args.patches)
        base = timed(root / "without", args.repeat)
        with_patches = timed(root / "with", args.repeat)
    assert base[2] == 0 and with_patches[2] == 0, (base, with_patches)
    print(f"{args.services} services, {args.patches} patches, median of {args.repeat}")
    print(f"check without patches: {base[0]:.3f} s wall, {base[1]:.3f} s cpu")
    wall, cpu = with_patches[0], with_patches[1]
    print(f"check with patches:    {wall:.3f} s wall, {cpu:.3f} s cpu (not counting Envoy's)")
    print(f"added by the patches:  {with_patches[0] - base[0]:.3f} s wall")


if __name__ == "__main__":
    main()
