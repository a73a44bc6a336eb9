"""The model catalogue: the real file loads, and every bad catalogue fails naming the entry and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp.core import catalogue
from hxp.core.catalogue import CatalogueError
from hxp.model.command import catalogue_commands

RAW: dict[str, Any] = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())


def raw() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in doc["models"] if m["name"] == name)


def fails(doc: dict[str, Any], *fragments: str, profile: str = "gpu") -> str:
    with pytest.raises(CatalogueError) as err:
        catalogue.parse(doc, profile)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_the_project_catalogue_has_both_profiles() -> None:
    gpu, cpu = catalogue.load(profile="gpu"), catalogue.load(profile="cpu")
    assert gpu.names == cpu.names
    assert [m.port for m in gpu.models] == [11400, 11401, 11402, 11403, 11404]
    assert gpu.get("mixtral-8x7b").source == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert gpu.get("phi-3-mini").max_model_len == 128000
    assert {m.package for m in cpu.chat_models} == {"smollm2"}
    assert [m.package for m in cpu.embedding_models] == ["all-minilm-l6-v2"]


def test_a_profile_may_override_the_request_timeout() -> None:
    doc = raw()
    entry(doc, "phi-3-mini")["profiles"]["cpu"] = {**entry(doc, "phi-3-mini")["profiles"]["cpu"], "timeout_s": 240}
    assert catalogue.parse(doc, "cpu").get("phi-3-mini").api.timeout_s == 240
    assert catalogue.parse(doc, "gpu").get("phi-3-mini").api.timeout_s == entry(doc, "phi-3-mini")["api"]["timeout_s"]
    entry(doc, "phi-3-mini")["profiles"]["cpu"]["timeout_s"] = 0
    fails(doc, "model 'phi-3-mini' field profiles.cpu.timeout_s", profile="cpu")


def test_duplicate_name() -> None:
    doc = raw()
    entry(doc, "hermes-2")["name"] = "mixtral-8x7b"
    fails(doc, "model 'mixtral-8x7b'", "field name", "duplicate")


def test_duplicate_port() -> None:
    doc = raw()
    entry(doc, "phi-3-mini")["port"] = 11402
    fails(doc, "model 'phi-3-mini'", "field port", "11402", "openchat-3.5")


@pytest.mark.parametrize("port", [80, 0, 70000, -1])
def test_port_out_of_range(port: int) -> None:
    doc = raw()
    entry(doc, "openchat-3.5")["port"] = port
    fails(doc, "model 'openchat-3.5'", "field port")


def test_unknown_profile_in_an_entry() -> None:
    doc = raw()
    entry(doc, "hermes-2")["profiles"]["tpu"] = entry(doc, "hermes-2")["profiles"]["gpu"]
    fails(doc, "model 'hermes-2'", "field profiles.tpu", "unknown profile 'tpu'")


def test_unknown_profile_requested() -> None:
    fails(raw(), "unknown profile 'staging'", "cpu", "gpu", profile="staging")


@pytest.mark.parametrize("source", [None, ""])
def test_missing_model_id(source: str | None) -> None:
    doc = raw()
    gpu = entry(doc, "phi-3-mini")["profiles"]["gpu"]
    if source is None:
        del gpu["source"]
    else:
        gpu["source"] = source
    fails(doc, "model 'phi-3-mini'", "field profiles.gpu.source")


def test_unknown_package_source() -> None:
    doc = raw()
    entry(doc, "hermes-2")["profiles"]["cpu"] = {**entry(doc, "hermes-2")["profiles"]["cpu"], "source": "package:nope"}
    fails(doc, "model 'hermes-2'", "field profiles.cpu.source", "unknown package 'nope'", profile="cpu")


LIMITS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("vllm.max_model_len", lambda m: m["profiles"]["gpu"]["vllm"], "max_model_len"),
    ("vllm.max_num_seqs", lambda m: m["profiles"]["gpu"]["vllm"], "max_num_seqs"),
    ("vllm.max_num_batched_tokens", lambda m: m["profiles"]["gpu"]["vllm"], "max_num_batched_tokens"),
    ("vllm.gpu_memory_utilization", lambda m: m["profiles"]["gpu"]["vllm"], "gpu_memory_utilization"),
    ("tensor_parallel_size", lambda m: m["profiles"]["gpu"], "tensor_parallel_size"),
    ("api.timeout_s", lambda m: m["api"], "timeout_s"),
    ("api.max_concurrent_requests", lambda m: m["api"], "max_concurrent_requests"),
    ("targets.p95_latency_ms", lambda m: m["profiles"]["gpu"]["targets"], "p95_latency_ms"),
    ("targets.throughput_rps", lambda m: m["profiles"]["gpu"]["targets"], "throughput_rps"),
    ("targets.memory_gb", lambda m: m["profiles"]["gpu"]["targets"], "memory_gb"),
]


@pytest.mark.parametrize("value", [0, -5])
@pytest.mark.parametrize("field, where, key", LIMITS, ids=[limit[0] for limit in LIMITS])
def test_negative_or_zero_limits(field: str, where: Callable, key: str, value: int) -> None:
    doc = raw()
    where(entry(doc, "openchat-3.5"))[key] = value
    fails(doc, "model 'openchat-3.5'", key)


def test_negative_retries() -> None:
    doc = raw()
    entry(doc, "hermes-2")["api"]["retries"] = -1
    fails(doc, "model 'hermes-2'", "field api.retries")


def test_two_engines_over_the_memory_of_one_gpu() -> None:
    doc = raw()
    entry(doc, "openchat-3.5")["profiles"]["gpu"]["devices"] = [5]  # joins phi-3-mini (0.7) and MiniLM (0.1)
    message = fails(doc, "field profiles.gpu.vllm.gpu_memory_utilization", "GPU 5", "openchat-3.5", "phi-3-mini")
    assert "1.60" in message


def test_engines_within_the_memory_of_one_gpu_are_fine() -> None:
    cat = catalogue.parse(raw(), "gpu")  # phi-3-mini 0.7 + MiniLM 0.1 share GPU 5
    assert cat.get("phi-3-mini").deployment.devices == cat.get("all-minilm-l6-v2").deployment.devices == [5]


def test_unknown_fallback() -> None:
    doc = raw()
    entry(doc, "openchat-3.5")["api"]["fallbacks"] = ["gpt-4"]
    fails(doc, "model 'openchat-3.5'", "field api.fallbacks", "gpt-4")


def test_an_alias_names_its_model() -> None:
    cat = catalogue.load()
    assert cat.get("text-embedding-ada-002").name == cat.canonical("text-embedding-ada-002") == "all-minilm-l6-v2"
    assert cat.canonical("all-minilm-l6-v2") == "all-minilm-l6-v2" and cat.canonical("gpt-4") is None
    assert "text-embedding-ada-002" not in cat.names  # not a model of its own: no engine, port or target


def test_an_alias_may_not_name_another_model() -> None:
    doc = raw()
    entry(doc, "phi-3-mini")["api"]["aliases"] = ["hermes-2"]
    fails(doc, "model 'phi-3-mini'", "field api.aliases", "'hermes-2' already names 'hermes-2'")
    doc = raw()
    entry(doc, "phi-3-mini")["api"]["aliases"] = ["text-embedding-ada-002"]  # all-minilm-l6-v2's alias
    fails(doc, "field api.aliases", "'text-embedding-ada-002' already names")


def test_an_alias_must_look_like_a_model_name() -> None:
    doc = raw()
    entry(doc, "phi-3-mini")["api"]["aliases"] = ["GPT 4"]
    fails(doc, "model 'phi-3-mini'", "api.aliases")


def test_unknown_field_is_rejected() -> None:
    doc = raw()
    entry(doc, "hermes-2")["profiles"]["gpu"]["vllm"]["max_modl_len"] = 4096
    fails(doc, "model 'hermes-2'", "max_modl_len")


def test_tools_are_declared_per_model_and_profile() -> None:
    gpu, cpu = catalogue.load(profile="gpu"), catalogue.load(profile="cpu")
    assert gpu.get("hermes-2").tools == catalogue.Tools(parser="hermes", chat_template="chatml_tools.jinja")
    assert gpu.get("mixtral-8x7b").tools.chat_template == "mistral_instruct_tools.jinja"
    assert gpu.get("openchat-3.5").tools is None and gpu.get("phi-3-mini").tools is None
    assert {m.tools for m in cpu.chat_models} == {catalogue.Tools(parser="hermes", chat_template="chatml_tools.jinja")}
    assert all(m.tools is None for m in gpu.embedding_models + cpu.embedding_models)


def test_tools_need_a_chat_model_a_parser_and_a_shipped_template() -> None:
    doc = raw()
    entry(doc, "all-minilm-l6-v2")["profiles"]["gpu"]["tools"] = {"parser": "hermes"}
    fails(doc, "model 'all-minilm-l6-v2'", "profiles.gpu.tools", "only chat models")
    doc = raw()
    entry(doc, "phi-3-mini")["profiles"]["gpu"]["tools"] = {"parser": ""}
    fails(doc, "model 'phi-3-mini'", "tools.parser")
    doc = raw()
    entry(doc, "phi-3-mini")["profiles"]["gpu"]["tools"] = {"parser": "hermes", "chat_template": "phi3_tools.jinja"}
    fails(doc, "model 'phi-3-mini'", "tools.chat_template", "phi3_tools.jinja")
    doc = raw()
    entry(doc, "phi-3-mini")["profiles"]["gpu"]["tools"] = {"parser": "hermes", "chat_template": "../models.yaml"}
    fails(doc, "model 'phi-3-mini'", "tools.chat_template")


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(CatalogueError, match="models.yaml"):
        catalogue.load(bad)


def test_a_fifth_model_is_one_entry(tmp_path: Path) -> None:
    doc = raw()
    doc["models"].append(
        {
            "name": "qwen-7b",
            "port": 11405,
            "task": "chat",
            "api": {"timeout_s": 60, "max_concurrent_requests": 50},
            "profiles": {
                "gpu": {
                    "source": "Qwen/Qwen2.5-7B-Instruct",
                    "devices": [6],
                    "tensor_parallel_size": 1,
                    "vllm": {"max_model_len": 8192, "dtype": "float16", "gpu_memory_utilization": 0.8},
                    "targets": {"avg_latency_ms": 800, "p95_latency_ms": 1200, "throughput_rps": 20, "memory_gb": 16},
                },
                "cpu": entry(doc, "hermes-2")["profiles"]["cpu"],
            },
        }
    )
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    gpu = catalogue.load(path, "gpu")
    assert gpu.get("qwen-7b").port == 11405
    engines = {tuple(c.names): c for c in catalogue_commands(gpu)}
    qwen = engines[("qwen-7b",)]
    assert qwen.port == 11405 and qwen.env["CUDA_VISIBLE_DEVICES"] == "6"
    assert "Qwen/Qwen2.5-7B-Instruct" in qwen.argv
    # on CPU the new chat model joins the shared SmolLM2 engine as one more alias
    cpu_engines = catalogue_commands(catalogue.load(path, "cpu"))
    assert "qwen-7b" in cpu_engines[0].names and len(cpu_engines) == 2
