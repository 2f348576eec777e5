"""A real PostgreSQL for the tests: the one on 127.0.0.1:5432 if it answers (trust auth), or
else a throwaway cluster started here with the Debian binaries that scripts/setup-postgres.sh
installs. Each test gets a database of its own, created from nothing and dropped after.

``TIDEGATE_TEST_POSTGRES_URL`` (a server URL whose user may create databases) overrides both.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support import scaled

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT_S = scaled(60.0)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian's /usr/lib/postgresql/N/bin, newest first."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if found:
        return found[0]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"no {name} binary: run scripts/setup-postgres.sh (make setup does) to install "
            "Debian's postgresql package"
        )
    return path


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder, on a free loopback port."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """initdb + pg_ctl start on a free port; stopped (immediate) and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="tidegate-pg-"))
    data = folder / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    try:
        subprocess.run(
            _as_postgres(
                [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
            ),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    pg_bin("pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(folder / "log"),
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT_S)),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S + 5,
        )
        yield Cluster(folder, port)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                timeout=scaled(30),
            )
        shutil.rmtree(folder, ignore_errors=True)


def server_reachable(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return port_open(parts.hostname or "127.0.0.1", parts.port or 5432)


async def create_database(server_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = f"tidegate_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url, timeout=scaled(10))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(server_url: str, db_url: str) -> None:
    name = db_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(server_url, timeout=scaled(10))
    try:
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.ObjectInUseError:
                if time.monotonic() > deadline:
                    raise
    finally:
        await conn.close()
