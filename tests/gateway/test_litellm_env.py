"""LiteLLM reads its settings once, when first imported: the gateway applies them before, or refuses to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hxp.gateway import litellm_env

IMPORTED_FIRST = "import litellm; from hxp.gateway import litellm_env; litellm_env.apply(); print(litellm_env.unread())"
APPLIED_FIRST = "from hxp.gateway import litellm_env; litellm_env.apply(); import litellm; print(litellm_env.unread())"


def _unread(code: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_settings_applied_before_litellm_is_imported_are_the_ones_it_holds() -> None:
    assert _unread(APPLIED_FIRST) == "[]"


def test_settings_applied_after_litellm_was_imported_are_named() -> None:
    assert _unread(IMPORTED_FIRST) == repr(list(litellm_env.SETTINGS))


def test_the_gateway_refuses_to_start_where_litellm_read_its_settings_first(tmp_path: Path) -> None:
    code = "import litellm, sys; from hxp.gateway import launcher; sys.exit(launcher.serve('127.0.0.1', 1))"
    env = {
        "PATH": "/usr/bin:/bin",
        "HXP_STATE_DIR": str(tmp_path),
        "HXP_MASTER_KEY": "sk-" + "x" * 40,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "LiteLLM was imported before its settings were applied" in done.stderr
