"""Hosts of a cluster test, built from Linux network namespaces: one bridge of the test's
own in the root namespace (with an address, where the test itself and its S3 server
live), and one namespace per host on it through a veth pair (the host's only link: its
eth0). PostgreSQL clusters of the test's own (`pg_createcluster`, on their own port, in
their host's namespace); exportd processes started inside their host's namespace.

Only the test's own names are created and removed: namespaces and links are named
`exd<4 hex>-...`, the subnet is a free 10.213.N.0/24, the PostgreSQL clusters
`exd<4 hex><name>`. Nothing outside the machine is reached."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PG_VERSION_DIR = Path("/etc/postgresql")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def why_not() -> str | None:
    """Why a cluster test cannot run here (None: it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root (ip netns)"
    for tool in ("ip", "pg_createcluster", "pg_ctlcluster", "pg_dropcluster"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"exd{secrets.token_hex(2)}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns is not permitted here: {made.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def pg_version() -> str:
    return sorted(p.name for p in PG_VERSION_DIR.iterdir() if p.name.isdigit())[-1]


@dataclass
class Host:
    name: str  # the namespace
    link: str  # the root side of its veth pair
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *cmd, check=check)

    def spawn(self, cmd: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        """The host drops off the network: its only link goes down."""
        run("ip", "link", "set", self.link, "down")

    def reconnect(self) -> None:
        run("ip", "link", "set", self.link, "up")


class Network:
    """The bridge and the hosts on it."""

    def __init__(self) -> None:
        self.prefix = f"exd{secrets.token_hex(2)}"
        taken = run("ip", "-4", "-br", "addr").stdout
        third = next(n for n in range(10, 250) if f"10.213.{n}." not in taken)
        self.net = f"10.213.{third}"
        self.bridge = f"{self.prefix}-br"
        self.gateway = f"{self.net}.1"  # the root namespace's address on the bridge
        self.hosts: list[Host] = []
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        ns = f"{self.prefix}-{name}"
        host = Host(ns, ns, f"{self.net}.{len(self.hosts) + 2}")
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", host.link, "master", self.bridge, "up")
        run("ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            run("ip", "netns", "del", host.name, check=False)  # its veth pair goes with it
        run("ip", "link", "del", self.bridge, check=False)


class PgCluster:
    """A PostgreSQL cluster of the test's own, listening on its host's address only,
    trusting the test's subnet; its unix socket in a directory of its own."""

    def __init__(self, host: Host, name: str, port: int, net: str) -> None:
        self.host, self.port, self.version = host, port, pg_version()
        self.name = name
        self.socket_dir = socket_dir = Path("/tmp") / name  # reachable by user postgres
        socket_dir.mkdir(mode=0o755)
        shutil.chown(socket_dir, "postgres", "postgres")
        run(
            "pg_createcluster", self.version, name, "-p", str(port), "--start-conf", "manual",
            "--", "--auth=trust",
        )  # fmt: skip
        conf = PG_VERSION_DIR / self.version / name
        (conf / "conf.d" / "exportd-test.conf").write_text(
            f"listen_addresses = '{host.address}'\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "max_connections = 200\nfsync = off\nsynchronous_commit = off\n"
            "full_page_writes = off\n"
        )
        with (conf / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {net}.0/24 trust\n")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host.address}:{self.port}"

    def ctl(self, action: str, *extra: str) -> None:
        self.host.exec(
            "pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *extra
        )

    def start(self) -> None:
        self.ctl("start")
        self.wait_ready()

    def restart(self) -> None:
        self.ctl("restart", "-m", "fast")
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            ready = self.host.exec(
                "pg_isready", "-h", self.host.address, "-p", str(self.port), "-q", check=False
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL cluster {self.name} did not start")
            time.sleep(0.2)

    def drop(self) -> None:
        run("pg_dropcluster", "--stop", self.version, self.name, check=False)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        # pg_dropcluster leaves the configuration directory when it holds a file of ours
        shutil.rmtree(PG_VERSION_DIR / self.version / self.name, ignore_errors=True)
