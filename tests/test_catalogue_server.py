"""The planned CPU profiles (server, server-256): the catalogue validates their memory and core plan."""

from __future__ import annotations

from typing import Any

import pytest

from hxp.core import catalogue
from hxp.core.catalogue import Machine, cpu_list
from tests.test_catalogue import entry, fails, raw

CHAT = ("mixtral-8x7b", "hermes-2", "openchat-3.5", "phi-3-mini")


def server(doc: dict[str, Any], name: str, profile: str = "server") -> dict[str, Any]:
    return entry(doc, name)["profiles"][profile]


def unlimited(deployment: dict[str, Any]) -> dict[str, Any]:
    """The deployment with a memory limit above any plan (to reach the checks after that one)."""
    deployment["targets"] = {**deployment["targets"], "memory_gb": 999}
    return deployment


@pytest.mark.parametrize("profile", ["server", "server-256"])
def test_the_server_profiles_plan_the_four_real_models_on_cores_of_their_own(profile: str) -> None:
    cat = catalogue.load(profile=profile)
    machine = cat.profile_settings.machine
    assert machine is not None and cat.names == catalogue.load(profile="gpu").names
    owners = [cpu_list(cat.profile_settings.gateway_cpus or "")] + [
        cpu_list(m.deployment.cpus or "") for m in cat.models
    ]
    every = [cpu for cpus in owners for cpu in cpus]
    assert len(every) == len(set(every)) and max(every) < machine.cores
    for model in cat.models:
        dep = model.deployment
        assert len({machine.numa_node(c) for c in cpu_list(dep.cpus or "")}) == 1, model.name
        assert not dep.source.startswith(catalogue.PACKAGE_PREFIX), "the real models, not the packaged stand-ins"
    assert {cat.get(n).deployment.weights_format for n in ("mixtral-8x7b", "hermes-2")} == {"awq"}


def test_the_document_hardware_is_the_default_machine() -> None:
    assert catalogue.load(profile="server").profile_settings.machine == Machine()
    assert (Machine().cores, Machine().threads, Machine().memory_gb) == (16, 32, 128)
    assert {"avx2", "avx512f"} <= set(Machine().instruction_sets)
    allocation = catalogue.load(profile="server").profile_settings.allocation
    assert (allocation.system_gb, allocation.models_gb, allocation.inference_gb, allocation.cache_gb) == (16, 80, 24, 8)


def test_phi3s_128k_context_needs_the_256_gb_machine() -> None:
    small, large = catalogue.load(profile="server"), catalogue.load(profile="server-256")
    assert small.get("phi-3-mini").max_model_len == 16384
    assert large.get("phi-3-mini").max_model_len == 131072
    doc = raw()
    server(doc, "phi-3-mini")["vllm"]["max_model_len"] = 131072
    fails(
        doc,
        "model 'phi-3-mini' field profiles.server.vllm.max_model_len",
        "48.0 GiB",
        "kv_cache_gib is 6",
        "holds 16384 tokens",
        profile="server",
    )
    unlimited(server(doc, "phi-3-mini"))["kv_cache_gib"] = 48
    fails(doc, "profiles.server", "the engines' KV caches take 63.4 GB", "inference_gb is 24", profile="server")


def test_the_256_gb_plan_does_not_fit_128_gb() -> None:
    doc = raw()
    doc["profiles"]["server-256"]["machine"]["memory_gb"] = 128
    fails(doc, "profiles.server-256.allocation", "256 GB is more than the machine's 128 GB", profile="server-256")
    doc["profiles"]["server-256"]["allocation"] = {}  # B.1's 128 GB allocation: 24 GB for inference
    fails(doc, "the engines' KV caches take", "inference_gb is 24", profile="server-256")


def test_bfloat16_mixtral_weights_do_not_fit_the_model_allocation() -> None:
    doc = raw()
    unlimited(server(doc, "mixtral-8x7b")).update(
        source="mistralai/Mixtral-8x7B-Instruct-v0.1", weights_format=None, weights_gb=93.4
    )
    fails(doc, "the engines' weights and runtimes take 144.9 GB", "models_gb is 80", profile="server")


