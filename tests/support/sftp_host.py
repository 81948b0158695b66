"""Another host for off-site copies: an OpenSSH server (key authentication only,
``internal-sftp``) in a network namespace the test creates, reached over a veth pair.

``drop_link()`` takes the host's side of the link down (packets vanish, as when a
network path fails; nothing is refused), ``restore_link()`` brings it back. Everything
is made under names of its own and removed by ``close()`` (the namespace, the link,
the sshd it started, by PID).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path


def available() -> str | None:
    """Why an SFTP host cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc", "ssh", "ssh-keygen", "/usr/sbin/sshd", "restic"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ensure-docker.sh installs it)"
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class SftpHost:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        tag = secrets.token_hex(3)
        self.netns = f"bo17-{tag}"
        self.veth_host, self.veth_ns = f"bo17h{tag}", f"bo17n{tag}"
        octet = 16 + int(tag[:2], 16) % 200
        self.host_ip, self.ip = f"10.217.{octet}.1", f"10.217.{octet}.2"
        self.alias = "backout-sftp-host"
        self.root = workdir / "srv"  # what the SFTP server serves (the repositories)
        self.ssh_config = workdir / "ssh_config"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SftpHost:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _run("ip", "link", "set", self.veth_ns, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
        _run("ip", "link", "set", self.veth_host, "up")
        ns = ("ip", "netns", "exec", self.netns)
        _run(*ns, "ip", "addr", "add", f"{self.ip}/30", "dev", self.veth_ns)
        _run(*ns, "ip", "link", "set", self.veth_ns, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        host_key, client_key = self.dir / "host_key", self.dir / "client_key"
        for key in (host_key, client_key):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        (self.dir / "known_hosts").write_text(
            f"{self.ip} {(self.dir / 'host_key.pub').read_text().split(' ')[0]} "
            f"{(self.dir / 'host_key.pub').read_text().split(' ')[1]}\n")
        (self.dir / "sshd_config").write_text(
            f"Port 22\nListenAddress {self.ip}\nHostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nSubsystem sftp internal-sftp\n")
        self.ssh_config.write_text(
            f"Host {self.alias}\n  HostName {self.ip}\n  User root\n"
            f"  IdentityFile {client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.dir / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  ConnectTimeout 5\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "/usr/sbin/sshd", "-D",
                                      "-e", "-f", str(self.dir / "sshd_config")],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.dir / "sshd.log").open("wb"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probe = subprocess.run(["ssh", "-F", str(self.ssh_config), self.alias, "-s", "sftp"],
                                   input=b"", capture_output=True, timeout=10, check=False)
            if probe.returncode == 0 or b"Permission denied" in probe.stderr:
                break
            time.sleep(0.2)
        return self

    def url(self, name: str) -> str:
        return f"sftp:{self.alias}:{self.root / name}"

    def throttle(self, rate: str) -> None:
        """Uploads to the host at ``rate`` (tc rate, e.g. "20mbit"): slow enough to be
        caught mid-upload."""
        _run("tc", "qdisc", "replace", "dev", self.veth_host, "root", "tbf", "rate", rate,
             "burst", "64kbit", "latency", "400ms")

    def unthrottle(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth_host, "root"],
                       capture_output=True, check=False)

    def drop_link(self) -> None:
        _run("ip", "link", "set", self.veth_host, "down")

    def restore_link(self) -> None:
        _run("ip", "link", "set", self.veth_host, "up")
        _run("ip", "addr", "replace", f"{self.host_ip}/30", "dev", self.veth_host)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
