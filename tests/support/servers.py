"""Real PostgreSQL and Redis servers on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Members of this role must give their password; every other role is trusted. (A group, not a name pattern:
# PostgreSQL 15's pg_hba.conf takes no regular expression for user names; a "/^pw_" entry matched nobody.)
PASSWORD_GROUP = "password_users"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, address: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {address}:{port} after {timeout}s")


class Where:
    """Where a server runs: the address it listens on and the command prefix that starts a process there.
    This one is the test's own machine (loopback, no prefix); tests.support.netns.Host is another host."""

    def __init__(self, address: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        self.address = address
        self.prefix = prefix

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` as run there."""
        return [*self.prefix, *argv]

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run where this place's network is (here: in the calling thread)."""
        return fn(*args, **kwargs)

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        self.call(wait_port, port, timeout, self.address)


LOOPBACK = Where()


class PostgresServer:
    """A throwaway PostgreSQL cluster; can be stopped and started again (outage tests).

    Roles in PASSWORD_GROUP (``password_user``) must give their password (scram-sha-256); the rest is trusted.
    """

    def __init__(self, where: Where = LOOPBACK) -> None:
        self.where = where
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hxp-pg-"))
        self.data = self.dir / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self._as_user = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "hxp", "--auth=trust", "-E", "UTF8")
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            f"host all +{PASSWORD_GROUP} samenet scram-sha-256\n" + hba.read_text() + "host all all samenet trust\n"
        )
        self.url = f"postgresql://hxp@{where.address}:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            self.where.wrap([*self._as_user, *cmd]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> None:
        import psycopg

        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.where.address} -c fsync=off",
        )
        with self.where.call(psycopg.connect, self.url, autocommit=True) as conn:
            conn.execute(
                f"DO $$ BEGIN CREATE ROLE {PASSWORD_GROUP} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def password_user(self, name: str, password: str, database: str) -> str:
        """A role ``name`` that must give its password, owning ``database``; its URL."""
        import psycopg

        with self.where.call(psycopg.connect, self.url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {PASSWORD_GROUP}")
            conn.execute(f"ALTER DATABASE {database} OWNER TO {name}")
        return f"postgresql://{name}:{password}@{self.where.address}:{self.port}/{database}"

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A throwaway Redis server without persistence (with a password if given); can be stopped and started again."""

    def __init__(self, password: str | None = None, where: Where = LOOPBACK) -> None:
        self.where = where
        self.port = free_port()
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}{where.address}:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        auth = ["--requirepass", self.password] if self.password else []
        self._proc = subprocess.Popen(
            self.where.wrap(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    self.where.address,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    *auth,
                ]
            ),
            stdout=subprocess.DEVNULL,
        )
        self.where.wait_port(self.port)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    close = stop
