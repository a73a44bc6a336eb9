"""The Dockerfiles: hadolint-clean, pinned, non-root, health-checked, no build secrets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hxp.core.paths import PROJECT_ROOT

HADOLINT = PROJECT_ROOT / ".venv" / "bin" / "hadolint"
DOCKERFILES = [PROJECT_ROOT / "services" / "gateway" / "Dockerfile", PROJECT_ROOT / "services" / "model" / "Dockerfile"]
STANDINS = PROJECT_ROOT / "tests" / "deploy" / "standins" / "Dockerfile"  # the compose test's stand-in images
ids = [p.parent.name for p in DOCKERFILES]
PINNED = r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}"


@pytest.mark.parametrize("dockerfile", [*DOCKERFILES, STANDINS], ids=[*ids, "standins"])
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    done = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=ids)
def test_pinned_non_root_healthchecked_without_secrets(dockerfile: Path) -> None:
    text = dockerfile.read_text().replace("\\\n", " ")  # one line per instruction
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    for image in re.findall(r"^FROM\s+(\S+)", text, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)  # a build argument's default
        assert re.fullmatch(PINNED, image) or image in stages or image == "scratch", image
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M), "the base must be a build argument (compose test)"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must end as a non-root user"
    assert re.search(r"^HEALTHCHECK\s+.*CMD", text, re.M | re.S)
    assert not re.search(r"^(ARG|ENV)\s+.*(PASSWORD|SECRET|TOKEN|_KEY)\b", text, re.M), "no build secrets"
    assert "pip install pip==" in text
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", text, re.M):
        assert (PROJECT_ROOT / source).exists(), f"{dockerfile.parent.name}: COPY source {source} is missing"


def test_build_context_keeps_secrets_out() -> None:
    ignore = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "**", (
        "the context must start from nothing and add only what the images copy"
    )
    assert not any(line.startswith("!env") or line.startswith("!.state") for line in ignore)
