"""Shared fixtures. Each concern keeps its fixtures in tests/fixtures/<concern>.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.engines",
    "tests.fixtures.gateway",
    "tests.fixtures.usage",
    "tests.fixtures.vector",
    "tests.fixtures.console",
]
