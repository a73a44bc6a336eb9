"""`prepare`: packaged weights become a checksummed Hugging Face folder, once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from hxp.core import catalogue
from hxp.model import weights


def run_prepare(catalogue_file: Path, state: Path) -> str:
    out = subprocess.run(
        [weights.engine_python(), "-m", "hxp.model.weights", "--catalogue", str(catalogue_file), "--profile", "cpu"],
        env={**os.environ, "HXP_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout


def test_prepare_copies_fixes_records_and_is_idempotent(tmp_path: Path) -> None:
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    doc["models"] = [m for m in doc["models"] if m["task"] == "embedding"]  # the fast (copy) package
    (name,) = {m["profiles"]["cpu"]["source"].removeprefix("package:") for m in doc["models"]}
    file = tmp_path / "models.yaml"
    file.write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"

    first = run_prepare(file, state)
    folder = state / "models" / name
    assert f"{name}: building {folder}" in first
    modules = json.loads((folder / "modules.json").read_text())
    assert all((folder / m["path"]).is_dir() for m in modules if m["path"])  # 2_Normalize added
    assert (folder / "2_Normalize").is_dir()
    manifest = json.loads((state / "models" / f"{name}.manifest.json").read_text())
    assert manifest["distribution"] == doc["packages"][name]["distribution"]
    assert manifest["files"] == weights.checksums(folder)
    assert "model.safetensors" in manifest["files"]

    second = run_prepare(file, state)
    assert f"{name}: up to date" in second and "building" not in second

    (folder / "config.json").write_text("{}")  # a damaged folder is rebuilt
    third = run_prepare(file, state)
    assert "building" in third
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384


def test_prepare_with_nothing_packaged(tmp_path: Path) -> None:
    out = subprocess.run(
        [weights.engine_python(), "-m", "hxp.model.weights", "--profile", "gpu"],
        env={**os.environ, "HXP_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "no packaged weights to prepare" in out
