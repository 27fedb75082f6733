"""A real, throw-away Kubernetes control plane for integration tests.

:class:`KubeEnv` runs one etcd and any number of kube-apiservers on loopback.
Every apiserver stores its objects under its own ``--etcd-prefix`` in the
shared etcd, so each one is an independent cluster while costing only one
extra process. There is no kubelet, scheduler or controller-manager: tests
create Services, EndpointSlices and ServiceAccounts directly.

The binaries are built from Go modules by ``testenv/build.sh`` (see
``testenv/README.md``); :func:`build_binaries` runs it.

Security set-up, all generated per environment in its work directory:

* one CA, and a serving certificate for ``127.0.0.1``/``localhost`` signed by it;
* static bearer tokens (``--token-auth-file``): an admin in ``system:masters``
  and a viewer with no RBAC bindings at all, so 403s can be tested;
* ``--authorization-mode=RBAC``;
* a service-account signing key pair per cluster.
"""

from __future__ import annotations

import base64
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "testenv" / "build.sh"

LOOPBACK = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# The first address of the range: the apiserver gives it to the "kubernetes" Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
ADMIN_USER = "gitmesh-admin"
VIEWER_USER = "gitmesh-viewer"


class KubeEnvError(RuntimeError):
    """The test control plane could not be built or started."""


NODE_BINARIES = (
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-proxy",
    "coredns",
    "pause",
    "app",
)


def build_binaries(script: Path = BUILD_SCRIPT, timeout: float = 3600.0, *, node: bool = False) -> Path:
    """Run ``testenv/build.sh`` (a no-op when the cache is warm) and return the
    directory holding ``kube-apiserver`` and ``etcd`` (and, with ``node``, the
    test node's binaries: ``build.sh node``).

    Raises :class:`KubeEnvError` carrying the build's own output on failure.
    """
    try:
        proc = subprocess.run(
            ["bash", str(script), *(["node"] if node else [])],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KubeEnvError(f"{script} did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        # Everything the script and Go said, minus the "go: downloading ..." progress lines.
        output = [
            line
            for line in (proc.stderr + proc.stdout).splitlines()
            if not line.startswith("go: downloading ")
        ]
        raise KubeEnvError(f"{script} failed with exit code {proc.returncode}:\n" + "\n".join(output))
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise KubeEnvError(f"{script} printed no output directory; stderr:\n{proc.stderr}")
    bin_dir = Path(lines[-1])
    for name in ("kube-apiserver", "etcd", *(NODE_BINARIES if node else ())):
        if not os.access(bin_dir / name, os.X_OK):
            raise KubeEnvError(f"{script} reported {bin_dir}, but {bin_dir / name} is not an executable")
    return bin_dir


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on the loopback address right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


# Looked up once here: the child calls it between fork and exec, where loading libraries is unsafe.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have Linux kill the child if the test process dies without tearing it down."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def certificate(
    ca: CertificateAuthority | None,
    common_name: str,
    *,
    organization: str = "",
    sans: Sequence[str] = (),
    server: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by ``ca`` (self-signed CA when ``ca`` is None)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    subject = x509.Name(attributes)
    is_ca = ca is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if ca is None else ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if ca is None:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(key if ca is None else ca.key, hashes.SHA256())


def _make_pki(directory: Path) -> _Pki:
    """A self-signed CA and a serving certificate for the loopback address."""
    ca_key, ca_cert = certificate(None, "gitmesh-test-ca")
    sans = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        LOOPBACK,
        KUBERNETES_SERVICE_IP,
    ]
    key, cert = certificate(CertificateAuthority(ca_key, ca_cert), "kube-apiserver", sans=sans, server=True)
    return _Pki(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644),
        serving_cert=_write(
            directory / "apiserver.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644
        ),
        serving_key=_write(directory / "apiserver.key", _pem_key(key)),
    )


