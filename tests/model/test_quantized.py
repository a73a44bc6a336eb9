"""Quantized SmolLM2 (hxp.model.quantize, llm-compressor): the catalogue names recipes, the weights are made once
per set of inputs, an engine this CPU's vLLM cannot run is refused before it starts (hxp.model.kernels, in the
start path and in `hxp doctor`), and the quantized engines answer right at temperature 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue, CatalogueError
from hxp.core.paths import state_path
from hxp.model import kernels, quantize, weights
from hxp.model.command import engine_command, engine_groups
from hxp.model.service import start_engine
from hxp.ops import doctor
from hxp.ops.findings import FAIL, PASS
from hxp.process import ServiceError
from tests.fixtures.engines import RunningEngine
from tests.support.servers import free_port

# /proc/cpuinfo flags of an AMD EPYC 7B12 (Zen 2): AVX2, no AVX-512
AVX2_CPUINFO = (
    "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
    "fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid "
    "extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand "
    "hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp "
    "vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 "
    "clzero xsaveerptr arat npt nrip_save umip rdpid\n"
)
AVX2 = kernels.cpu_flags(AVX2_CPUINFO)
# Skylake-SP: AVX-512 without BF16 or AMX; Sapphire Rapids: AVX-512 BF16 and AMX
SKYLAKE = (AVX2 or frozenset()) | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
SAPPHIRE_RAPIDS = SKYLAKE | {"avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}
ENGINE_PYTHON = weights.engine_python()


def cpu_catalogue(**quantized: Any) -> Catalogue:
    """models.yaml under the cpu profile, the chat deployments given ``quantized`` fields (e.g. quantization)."""
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    for model in doc["models"]:
        if model["task"] == "chat":
            model["profiles"]["cpu"] = {**model["profiles"]["cpu"], **quantized}
    return catalogue.parse(doc, "cpu")


def chat_models(name: str) -> list[catalogue.Model]:
    cat = catalogue.load(profile="cpu")
    return quantize.with_quantization(engine_groups(cat.chat_models)[0], name, cat)


# --- catalogue and command ---------------------------------------------------------------------


def test_a_deployment_naming_a_quantization_is_served_from_its_weights_with_its_dtype() -> None:
    cat = cpu_catalogue(quantization="w8a8")
    chat = engine_groups(cat.chat_models)[0]
    assert len(chat) == 4 and {m.quantization for m in chat} == {cat.quantizations["w8a8"]}
    command = engine_command(chat, cat.profile_settings, port=free_port())
    served = command.argv[command.argv.index("serve") + 1]
    assert served == command.model == str(quantize.quantized_dir(chat[0]))
    assert Path(served).parent == state_path("quantized")
    assert command.argv[command.argv.index("--dtype") + 1] == command.dtype == "bfloat16"
    assert command.env["HF_HUB_OFFLINE"] == "1"
    plain = engine_groups(catalogue.load(profile="cpu").chat_models)[0]
    assert len(engine_groups([*plain, *chat])) == 2  # quantized and plain weights never share an engine


def test_the_catalogue_refuses_an_unknown_quantization_and_a_group_size_outside_w4a16() -> None:
    with pytest.raises(CatalogueError, match=r"model 'mixtral-8x7b' field profiles.cpu.quantization: unknown"):
        cpu_catalogue(quantization="w3a5")
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    doc["quantizations"]["w8a8"]["group_size"] = 64
    with pytest.raises(CatalogueError, match="group_size applies to the group-wise W4A16 scheme"):
        catalogue.parse(doc, "cpu")


def test_the_weights_folder_is_keyed_by_every_input() -> None:
    cat = catalogue.load(profile="cpu")
    chat = engine_groups(cat.chat_models)[0]
    w8a8 = quantize.with_quantization(chat, "w8a8", cat)
    assert quantize.quantized_dir(w8a8[0]) == quantize.quantized_dir(w8a8[-1])  # the four names share them
    assert quantize.quantized_dir(w8a8[0]) != quantize.quantized_dir(quantize.with_quantization(chat, "w4a16", cat)[0])
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    doc["quantizations"]["w8a8"]["smoothing_strength"] = 0.5
    other = catalogue.parse(doc, "cpu")
    changed = quantize.with_quantization(engine_groups(other.chat_models)[0], "w8a8", other)
    assert quantize.quantized_dir(changed[0]).name.startswith("smollm2-w8a8-")
    assert quantize.quantized_dir(changed[0]) != quantize.quantized_dir(w8a8[0])


def test_a_second_quantize_run_finds_the_weights_made(capfd: pytest.CaptureFixture) -> None:
    models = chat_models("w8a8")
    quantize.ensure(models, "cpu")
    folder = quantize.quantized_dir(models[0])
    made = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    capfd.readouterr()
    assert quantize.run([models[0].name], "w8a8", profile="cpu") == 0
    assert f"up to date ({folder})" in capfd.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == made
    assert kernels.weights_kernels(str(folder)) == {kernels.INT8_SCALED_MM}


# --- kernels ----------------------------------------------------------------------------------


def test_the_cpu_flags_pick_the_kernel_library_vllm_loads() -> None:
    assert AVX2 is not None and "avx2" in AVX2 and "avx512f" not in AVX2
    assert kernels.kernel_library(AVX2) == "_C_AVX2"
    assert kernels.kernel_library(SKYLAKE) == "_C_AVX512"
    assert kernels.kernel_library(SAPPHIRE_RAPIDS) == "_C"
    assert kernels.cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") is None  # not x86


def test_four_bit_weights_need_avx512_and_sixteen_bit_activations() -> None:
    wna16, int8 = {kernels.WNA16}, {kernels.INT8_SCALED_MM}
    refused = kernels.missing(wna16, ENGINE_PYTHON, "bfloat16", AVX2)
    assert refused is not None and "cpu_gemm_wna16" in refused and "AVX2 without AVX-512" in refused
    assert kernels.missing(wna16, ENGINE_PYTHON, "bfloat16", SKYLAKE) is None
    assert "not float32" in (kernels.missing(wna16, ENGINE_PYTHON, "float32", SKYLAKE) or "")
    assert kernels.missing(int8, ENGINE_PYTHON, "bfloat16", AVX2) is None
    assert kernels.missing(int8, ENGINE_PYTHON, "float32", AVX2) is None  # oneDNN takes float32
    assert "onednn_scaled_mm" in (kernels.missing(int8, ENGINE_PYTHON, "float32", SAPPHIRE_RAPIDS) or "")  # AMX
    assert kernels.missing(set(), ENGINE_PYTHON, "float32", AVX2) is None


def test_a_w4a16_engine_is_refused_before_it_starts_on_an_avx2_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = chat_models("w4a16")
    quantize.ensure(models, "cpu")
    monkeypatch.setattr(kernels, "cpu_flags", lambda: AVX2)
    cat = catalogue.load(profile="cpu")
    command = engine_command(models, cat.profile_settings, port=free_port(), enforce_eager=True)
    log = tmp_path / "engine.log"
    with pytest.raises(ServiceError, match=r"not started: .*smollm2-w4a16-.*cpu_gemm_wna16.*_C_AVX2"):
        start_engine(command, log=log)
    assert not log.exists()  # no process was started


def test_doctor_names_an_engine_whose_weights_this_cpu_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cat = cpu_catalogue(quantization="w4a16")
    monkeypatch.setattr(kernels, "cpu_flags", lambda: AVX2)
    [avx2] = doctor.kernels(cat)
    assert avx2.check == "kernels of mixtral-8x7b+3" and avx2.status == FAIL
    assert "cpu_gemm_wna16" in avx2.detail and "quantization" in avx2.fix
    monkeypatch.setattr(kernels, "cpu_flags", lambda: SKYLAKE)
    [avx512] = doctor.kernels(cat)
    assert avx512.status == PASS and "cpu_gemm_wna16 with bfloat16" in avx512.detail
    assert doctor.kernels(catalogue.load(profile="cpu")) == []  # plain weights need no particular kernel


# --- the quantized engines ----------------------------------------------------------------------

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


def _served_from(engine: RunningEngine) -> str:
    import httpx

    return httpx.get(engine.url("/v1/models"), timeout=30).json()["data"][0]["root"]


@pytest.mark.engine
def test_the_w8a8_engine_answers_paris_through_the_gateway(gateway_factory: Any, w8a8_engine: RunningEngine) -> None:
    assert "/quantized/smollm2-w8a8-" in _served_from(w8a8_engine)
    gateway = gateway_factory({name: [w8a8_engine.base_url + "/v1"] for name in w8a8_engine.names})
    model = w8a8_engine.names[-1]
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.create_key(models=[model]), max_retries=0, timeout=300
    )
    answer = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in (answer.choices[0].message.content or "")
    completion = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert completion.choices[0].text.strip().startswith("Paris")


@pytest.mark.engine
def test_the_w4a16_engine_answers_paris(w4a16_engine: RunningEngine) -> None:
    assert "/quantized/smollm2-w4a16-" in _served_from(w4a16_engine)
    client = openai.OpenAI(base_url=w4a16_engine.url("/v1"), api_key="unused", max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model=w4a16_engine.names[0], messages=QUESTION, temperature=0, max_tokens=32
    )
    assert "Paris" in (answer.choices[0].message.content or "")
