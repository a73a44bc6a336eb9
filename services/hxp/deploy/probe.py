"""Container health probe: exit 0 when a URL answers 2xx within the timeout, else 1.

    python -m hxp.deploy.probe [URL]

Without a URL it probes the engine this container serves: ``/health`` on the
port in PID 1's command line (``--port N``, or the catalogue port of
``hxp model serve NAME``), so one image-level HEALTHCHECK fits every model.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 5.0


def engine_port(argv: list[str]) -> int:
    """The port an engine command line listens on."""
    if "--port" in argv:
        return int(argv[argv.index("--port") + 1])
    if "serve" in argv:
        from hxp.core import catalogue

        return catalogue.load().get(argv[argv.index("serve") + 1]).port
    raise ValueError(f"no --port and no `serve NAME` in {' '.join(argv)}")


def main_process_argv() -> list[str]:
    return [a.decode() for a in Path("/proc/1/cmdline").read_bytes().split(b"\0") if a]


def probe(url: str, timeout: float = TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) URLs we build
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else f"http://127.0.0.1:{engine_port(main_process_argv())}/health"
    ok = probe(url)
    print(f"{url}: {'ok' if ok else 'unhealthy'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
