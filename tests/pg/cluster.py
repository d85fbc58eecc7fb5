"""A throw-away PostgreSQL cluster for the tests: initdb into a temp dir, a unix socket there and
127.0.0.1 on a free port, fsync off; stopped and removed at the end of the session.

The binaries are found under /usr/lib/postgresql/*/bin or on PATH (`make test` installs Debian's
package when they are missing). initdb and postgres refuse to run as root: as root they run as
the `postgres` system user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _binary(name: str) -> str:
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make test` (it installs postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running cluster: its directory (the socket is there), port and superuser."""

    root: Path
    port: int
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        """Return a URL reaching `database` over TCP on loopback."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    pwd.getpwnam("postgres")  # KeyError: no postgres user (install Debian's package)
    return ["runuser", "-u", "postgres", "--", *argv]


def start_cluster() -> Cluster:
    """Create and start a cluster; raise RuntimeError (with initdb's output) if it fails."""
    root = Path(tempfile.mkdtemp(prefix="corral-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data = root / "data"
    port = _free_port()
    run = [
        _binary("initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    ]
    done = subprocess.run(_as_owner(run), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
    cluster = Cluster(root, port)
    start_server(cluster)
    return cluster


def start_server(cluster: Cluster) -> None:
    """Start the cluster's server (again, after `stop_server`); wait until it accepts."""
    root = cluster.root
    options = (
        f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    start = [_binary("pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(root / "log")]
    done = subprocess.run(_as_owner([*start, "-w", "start"]), capture_output=True, text=True)
    if done.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {done.stderr}{log}")


def stop_server(cluster: Cluster) -> None:
    """Stop the server (fast mode: sessions are terminated), keeping its data."""
    stop = [_binary("pg_ctl"), "-D", str(cluster.root / "data"), "-m", "fast", "-w", "stop"]
    subprocess.run(_as_owner(stop), capture_output=True, check=False)


def stop_cluster(cluster: Cluster) -> None:
    """Stop the cluster (fast mode) and remove its directory."""
    stop_server(cluster)
    shutil.rmtree(cluster.root, ignore_errors=True)
