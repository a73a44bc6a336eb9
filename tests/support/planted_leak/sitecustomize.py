"""A planted leak for tests/gateway/test_soak.py: an unbounded cache on the usage path of every gateway worker.

Put this folder first on a gateway's PYTHONPATH: once ``hxp.gateway.usage.pipeline`` is imported, its ``submit``
also keeps each row under its request id with LEAK_BYTES of payload, never evicted.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

TARGET = "hxp.gateway.usage.pipeline"
LEAK_BYTES = 256 * 1024
CACHE: dict[str, bytes] = {}


def _plant(module: ModuleType) -> None:
    submit = module.submit

    def leaky_submit(record: Any) -> None:
        CACHE[record.request_id] = b"\x01" * LEAK_BYTES
        submit(record)

    module.submit = leaky_submit


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _plant(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
