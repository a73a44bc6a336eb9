"""Whether this CPU and the installed vLLM have the kernels an engine's weights need, read before it starts.

vLLM's x86 CPU build ships three kernel libraries and loads one by the CPU's instruction sets
(``vllm.platforms.cpu.import_kernels``): ``_C`` with AVX-512 BF16, ``_C_AVX512`` with AVX-512, else
``_C_AVX2``. They do not all register the same ops: 4-bit weights with 16-bit activations (W4A16, GPTQ, AWQ)
run on ``cpu_gemm_wna16``, which only the AVX-512 libraries have. On an AVX2 CPU such an engine reports ready
and answers 500 to its first request (and its engine core dies). Both kernels that 4-bit weights use and the AMX
one INT8 weights use on AMX CPUs take only 16-bit activations: with dtype float32 the first request fails the
same way. :func:`missing` says so before the engine starts. Which ops a checkpoint needs
comes from its ``config.json`` (``quantization_config``), or from the catalogue's recipe before it is made;
whether a library has an op, from the op's schema registered in the library file.
"""

from __future__ import annotations

import functools
import json
import mmap
import subprocess
from collections.abc import Iterable
from pathlib import Path

from hxp.core.catalogue import Model
from hxp.model.command import EngineCommand

WNA16 = "cpu_gemm_wna16"  # 4-bit weights, 16/32-bit activations
INT8_SCALED_MM = "onednn_scaled_mm"  # INT8 weights and activations (CPUInt8ScaledMM)
AMX_INT8 = "int8_scaled_mm_with_quant"  # what INT8_SCALED_MM's layers run instead on an AMX CPU
SCHEME_KERNELS = {"W8A8": INT8_SCALED_MM, "W4A16": WNA16}
AVX512 = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})  # what torch's _is_avx512_supported asks for


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The instruction sets /proc/cpuinfo (or ``cpuinfo``) lists; None on a CPU without x86 ``flags``."""
    text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line else None


def kernel_library(flags: frozenset[str]) -> str:
    """The vLLM kernel library an x86 CPU with these flags loads."""
    if AVX512 <= flags:
        return "_C" if "avx512_bf16" in flags else "_C_AVX512"
    return "_C_AVX2"


@functools.cache
def vllm_dir(python: str) -> Path | None:
    """The vllm package folder of an interpreter's environment (found without importing vllm)."""
    code = "import importlib.util as u; s = u.find_spec('vllm'); print(s.submodule_search_locations[0] if s else '')"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    found = done.stdout.strip()
    return Path(found) if done.returncode == 0 and found else None


def library_ops(library: Path, ops: Iterable[str]) -> set[str]:
    """Those of ``ops`` whose schema (``name(...)``) the library registers."""
    with library.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return {op for op in ops if data.find(op.encode() + b"(") >= 0}


def config_kernels(quantization_config: dict) -> set[str]:
    """The CPU ops a checkpoint's ``quantization_config`` needs (those this module knows)."""
    method = quantization_config.get("quant_method")
    if method in ("gptq", "awq"):
        return {WNA16}
    needed = set()
    if method == "compressed-tensors":
        for group in quantization_config.get("config_groups", {}).values():
            w, a = group.get("weights") or {}, group.get("input_activations")
            if w.get("type") == "int" and w.get("num_bits") == 4 and a is None:
                needed.add(WNA16)
            elif w.get("type") == "int" and w.get("num_bits") == 8 and (a or {}).get("num_bits") == 8:
                needed.add(INT8_SCALED_MM)
    return needed


def weights_kernels(weights: str, model: Model | None = None) -> set[str]:
    """The ops a weights folder needs, from its config.json, else from ``model``'s recipe (not made yet) or the
    published checkpoint's format the catalogue names (not downloaded yet)."""
    config = Path(weights) / "config.json"
    if config.is_file():
        return config_kernels(json.loads(config.read_text()).get("quantization_config") or {})
    if model and model.quantization:
        return {SCHEME_KERNELS[model.quantization.scheme]}
    fmt = model.deployment.weights_format if model else None
    return config_kernels({"quant_method": fmt}) if fmt in ("awq", "gptq") else set()


def missing(needed: set[str], python: str, dtype: str, flags: frozenset[str] | None = None) -> str | None:
    """Why ``python``'s vLLM on this CPU (or one with ``flags``) cannot run these ops with activations of
    ``dtype``; None when it can."""
    flags = cpu_flags() if flags is None else flags
    if not needed or flags is None:  # only x86 CPUs' kernels are known here
        return None
    name = kernel_library(flags)
    folder = vllm_dir(python)
    library = next(folder.glob(f"{name}.*so"), None) if folder else None
    if library is None:
        return f"no vLLM kernel library {name} found for {python}"
    lacking = sorted(needed - library_ops(library, needed))
    if lacking:
        isa = "AVX-512" if AVX512 <= flags else "AVX2 without AVX-512"
        return (
            f"the weights need vLLM's {', '.join(lacking)} kernel, which its {name} library (the one this "
            f"{isa} CPU loads) lacks: serve them on a CPU with AVX-512, or choose weights this CPU runs "
            f"(e.g. the catalogue's w8a8 quantization)"
        )
    amx = "amx_tile" in flags and AMX_INT8 in library_ops(library, [AMX_INT8])
    sixteen_bit = needed & {WNA16, *([INT8_SCALED_MM] if amx else [])}
    if dtype == "float32" and sixteen_bit:
        return (
            f"vLLM's {', '.join(sorted(sixteen_bit))} kernel on this CPU takes bfloat16 or float16 "
            f"activations, not float32: serve these weights with dtype bfloat16"
        )
    return None


def refusal(command: EngineCommand, model: Model | None = None) -> str | None:
    """Why a CPU engine command cannot run here (:func:`missing` for its weights and dtype); None if it can.
    ``model``: one the command serves, whose recipe tells what weights not made yet will need."""
    if command.device != "cpu":
        return None
    return missing(weights_kernels(command.model, model), command.argv[0], command.dtype)
