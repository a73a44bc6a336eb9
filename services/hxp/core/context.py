"""The process's runtime: one object holding the settings and everything built from them.

A component (a store, a pipeline, a client, a parsed table) is declared where it belongs, as a
factory ``def build(rt: Runtime) -> T``, and reached through :func:`runtime`:
``runtime().get(build)`` builds it on first use and returns the same object afterwards. Nothing
else keeps per-process state, so a test builds its own runtime (``use(Runtime(settings))``)
instead of resetting private globals, and a closed component is taken out with ``drop``.

Factories are keyed by identity; a factory may get other components from the runtime it is
given, never from :func:`runtime`, so that a runtime built for a test stays whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from hxp.core.catalogue import Catalogue
from hxp.core.catalogue import load as load_catalogue
from hxp.core.settings import Settings

T = TypeVar("T")
Factory = Callable[["Runtime"], T]


class Runtime:
    """The settings (read once) and the components built from them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._components: dict[Callable[..., Any], Any] = {}
        self._lock = threading.RLock()

    @property
    def settings(self) -> Settings:
        """This runtime's settings: given, or read from the environment on first use."""
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = Settings()
        return self._settings

    @property
    def catalogue(self) -> Catalogue:
        """The catalogue this process serves (HXP_CATALOGUE under HXP_PROFILE), loaded once."""
        return self.get(_catalogue)

    @catalogue.setter
    def catalogue(self, value: Catalogue) -> None:
        self.put(_catalogue, value)

    def get(self, factory: Factory[T]) -> T:
        """The component ``factory`` builds, built on first use (once, also across threads)."""
        try:
            return self._components[factory]
        except KeyError:
            with self._lock:
                if factory not in self._components:
                    self._components[factory] = factory(self)
                return self._components[factory]

    def peek(self, factory: Factory[T]) -> T | None:
        """The component if it was built, without building it."""
        return self._components.get(factory)

    def put(self, factory: Factory[T], value: T) -> None:
        """Replace the component ``factory`` stands for (e.g. a catalogue reloaded while the process runs)."""
        with self._lock:
            self._components[factory] = value

    def drop(self, factory: Factory[T]) -> T | None:
        """Forget the component (the next ``get`` builds a new one); return it, e.g. to close it."""
        with self._lock:
            return self._components.pop(factory, None)


def _catalogue(rt: Runtime) -> Catalogue:
    return load_catalogue()


_current: Runtime | None = None
_current_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime, built from the environment on first use."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = Runtime()
    return _current


def use(rt: Runtime | None = None) -> Runtime:
    """Make ``rt`` (default: a fresh one from the environment) this process's runtime, and return it."""
    global _current
    with _current_lock:
        _current = rt or Runtime()
        return _current
