"""The native runner's side of configuration changes (`hxp run`).

At start the runner records the catalogue it serves as a version and forgets backends left over from an earlier
run (its engines start on their catalogue ports). An engine that a rolling update replaced and stopped is not a
failure of the stack; the engines updates started are stopped with it. :class:`NativeRunner` is the rolling
update's runner for this stack: engine processes of this host, each new one on a free port.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hxp.core import settings
from hxp.core.catalogue import Catalogue, Model
from hxp.core.paths import state_path
from hxp.core.versions import ConfigStore
from hxp.lifecycle import rolling
from hxp.lifecycle.plan import Refused, check_memory, check_weights
from hxp.model.command import engine_command
from hxp.model.service import Engine


@dataclass
class NativeEngine:
    """An engine process an update started."""

    engine: Engine

    @property
    def url(self) -> str:
        return f"{self.engine.base_url}/v1"

    @property
    def here(self) -> str:
        return self.engine.base_url

    def describe(self) -> str:
        return f"{self.engine.base_url} pid {self.engine.pid} (log: {self.engine.log})"

    def wait_healthy(self, timeout: float) -> None:
        self.engine.wait_healthy(timeout)

    def alive(self) -> bool:
        return self.engine.alive()

    def stop(self) -> None:
        self.engine.stop(grace=rolling.STOP_GRACE_S)


class NativeRunner:
    """Engines as processes of this host (`hxp run`): a new one on a free port, on the old one's cores."""

    by_name = False

    def __init__(self) -> None:
        self.template = settings.load().backend_url_template

    def check(self, models: tuple[Model, ...], old_urls: list[str]) -> None:
        for model in models:
            check_weights(model)
        missing = [url for url in old_urls if rolling.listener(rolling.port_of(url)) is None]
        if missing:
            raise Refused(f"no native engine listens at {' '.join(missing)}; start the stack (`hxp run`) first")
        check_memory(models, side_by_side=True)

    def pin(self, models: tuple[Model, ...], urls: list[str]) -> list[str]:
        return urls

    def here(self, url: str) -> str:
        return url.removesuffix("/v1")

    def start(
        self, cat: Catalogue, models: tuple[Model, ...], old_urls: list[str], options: rolling.Options
    ) -> NativeEngine:
        old = rolling.listener(rolling.port_of(old_urls[0]))
        cpus = tuple(old.cpu_affinity()) if old is not None and cat.profile_settings.device == "cpu" else ()
        command = engine_command(
            models, cat.profile_settings, port=rolling.free_port(), enforce_eager=options.enforce_eager, cpus=cpus
        )
        log = state_path("logs") / f"engine-{command.log_name}-{command.port}.log"
        return NativeEngine(Engine(command, log).start())

    def stop(self, urls: list[str]) -> None:
        for url in urls:
            process = rolling.listener(rolling.port_of(url))
            if process is not None:
                rolling.stop_group(process.pid)


def begin(catalogue_file: Path) -> None:
    """Record the catalogue the stack starts with, and clear the backends of an earlier run."""
    store = ConfigStore.open()
    try:
        store.reset_backends()
        store.record(catalogue_file.read_text(), "run")
    finally:
        store.close()


def replaced(base_url: str, names: list[str]) -> bool:
    """True when an update moved every one of ``names`` from the engine at ``base_url`` to another engine."""
    store = ConfigStore.open()
    try:
        live = store.live()
    finally:
        store.close()
    urls = live.backends if live is not None else {}
    return all(name in urls and f"{base_url}/v1" not in urls[name] for name in names)


def stop_replacements(own: list[str]) -> None:
    """Stop the engines updates started (those serving now that are not among ``own`` base URLs)."""
    store = ConfigStore.open()
    try:
        live = store.live()
    finally:
        store.close()
    for url in {u for urls in (live.backends if live else {}).values() for u in urls}:
        process = rolling.listener(rolling.port_of(url))
        if url.removesuffix("/v1") not in own and process is not None:
            rolling.stop_group(process.pid)
