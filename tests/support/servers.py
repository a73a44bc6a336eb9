"""Real PostgreSQL and Redis servers on 127.0.0.1, started and stopped by the tests."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class PostgresServer:
    """A throwaway PostgreSQL cluster; can be stopped and started again (outage tests).

    Without ``password`` every connection is trusted; with it the cluster asks every
    client for a password (scram-sha-256) and ``url`` carries the superuser's.
    """

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hxp-pg-"))
        self.data = self.dir / "data"
        self._as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self._as_user = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            owner = (pw.pw_uid, pw.pw_gid)
            os.chown(self.dir, *owner)
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            if owner:
                os.chown(pwfile, *owner)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "hxp", *auth, "-E", "UTF8")
        finally:
            (self.dir / "pwfile").unlink(missing_ok=True)
        secret = f":{quote(password, safe='')}" if password is not None else ""
        self.url = f"postgresql://hxp{secret}@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as_user, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A throwaway Redis server without persistence; can be stopped and started again.

    With ``password`` it requires it (``requirepass``) and ``url`` carries it.
    """

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        secret = f":{quote(password, safe='')}@" if password is not None else ""
        self.url = f"redis://{secret}127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        # the password goes in through stdin (a config file), never on the command line
        config = f"requirepass {self.password}\n" if self.password is not None else ""
        self._proc = subprocess.Popen(
            ["redis-server", "-", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(config)
        self._proc.stdin.close()
        wait_port(self.port)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    close = stop
