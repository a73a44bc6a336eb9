"""Publishing target and rule files to the remote Prometheus, and asking it to reload.

The destination is a directory the remote Prometheus reads (a local path, e.g.
a shared mount) or an ssh destination ``user@host:/etc/prometheus/file_sd``,
written with the command in HXP_SSH (default: ssh in batch mode). Every file
is replaced atomically (written beside, then renamed) so Prometheus never
reads half a file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx

DEFAULT_SSH = "ssh -o BatchMode=yes -o ConnectTimeout=10"
_SSH_DESTINATION = re.compile(r"^(?P<host>[^/:\s]+):(?P<path>/.*)$")


def split_destination(destination: str) -> tuple[str | None, str]:
    """(ssh host or None, directory) of a destination."""
    remote = _SSH_DESTINATION.match(destination)
    return (remote["host"], remote["path"].rstrip("/") or "/") if remote else (None, destination)


def publish(files: Mapping[str, str], destination: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """Write ``files`` (name -> text) into ``destination``; returns where each one went."""
    host, directory = split_destination(destination)
    if host is None:
        return [_write_local(Path(directory), name, text) for name, text in files.items()]
    ssh = shlex.split(env.get("HXP_SSH") or DEFAULT_SSH)
    written = []
    for name, text in files.items():
        target = f"{directory}/{name}"
        script = (
            f"mkdir -p {shlex.quote(directory)} && cat > {shlex.quote(target + '.tmp')}"
            f" && mv {shlex.quote(target + '.tmp')} {shlex.quote(target)}"
        )
        result = subprocess.run([*ssh, host, script], input=text, text=True, capture_output=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"writing {target} on {host} failed: {result.stderr.strip() or result.returncode}")
        written.append(f"{host}:{target}")
    return written


def _write_local(directory: Path, name: str, text: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".{name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, directory / name)
    return str(directory / name)


def reload(prometheus_url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """POST /-/reload; returns (reloaded, message). An unreachable server is reported, not raised."""
    url = prometheus_url.rstrip("/") + "/-/reload"
    try:
        response = httpx.post(url, timeout=timeout)
    except httpx.HTTPError as err:
        return False, (
            f"Prometheus at {prometheus_url} is not reachable ({err.__class__.__name__}: {err}); "
            "the files are in place and the target files are read on its next file_sd refresh"
        )
    if response.status_code == 200:
        return True, f"Prometheus at {prometheus_url} reloaded its configuration"
    if response.status_code in (403, 404, 405):
        return False, (
            f"Prometheus at {prometheus_url} refused the reload ({response.status_code}): start it with "
            "--web.enable-lifecycle; target files are still read on its next file_sd refresh, "
            "rule files need a reload"
        )
    return False, f"Prometheus at {prometheus_url} failed to reload ({response.status_code}): {response.text.strip()}"
