"""`hxp quantize`: make the quantized weights a deployment's ``quantization`` names, with llm-compressor.

The recipe (models.yaml ``quantizations``) runs on the deployment's source weights (a prepared package
folder or a local checkpoint): SmoothQuant first when it has a ``smoothing_strength``, then GPTQ or
round-to-nearest into a compressed-tensors checkpoint that vLLM loads as is. Calibration uses the short
text shipped beside this module (calibration.txt; samples separated by blank lines): nothing is downloaded.

The result lives under ``.state/quantized/<base>-<recipe>-<digest>``, the digest covering every input (the
recipe but its serving dtype, the base weights' manifest or path, the calibration text and the quantization
venv's lock), so a
second run finds it and returns at once; a changed input makes a new folder.

llm-compressor has its own venv (.venv-quant, requirements/quant.lock, torch the local +cpu wheel): this module
runs there as ``$HXP_QUANT_PYTHON -m hxp.model.quantize``; where the weights are is
:func:`hxp.model.weights.quantized_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue, Model, Quantization
from hxp.core.paths import PROJECT_ROOT
from hxp.model import weights
from hxp.model.weights import CALIBRATION, quantized_dir

COMPLETE = ".complete"  # written last: a folder without it is an interrupted run
MAX_SEQ_LEN = 256


def quant_python() -> str:
    return os.environ.get("HXP_QUANT_PYTHON") or str(PROJECT_ROOT / ".venv-quant" / "bin" / "python")


def is_made(model: Model) -> bool:
    return (quantized_dir(model) / COMPLETE).is_file()


def with_quantization(models: Sequence[Model], name: str, cat: Catalogue) -> list[Model]:
    """The models served from weights made by the catalogue's quantization ``name`` instead."""
    recipe = cat.quantizations[name]
    return [
        replace(m, quantization=recipe, deployment=m.deployment.model_copy(update={"quantization": name}))
        for m in models
    ]


def run(
    names: Sequence[str] = (),
    quantization: str | None = None,
    catalogue_path: str | None = None,
    profile: str | None = None,
) -> int:
    """``python -m hxp.model.quantize`` in the quantization venv (what `hxp quantize` does); its exit status."""
    argv = [quant_python(), "-m", "hxp.model.quantize", *names]
    for flag, value in (("--quantization", quantization), ("--catalogue", catalogue_path), ("--profile", profile)):
        if value:
            argv += [flag, value]
    return subprocess.run(argv, check=False).returncode


def ensure(models: Sequence[Model], profile: str) -> None:
    """Make the quantized weights of ``models`` (their own or :func:`with_quantization`'s) unless they are there."""
    missing = [m for m in models if not is_made(m)]
    for name in dict.fromkeys(str(m.deployment.quantization) for m in missing):
        code = run([m.name for m in missing if m.deployment.quantization == name], name, profile=profile)
        if code:
            raise subprocess.CalledProcessError(code, f"hxp quantize --quantization {name}")


# --- running inside the quantization venv ------------------------------------------------------


def calibration_samples() -> list[str]:
    return [s.strip() for s in CALIBRATION.read_text().split("\n\n") if s.strip()]


def modifiers(recipe: Quantization) -> list:
    """llm-compressor's recipe: SmoothQuant (if asked), then GPTQ or round-to-nearest; lm_head stays as is."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    scheme = preset_name_to_scheme(recipe.scheme, ["Linear"])
    if recipe.group_size is not None and scheme.weights is not None:
        scheme.weights = scheme.weights.model_copy(update={"group_size": recipe.group_size})
    method = GPTQModifier if recipe.method == "gptq" else QuantizationModifier
    smooth = [SmoothQuantModifier(smoothing_strength=recipe.smoothing_strength)] if recipe.smoothing_strength else []
    return [*smooth, method(config_groups={"group_0": scheme}, ignore=["lm_head"])]


def make(model: Model) -> Path:
    """Quantize ``model``'s base weights with its recipe into :func:`quantized_dir` (a no-op when made)."""
    out = quantized_dir(model)
    if is_made(model):
        print(f"[quantize] {model.name}: up to date ({out})", flush=True)
        return out
    source = weights.base_source(model)
    if not Path(source).is_dir():
        raise SystemExit(
            f"{source} is not a local folder: `hxp prepare` makes packaged weights; "
            "quantize a hub model from a local copy"
        )
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert model.quantization is not None
    print(
        f"[quantize] {model.name}: {model.deployment.quantization} {model.quantization.model_dump()} "
        f"from {source} into {out}",
        flush=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    network = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    samples = calibration_samples()
    data = Dataset.from_list([dict(tokenizer(s, truncation=True, max_length=MAX_SEQ_LEN)) for s in samples])
    oneshot(
        model=network,
        dataset=data,
        recipe=modifiers(model.quantization),
        max_seq_length=MAX_SEQ_LEN,
        num_calibration_samples=len(samples),
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    network.save_pretrained(str(tmp), save_compressed=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / COMPLETE).write_text(json.dumps({"recipe": model.quantization.model_dump(), "base": source}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[quantize] {model.name}: wrote {out}", flush=True)
    return out


def selected(cat: Catalogue, names: Sequence[str], quantization: str | None) -> list[Model]:
    """The named models (default: every model with a quantization), with ``quantization`` applied if given."""
    try:
        models = [cat.get(n) for n in names] if names else cat.models
    except KeyError as err:
        raise SystemExit(f"unknown model {err} (known: {', '.join(cat.names)})") from None
    return with_quantization(models, quantization, cat) if quantization else [m for m in models if m.quantization]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp.model.quantize", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="catalogue models (default: all with a quantization)")
    parser.add_argument("--quantization", help="a catalogue quantization to apply to the named models instead")
    parser.add_argument("--catalogue")
    parser.add_argument("--profile")
    args = parser.parse_args(argv)
    if args.quantization and not args.names:
        parser.error("--quantization applies to the models named")
    models = selected(catalogue.load(args.catalogue, args.profile), args.names, args.quantization)
    if not models:
        print("[quantize] no model of this profile names a quantization", flush=True)
    for out in dict.fromkeys(quantized_dir(m) for m in models):  # models sharing weights are made once
        make(next(m for m in models if quantized_dir(m) == out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
