"""A Docker Engine with Compose v2 for the compose test, and the stand-ins' Debian base image.

The engine that answers (``docker info``) is used as it is. Otherwise ``dockerd`` is started here
in the background (overlay2, data root ``HXP_DOCKER_DATA_ROOT``, default /var/lib/docker) and
stopped again by :meth:`Engine.close`; `make compose-deps` installs it (Debian's docker.io) when a
machine has none. Images and the build cache stay in the data root, so later runs reuse them.

No image registry is reachable on the test machines: the base of every stand-in is a Debian
bookworm made by ``debootstrap --variant=minbase`` from the host's Debian mirror and imported with
``docker import`` (only when the image is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hxp.core.paths import state_path
from hxp.process import Service

DATA_ROOT = os.environ.get("HXP_DOCKER_DATA_ROOT") or "/var/lib/docker"
READY_TIMEOUT_S = 60.0
BASE_IMAGE = "hxp-standin/debian:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIN_COMPOSE = (2, 24)  # !override and !reset in compose.dev.yaml


def docker(*args: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, **kwargs)


def answers() -> bool:
    return shutil.which("docker") is not None and docker("info", check=False).returncode == 0


@dataclass
class Engine:
    """The Docker Engine the test uses; ``daemon`` is set when this module started it."""

    daemon: Service | None = None

    def close(self) -> None:
        if self.daemon is None or not self.daemon.alive():
            return
        os.kill(self.daemon.pid, signal.SIGTERM)  # dockerd first: it stops its containerd itself
        try:
            self.daemon.proc.wait(60)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pass
        self.daemon.stop(grace=5)


def engine() -> Engine:
    """The running engine, or one started here; fails with what to install when there is none."""
    if answers():
        return Engine()
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None:
        raise RuntimeError("no Docker Engine answers and none is installed: run `make compose-deps`")
    log = state_path("logs", "tests") / "dockerd.log"
    daemon = Service("dockerd", [dockerd, "--storage-driver=overlay2", f"--data-root={DATA_ROOT}"], log=log).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not answers():
        if not daemon.alive() or time.monotonic() > deadline:
            daemon.stop(grace=10)
            raise RuntimeError(f"dockerd did not become ready:\n{daemon.log_tail()}")
        time.sleep(0.5)
    return Engine(daemon)


def compose_version() -> tuple[int, int]:
    done = docker("compose", "version", "--short", check=False)
    found = re.match(r"v?(\d+)\.(\d+)", done.stdout.strip())
    if done.returncode != 0 or not found:
        raise RuntimeError(f"`docker compose` is missing (Compose v2: run `make compose-deps`): {done.stderr}")
    return int(found.group(1)), int(found.group(2))


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for bookworm (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    for path in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]:
        if path.is_file():
            found = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", path.read_text(), re.M)
            if found:
                return found.group(1)
    return DEFAULT_MIRROR


def base_image() -> str:
    """The stand-ins' Debian base image, made with debootstrap + docker import when it is missing."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: run `make compose-deps`")
    with tempfile.TemporaryDirectory(prefix="hxp-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(
                ["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, capture_output=True, timeout=600
            )
        finally:
            tar.stdout.close()  # type: ignore[union-attr]
            tar.wait()
    return BASE_IMAGE
