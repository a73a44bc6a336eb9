"""A TCP relay process on 127.0.0.1: a second address for a running server that a test can take down and
bring back, like an engine process that dies and restarts (while the real engine behind it keeps serving),
or that makes the server slow on purpose (``delay``: each read from the client is passed on that late).

Run as ``python -m tests.support.relay PORT TARGET_PORT [DELAY_S]``, or from tests through :class:`TcpRelay`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.support.lifetime import die_with_parent
from tests.support.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float = 0.0) -> None:
    try:
        while data := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(port: int, target_port: int, delay: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, target_writer, delay), _pipe(target_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


class TcpRelay:
    """``port`` forwarded to ``target_port`` by a child process while started, each read from a client ``delay``
    seconds late; stopping it kills the process (and so every connection it holds)."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def start(self) -> TcpRelay:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.relay", str(self.port), str(self.target_port), str(self.delay)],
            cwd=ROOT,
            preexec_fn=die_with_parent,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
