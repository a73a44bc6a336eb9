"""Building vLLM engine commands from the catalogue (pure functions, no engine started)."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from hxp.core import catalogue
from hxp.model.command import ENTRYPOINT, catalogue_commands, engine_command, engine_groups, tool_flags
from hxp.model.placement import place
from hxp.model.weights import package_dir, resolve_source

GPU = catalogue.load(profile="gpu")
CPU = catalogue.load(profile="cpu")


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def values(argv: list[str], flag: str) -> list[str]:
    start = argv.index(flag) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return argv[start:end]


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HXP_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    return tmp_path


def test_gpu_command_carries_every_catalogue_setting(state: Path) -> None:
    cmd = engine_command([GPU.get("mixtral-8x7b")], GPU.profile_settings, python="python3")
    argv = cmd.argv
    assert argv[:5] == ["python3", "-m", "vllm.entrypoints.cli.main", "serve", "mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert "--model" not in argv  # `vllm serve` takes the model as its first argument
    assert cmd.model == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert values(argv, "--served-model-name") == ["mixtral-8x7b"]
    assert option(argv, "--port") == "11400" and option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--max-model-len") == "32768"
    assert option(argv, "--dtype") == "float16"
    assert option(argv, "--gpu-memory-utilization") == "0.85"
    assert option(argv, "--max-num-batched-tokens") == "8192"
    assert option(argv, "--max-num-seqs") == "256"
    assert option(argv, "--tensor-parallel-size") == "2"
    assert "--runner" not in argv and "--trust-remote-code" not in argv and "--enforce-eager" not in argv
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "HF_HUB_OFFLINE" not in cmd.env  # a hub id: vLLM pulls it with HF_TOKEN
    assert "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env and cmd.cpus == ()
    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME"):
        assert Path(cmd.env[var]).is_relative_to(state), var
    assert cmd.base_url == "http://127.0.0.1:11400"


def test_trust_remote_code_and_host(state: Path) -> None:
    cmd = engine_command([GPU.get("phi-3-mini")], GPU.profile_settings, host="0.0.0.0")
    assert "--trust-remote-code" in cmd.argv
    assert option(cmd.argv, "--host") == "0.0.0.0" and cmd.base_url == "http://127.0.0.1:11403"
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "5"


def test_embedding_model_runs_the_pooling_runner() -> None:
    for cat in (GPU, CPU):
        cmd = engine_command(cat.embedding_models, cat.profile_settings)
        assert option(cmd.argv, "--runner") == "pooling"
        assert cmd.task == "embedding"


def test_cpu_command_uses_the_prepared_folder_and_no_gpu_settings(state: Path) -> None:
    cmd = engine_command([CPU.get("hermes-2")], CPU.profile_settings, enforce_eager=True)
    assert cmd.argv[3:5] == ["serve", str(state / "models" / "smollm2")] and cmd.model == cmd.argv[4]
    assert "--gpu-memory-utilization" not in cmd.argv
    assert "CUDA_VISIBLE_DEVICES" not in cmd.env
    assert cmd.env["HF_HUB_OFFLINE"] == "1"
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert option(cmd.argv, "--dtype") == "float32"  # see the measurements beside it in models.yaml
    assert "--enforce-eager" in cmd.argv
    assert "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env and cmd.cpus == ()  # not placed: vLLM's own `auto`


def test_placed_cpu_engine_is_pinned_and_binds_its_threads_to_its_cores() -> None:
    one = engine_command(CPU.chat_models, CPU.profile_settings, cpus=[1])
    assert one.cpus == (1,) and one.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    four = engine_command(CPU.chat_models, CPU.profile_settings, cpus=[5, 3, 4, 2])
    assert four.cpus == (2, 3, 4, 5)
    assert four.env["VLLM_CPU_OMP_THREADS_BIND"] == "2,3,4"  # the last core left to its API server/scheduler
    assert shlex.split(four.shell())[-len(four.argv) - 3 : -len(four.argv)] == ["taskset", "-c", "2,3,4,5"]


def test_gpu_engines_are_never_pinned() -> None:
    cmd = engine_command([GPU.get("phi-3-mini")], GPU.profile_settings, cpus=[1])
    assert cmd.cpus == () and "VLLM_CPU_OMP_THREADS_BIND" not in cmd.env


def test_catalogue_commands_follow_the_placement() -> None:
    placement = place([0, 1], ["chat", "embedding"])
    chat, embedding = catalogue_commands(CPU, placement=placement)
    assert (chat.cpus, embedding.cpus) == ((1,), (0,))
    assert (chat.env["VLLM_CPU_OMP_THREADS_BIND"], embedding.env["VLLM_CPU_OMP_THREADS_BIND"]) == ("1", "0")
    with pytest.raises(ValueError, match="placement is for 2 engines.*needs 5"):
        catalogue_commands(CPU, separate=True, placement=placement)


def test_tool_calling_flags_come_from_the_catalogue(tmp_path: Path) -> None:
    hermes = engine_command([GPU.get("hermes-2")], GPU.profile_settings).argv
    assert "--enable-auto-tool-choice" in hermes
    assert option(hermes, "--tool-call-parser") == "hermes"
    assert option(hermes, "--tool-strict-level") == "parameter"  # arguments always follow the tool's schema
    template = Path(option(hermes, "--chat-template"))
    assert template == catalogue.CHAT_TEMPLATES / "chatml_tools.jinja" and template.is_file()
    elsewhere = engine_command([GPU.get("hermes-2")], GPU.profile_settings, chat_templates=tmp_path).argv
    assert option(elsewhere, "--chat-template") == str(tmp_path / "chatml_tools.jinja")
    openchat = engine_command([GPU.get("openchat-3.5")], GPU.profile_settings).argv
    assert not {"--enable-auto-tool-choice", "--tool-call-parser", "--tool-strict-level", "--chat-template"} & set(
        openchat
    )
    for flags in (tool_flags(m.tools) for m in CPU.chat_models):  # the shared CPU engine: tools for every name
        assert option(flags, "--tool-call-parser") == "hermes" and flags == tool_flags(CPU.chat_models[0].tools)
    assert tool_flags(None) == []


def test_models_with_other_tool_settings_do_not_share_an_engine() -> None:
    first, second = CPU.chat_models[:2]
    without = replace(second, deployment=second.deployment.model_copy(update={"tools": None}))
    assert [len(group) for group in engine_groups([first, without])] == [1, 1]
    with pytest.raises(ValueError, match="different deployments"):
        engine_command([first, without], CPU.profile_settings)


def test_cpu_kv_cache_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert engine_command([CPU.get("hermes-2")], CPU.profile_settings).env["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_shared_cpu_engine_serves_every_chat_name_as_an_alias() -> None:
    commands = catalogue_commands(CPU)
    assert len(commands) == 2
    chat, embedding = commands
    assert values(chat.argv, "--served-model-name") == [m.name for m in CPU.chat_models]
    assert chat.names == [m.name for m in CPU.chat_models]
    assert chat.port == CPU.chat_models[0].port
    assert embedding.names == [m.name for m in CPU.embedding_models] and embedding.port == 11404


def test_separate_engines_one_per_model_on_its_own_port() -> None:
    commands = catalogue_commands(CPU, separate=True)
    assert [(c.names, c.port) for c in commands] == [([m.name], m.port) for m in CPU.models]


def test_gpu_models_never_share_an_engine() -> None:
    assert [len(group) for group in engine_groups(GPU.models)] == [1] * len(GPU.models)


def test_models_with_different_deployments_cannot_share() -> None:
    with pytest.raises(ValueError, match="mixtral-8x7b.*hermes-2"):
        engine_command([GPU.get("mixtral-8x7b"), GPU.get("hermes-2")], GPU.profile_settings)


def test_port_override() -> None:
    cmd = engine_command(CPU.chat_models, CPU.profile_settings, port=18000)
    assert cmd.port == 18000 and option(cmd.argv, "--port") == "18000"


def test_source_resolution_is_one_code_path(tmp_path: Path) -> None:
    model = GPU.get("openchat-3.5")
    assert resolve_source(model) == "openchat/openchat-3.5-0106"  # hub id, pulled by vLLM
    local = tmp_path / "weights" / "openchat"
    local.mkdir(parents=True)
    on_disk = replace(model, deployment=model.deployment.model_copy(update={"source": str(local)}))
    assert resolve_source(on_disk) == str(local)
    cmd = engine_command([on_disk], GPU.profile_settings)
    assert cmd.model == str(local) and cmd.env["HF_HUB_OFFLINE"] == "1"
    assert resolve_source(CPU.get("phi-3-mini")) == str(package_dir("smollm2"))


def test_shell_rendering_is_copy_pasteable() -> None:
    text = engine_command(CPU.chat_models, CPU.profile_settings).shell()
    words = shlex.split(text)
    assert "VLLM_CPU_KVCACHE_SPACE=1" in words and words[words.index(ENTRYPOINT) + 1] == "serve"


def test_a_planned_cpu_engine_has_its_cores_and_kv_cache_from_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    server = catalogue.load(profile="server")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "9")  # a development override: not for a planned engine
    cmd = engine_command([server.get("hermes-2")], server.profile_settings)
    assert cmd.cpus == (7, 8, 9, 10) and cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "7,8,9"
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "4" and "CUDA_VISIBLE_DEVICES" not in cmd.env
    assert engine_command([server.get("hermes-2")], server.profile_settings, cpus=[7]).cpus == (7,)
    assert engine_command([CPU.get("phi-3-mini")], CPU.profile_settings).env["VLLM_CPU_KVCACHE_SPACE"] == "9"
