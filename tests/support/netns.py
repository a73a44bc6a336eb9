"""Several hosts on one machine: Linux network namespaces joined by veth links to a switch.

A :class:`Network` makes a "switch" namespace holding a bridge, and one namespace per :class:`Host`, linked to
the bridge by a veth pair and given an address of a private /24 (10.77.0.0/24 unless told otherwise). The root
namespace keeps its routes and interfaces untouched: nothing outside the namespaces is reachable from them, and
they are reachable only from each other. A host's link can be cut at the switch (as by unplugging its cable) and
restored. Processes run in a host with ``host.wrap(argv)`` (``ip netns exec``); code of the test runs there with
``host.call(fn)`` or in ``host.executor()``'s threads (each thread enters the namespace with ``setns``, which
moves only that thread). :meth:`Network.close` deletes every namespace, killing what still runs in them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tests.support.servers import Where

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2, no permission), or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = "hxp-probe-" + secrets.token_hex(3)
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.decode().strip()}"
    _ip("netns", "delete", probe)
    return None


def enter(namespace: str) -> None:
    """Move the calling thread into a network namespace (its new sockets belong there)."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class Host(Where):
    """One host: its namespace, its address on the switch, the switch's end of its link."""

    def __init__(self, network: Network, name: str, address: str, port_name: str) -> None:
        super().__init__(address, ("ip", "netns", "exec", f"{network.tag}-{name}"))
        self.name = name
        self.namespace = f"{network.tag}-{name}"
        self._switch = network.switch
        self._port = port_name

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.executor(1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    def executor(self, workers: int) -> ThreadPoolExecutor:
        """A thread pool whose threads run inside this host."""
        return ThreadPoolExecutor(workers, thread_name_prefix=self.name, initializer=enter, initargs=(self.namespace,))

    def cut(self) -> None:
        """Unplug the host: its link goes down at the switch, and nothing reaches it or leaves it."""
        _ip("-n", self._switch, "link", "set", self._port, "down")

    def restore(self) -> None:
        """Plug the host back in."""
        _ip("-n", self._switch, "link", "set", self._port, "up")

    def sysctl(self, name: str, value: str) -> None:
        """Set a per-namespace kernel setting (e.g. ``net.ipv4.tcp_retries2``) on this host only."""
        subprocess.run([*self.prefix, "sysctl", "-q", "-w", f"{name}={value}"], check=True)


class Network:
    """A switch and the hosts plugged into it; a context manager that deletes them all on exit."""

    def __init__(self, subnet: str = "10.77.0") -> None:
        self.tag = "hxp" + secrets.token_hex(3)
        self.switch = f"{self.tag}-switch"
        self.subnet = subnet
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def host(self, name: str) -> Host:
        """A new host, plugged in and up, with the next address of the subnet."""
        index = len(self.hosts) + 1
        host = Host(self, name, f"{self.subnet}.{index}", f"p{index}")
        inside = f"{self.tag}h{index}"  # a veth name is at most 15 characters
        _ip("netns", "add", host.namespace)
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("link", "add", inside, "type", "veth", "peer", "name", host._port)
        _ip("link", "set", inside, "netns", host.namespace, "name", "eth0")
        _ip("link", "set", host._port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", host._port, "master", "br0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill what runs in the hosts and delete every namespace (the veth pairs go with them)."""
        for namespace in [*(h.namespace for h in self.hosts.values()), self.switch]:
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
