"""Where the stores live: each by URL, with an embedded default (the SQL database's is in :mod:`.database`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from hxp.core.paths import state_path


class QdrantLocation(TypedDict, total=False):
    """Where Qdrant is, as client arguments: ``url`` (and ``api_key``) for a server, ``path`` for the local engine."""

    url: str
    api_key: str
    path: str


def qdrant_location() -> QdrantLocation:
    """Client arguments: QDRANT_URL (+ QDRANT_API_KEY) for a server, else the local path QDRANT_PATH."""
    url = os.environ.get("QDRANT_URL")
    if url:
        key = os.environ.get("QDRANT_API_KEY")
        location: QdrantLocation = {"url": url}
        if key:
            location["api_key"] = key
        return location
    path = os.environ.get("QDRANT_PATH")
    return {"path": str(Path(path) if path else state_path("qdrant"))}
