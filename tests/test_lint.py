"""`make lint` (what `make test` and CI run first) fails on each kind of finding: a lint rule, unformatted code,
a wrong annotation; and passes on a clean module. Run on planted modules, with the project's own configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLEAN = '''"""A clean module."""


def double(value: int) -> int:
    """Twice the value."""
    return 2 * value
'''


def lint(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "lint", f"LINT_PATHS={module}", f"TYPED_PATHS={module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_clean_module_passes(tmp_path: Path) -> None:
    module = tmp_path / "clean.py"
    module.write_text(CLEAN)
    result = lint(module)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("planted", "finding"),
    [
        (CLEAN.replace('"""A clean module."""\n', '"""A clean module."""\nimport os\n'), "F401"),  # unused import
        (CLEAN.replace("return 2 * value", "return 2*value"), "would be reformatted"),
        (CLEAN.replace("return 2 * value", 'return "2" * value'), "Incompatible return value type"),
        (CLEAN.replace("def double(value: int) -> int:", "def double(value):"), "no-untyped-def"),
    ],
)
def test_a_planted_violation_fails(tmp_path: Path, planted: str, finding: str) -> None:
    module = tmp_path / "planted.py"
    module.write_text(planted)
    result = lint(module)
    assert result.returncode != 0
    assert finding in result.stdout + result.stderr
