"""Git over SSH for tests: Debian's OpenSSH server on a loopback port, keys made for the test.

``SshServer(workdir).start()`` runs ``/usr/sbin/sshd`` (installed by the Makefile) on
127.0.0.1 with a fresh host key, accepting only a fresh client key (the deploy key) for the
user running the tests. ``known_hosts`` is a file naming the server's real host key;
``url(path)`` is the ``ssh://`` URL of a repository on this machine.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path

from gitmesh.demo import eventually, free_port, stop_process

SSHD = Path("/usr/sbin/sshd")


class SshServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = self._keygen("host_key")
        self.deploy_key = self._keygen("deploy_key")
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {Path(f'{self.host_key}.pub').read_text()}")
        (workdir / "authorized_keys").write_text(Path(f"{self.deploy_key}.pub").read_text())
        self.log = workdir / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _keygen(self, name: str) -> Path:
        path = self.dir / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
        )
        return path

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def start(self) -> SshServer:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is missing: `make test` installs Debian's openssh-server")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        config = self.dir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{self.port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding no\n"
        )
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        eventually(self._listening, bool, f"sshd listening on port {self.port}", timeout=30)
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log.read_text()}")
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
