"""Shared fixtures. Each concern keeps its fixtures in tests/fixtures/<concern>.py."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hxp.gateway import litellm_env  # noqa: E402 - imports nothing of LiteLLM

os.environ.update(litellm_env.FIXED)  # the tests' own LiteLLM imports read the shipped cost map, never download it

pytest_plugins = [
    "tests.fixtures.stores",
    "tests.fixtures.engines",
    "tests.fixtures.gateway",
    "tests.fixtures.usage",
    "tests.fixtures.vector",
    "tests.fixtures.console",
]