def _make_service_account_keys(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _write(directory / "sa.pub", public, 0o644), _write(directory / "sa.key", _pem_key(key))


class _Process:
    """A child process whose combined output goes to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = log_path.open("ab")
        try:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            self._log.close()
            raise

    def exited(self) -> int | None:
        return self.popen.poll()

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps the child."""
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=grace)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def run_kubectl(
    kubeconfig: Path,
    cache_dir: Path,
    args: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run the system ``kubectl`` with ``kubeconfig``; ``check`` turns a failure into an AssertionError."""
    argv = ["kubectl", f"--kubeconfig={kubeconfig}", f"--cache-dir={cache_dir}", *args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def api_get(server: str, ca_cert: Path, token: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``server + path`` with a bearer token; returns (status, decoded JSON or text)."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    req = urllib.request.Request(
        server + path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, context=context, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


# --------------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    """One kube-apiserver (a logical cluster) of a :class:`KubeEnv`."""

    name: str
    server: str
    etcd_prefix: str
    kubeconfig: Path
    admin_token: str
    viewer_token: str
    ca_cert: Path
    log_path: Path
    kubectl_cache: Path
    ready_seconds: float = 0.0
    _process: _Process | None = field(default=None, repr=False)

    def kubeconfig_for(self, path: Path, token: str, user: str = "user") -> Path:
        """Write a kubeconfig for this cluster authenticating with ``token``."""
        path.write_text(_kubeconfig_yaml(self.name, self.server, self.ca_cert, [(user, token)]))
        path.chmod(0o600)
        return path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        context: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the system ``kubectl`` against this cluster and capture its output."""
        options = [f"--context={context}"] if context is not None else []
        return run_kubectl(
            self.kubeconfig, self.kubectl_cache, [*options, *args], input=input, check=check, timeout=timeout
        )

    def request(self, path: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
        """GET ``path`` with a bearer token (the admin's by default); returns (status, decoded body)."""
        return api_get(self.server, self.ca_cert, token or self.admin_token, path, timeout)

    def stop(self) -> None:
        """Stop this apiserver (the shared etcd and the other clusters keep running)."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


def _kubeconfig_yaml(name: str, server: str, ca_cert: Path, users: Sequence[tuple[str, str]]) -> str:
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}} for user, token in users],
        "contexts": [{"name": user, "context": {"cluster": name, "user": user}} for user, _ in users],
        "current-context": users[0][0],
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


class KubeEnv:
    """etcd plus kube-apiservers on 127.0.0.1, rooted in ``workdir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, bin_dir: Path, workdir: Path, *, ready_timeout: float = 60.0) -> None:
        self.bin_dir = Path(bin_dir)
        self.workdir = Path(workdir)
        self.ready_timeout = ready_timeout
        self.clusters: dict[str, Cluster] = {}
        self.etcd_url = ""
        self.etcd_ready_seconds = 0.0
        self._etcd: _Process | None = None
        self._pki: _Pki | None = None
        self._tokens: dict[str, str] = {}

    # -- lifecycle

    def __enter__(self) -> KubeEnv:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Generate the certificates and tokens, then start etcd and wait for it."""
        if self._etcd is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(exist_ok=True)
        self._pki = _make_pki(pki_dir)
        self._tokens = {ADMIN_USER: secrets.token_urlsafe(24), VIEWER_USER: secrets.token_urlsafe(24)}
        # token,user,uid,"group1,group2"
        _write(
            pki_dir / "tokens.csv",
            f'{self._tokens[ADMIN_USER]},{ADMIN_USER},uid-admin,"system:masters"\n'
            f"{self._tokens[VIEWER_USER]},{VIEWER_USER},uid-viewer\n",
        )
        try:
            self._start_etcd()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every apiserver, then etcd. Safe to call more than once."""
        errors: list[BaseException] = []
        running = [c._process for c in self.clusters.values() if c._process is not None]
        # Signal every apiserver first so that their graceful shutdowns overlap.
        for process in running:
            process.terminate()
        for cluster in self.clusters.values():
            if cluster._process is not None:
                try:
                    cluster._process.stop()
                except Exception as exc:
                    errors.append(exc)
                cluster._process = None
        if self._etcd is not None:
            try:
                self._etcd.stop()
            except Exception as exc:
                errors.append(exc)
            self._etcd = None
            # The write-ahead log preallocates 64 MB; the logs are what is worth keeping.
            shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)
        if errors:
            raise KubeEnvError(f"tearing down the test control plane failed: {errors!r}")

    @property
    def cluster(self) -> Cluster:
        """The first cluster added; most tests need only one."""
        if not self.clusters:
            raise KubeEnvError("no cluster has been added to this KubeEnv yet")
        return next(iter(self.clusters.values()))

    # -- etcd

    def _start_etcd(self) -> None:
        client_port, peer_port = free_ports(2)
        self.etcd_url = f"http://{LOOPBACK}:{client_port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        argv = [
            str(self.bin_dir / "etcd"),
            "--name=gitmesh-test",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=gitmesh-test={peer_url}",
            "--initial-cluster-state=new",
            # Test data is disposable: skipping fsync makes every write much cheaper.
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--heartbeat-interval=10",
            "--election-timeout=100",
        ]
        started = time.monotonic()
        self._etcd = _Process("etcd", argv, self.workdir / "etcd.log")
        deadline = started + self.ready_timeout
        last = ""
        while True:
            code = self._etcd.exited()
            if code is not None:
                raise KubeEnvError(
                    f"etcd exited with code {code} before it became healthy; "
                    f"last lines of {self._etcd.log_path}:\n{_tail(self._etcd.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                    body = resp.read().decode(errors="replace")
                if json.loads(body).get("health") == "true":
                    break
                last = body
            except (OSError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise KubeEnvError(
                    f"etcd at {self.etcd_url} was not healthy after {self.ready_timeout:.0f}s "
                    f"(last answer: {last}); last lines of {self._etcd.log_path}:\n"
                    f"{_tail(self._etcd.log_path)}"
                )
            time.sleep(0.05)
        self.etcd_ready_seconds = time.monotonic() - started

    # -- apiservers

    def add_cluster(self, name: str | None = None, extra_args: Sequence[str] = ()) -> Cluster:
        """Start another kube-apiserver on the shared etcd and wait until it is ready.

        ``extra_args`` are appended to the apiserver's command line (for example
        ``--feature-gates=...``); later flags win over the defaults.
        """
        if self._etcd is None or self._pki is None:
            raise KubeEnvError("KubeEnv.start() must be called before add_cluster()")
        if name is None:
            number = len(self.clusters) + 1
            while (self.workdir / "clusters" / f"cluster-{number}").exists():
                number += 1
            name = f"cluster-{number}"
        if name in self.clusters:
            raise ValueError(f"a cluster named {name!r} already exists")
        if not name.replace("-", "").isalnum():
            raise ValueError(f"cluster names are letters, digits and dashes, not {name!r}")

        directory = self.workdir / "clusters" / name
        directory.mkdir(parents=True)
        sa_public, sa_private = _make_service_account_keys(directory)
        (port,) = free_ports(1)
        server = f"https://{LOOPBACK}:{port}"
        cluster = Cluster(
            name=name,
            server=server,
            etcd_prefix=f"/gitmesh-test/{name}",
            kubeconfig=directory / "kubeconfig",
            admin_token=self._tokens[ADMIN_USER],
            viewer_token=self._tokens[VIEWER_USER],
            ca_cert=self._pki.ca_cert,
            log_path=directory / "kube-apiserver.log",
            kubectl_cache=directory / "kubectl-cache",
        )
        cluster.kubeconfig.write_text(
            _kubeconfig_yaml(
                name,
                server,
                self._pki.ca_cert,
                [("admin", cluster.admin_token), ("viewer", cluster.viewer_token)],
            )
        )
        cluster.kubeconfig.chmod(0o600)

        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--etcd-prefix={cluster.etcd_prefix}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={port}",
            f"--tls-cert-file={self._pki.serving_cert}",
            f"--tls-private-key-file={self._pki.serving_key}",
            f"--token-auth-file={self.workdir / 'pki' / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://kubernetes.default.svc/{name}",
            f"--service-account-key-file={sa_public}",
            f"--service-account-signing-key-file={sa_private}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # No --kubelet-* or --cloud-* flags: nothing here calls a kubelet, and 1.32 has no in-tree clouds.
            "--profiling=false",
            "--v=0",
            *extra_args,
        ]
        started = time.monotonic()
        cluster._process = _Process(f"kube-apiserver[{name}]", argv, cluster.log_path)
        try:
            self._wait_ready(cluster)
        except BaseException:
            cluster._process.stop()
            cluster._process = None
            raise
        cluster.ready_seconds = time.monotonic() - started
        self.clusters[name] = cluster
        return cluster

    def _wait_ready(self, cluster: Cluster) -> None:
        assert cluster._process is not None
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while True:
            code = cluster._process.exited()
            if code is not None:
                raise KubeEnvError(
                    f"kube-apiserver for cluster {cluster.name!r} exited with code {code} before "
                    f"it became ready; last lines of {cluster.log_path}:\n{cluster.log_tail()}"
                )
            try:
                status, body = cluster.request("/readyz", timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}: {body}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise KubeEnvError(
                    f"kube-apiserver for cluster {cluster.name!r} at {cluster.server} was not ready "
                    f"after {self.ready_timeout:.0f}s; last /readyz answer: {last}\n"
                    f"last lines of {cluster.log_path}:\n{cluster.log_tail()}"
                )
            time.sleep(0.1)
