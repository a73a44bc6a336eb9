"""Where the project lives and where it keeps its state (weights, caches, databases, logs)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("HXP_HOME") or Path(__file__).resolve().parents[3])


def state_dir() -> Path:
    """The project's state directory (HXP_STATE_DIR, default <project>/.state), created on demand."""
    path = Path(os.environ.get("HXP_STATE_DIR") or PROJECT_ROOT / ".state")
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(*parts: str) -> Path:
    """A folder under the state directory, created on demand."""
    path = state_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
