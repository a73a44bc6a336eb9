"""The native runner's side of configuration changes (`hxp run`).

At start the runner records the catalogue it serves as a version and forgets backends left over from an earlier
run (its engines start on their catalogue ports). An engine that a rolling update replaced and stopped is not a
failure of the stack; the engines updates started are stopped with it.
"""

from __future__ import annotations

from pathlib import Path

from hxp.lifecycle import rolling
from hxp.lifecycle.versions import ConfigStore


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
