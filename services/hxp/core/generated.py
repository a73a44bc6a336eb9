"""Files generated from the catalogue and checked in (compose files, the Helm chart's values): write them, or
check that they are current."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def generate(
    out: Path, check: bool, stale: Callable[[], Iterable[str]], write: Callable[[], Iterable[Path]], command: str
) -> int:
    """With ``check``: name each stale file (exit status 1 if any); else write them all and name them."""
    if check:
        names = list(stale())
        for name in names:
            print(f"{out / name} differs from the catalogue: run `{command}`", file=sys.stderr)
        return 1 if names else 0
    for path in write():
        print(f"wrote {path}")
    return 0