def test_engines_may_not_share_cores() -> None:
    doc = raw()
    server(doc, "hermes-2")["cpus"] = "6-9"  # mixtral-8x7b has 3-6
    fails(doc, "model 'hermes-2' field profiles.server.cpus", "shares cores with 'mixtral-8x7b'", profile="server")
    doc = raw()
    server(doc, "all-minilm-l6-v2")["cpus"] = "1-2"
    fails(doc, "model 'all-minilm-l6-v2' field profiles.server.cpus", "the gateway", profile="server")
    doc = raw()
    server(doc, "phi-3-mini")["cpus"] = "13-16"
    fails(doc, "model 'phi-3-mini' field profiles.server.cpus", "beyond the machine's 16 cores", profile="server")


def test_an_engine_stays_on_one_numa_node() -> None:
    doc = raw()
    server(doc, "openchat-3.5", "server-256")["cpus"] = "10-17"
    fails(doc, "model 'openchat-3.5'", "spans NUMA nodes [0, 1]", profile="server-256")
    doc = raw()
    unlimited(server(doc, "phi-3-mini", "server-256"))["kv_cache_gib"] = 60  # node 1: hermes-2 and phi-3-mini
    fails(doc, "the engines on NUMA node 1 take", "the node has 128 GB", profile="server-256")


def test_the_memory_limit_covers_the_planned_memory() -> None:
    doc = raw()
    server(doc, "openchat-3.5")["targets"]["memory_gb"] = 4
    fails(
        doc,
        "model 'openchat-3.5' field profiles.server.targets.memory_gb",
        "below its planned 9.3 GB",
        profile="server",
    )


def test_4bit_weights_with_16bit_activations_need_avx512() -> None:
    doc = raw()
    doc["profiles"]["server"]["machine"] = {"instruction_sets": ["avx2"]}
    fails(doc, "model 'mixtral-8x7b' field profiles.server.weights_format", "AVX-512", profile="server")
    for name in ("mixtral-8x7b", "hermes-2", "openchat-3.5"):  # 4-bit weights with INT8 activations: AVX2 will do
        server(doc, name)["weights_format"] = "w4a8"
    assert catalogue.parse(doc, "server").profile_settings.machine == Machine(instruction_sets=["avx2"])


@pytest.mark.parametrize("field", ["cpus", "kv_cache_gib", "weights_gb", "shape"])
def test_a_planned_engine_names_its_plan(field: str) -> None:
    doc = raw()
    del server(doc, "openchat-3.5")[field]
    fails(doc, f"model 'openchat-3.5' field profiles.server.{field}: required", profile="server")


@pytest.mark.parametrize("cpuset", ["", "3-", "a", "6-3", "1,,2"])
def test_a_cpu_set_is_checked(cpuset: str) -> None:
    doc = raw()
    server(doc, "openchat-3.5")["cpus"] = cpuset
    fails(doc, "model 'openchat-3.5' field profiles.server.cpus", profile="server")


def test_cpu_sets_read_like_linux() -> None:
    assert cpu_list("0-3,8") == (0, 1, 2, 3, 8)
    assert cpu_list("5") == (5,)


def test_the_kv_cache_per_token_is_the_documents() -> None:
    """The issue's arithmetic: 128 KiB a token for the Mistral-based three, 384 KiB for Phi-3 (bfloat16)."""
    cat = catalogue.load(profile="server")
    shapes = {n: cat.get(n).deployment.shape for n in CHAT}
    per_token = {n: shape.kv_bytes_per_token("bfloat16") for n, shape in shapes.items() if shape is not None}
    assert per_token == {"mixtral-8x7b": 131072, "hermes-2": 131072, "openchat-3.5": 131072, "phi-3-mini": 393216}
