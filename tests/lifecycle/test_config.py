"""Versioned configuration: `hxp config apply/history/diff/rollback`, the plan, and input refused before anything
is touched. No engine runs here: the plans change gateway settings only, or are refused."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hxp.audit import search as audit_search
from hxp.cli import main
from hxp.core import catalogue
from hxp.core.versions import ConfigStore
from hxp.lifecycle import plan as planning
from hxp.model import weights
from tests.support.servers import free_port

CPU = "cpu"


@pytest.fixture
def stack(tmp_path: Path, empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the catalogue as HXP_CATALOGUE, the database at DATABASE_URL, the prepared weights."""
    file = tmp_path / "models.yaml"
    raw = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    for entry in raw["models"]:  # ports no other stack on this machine uses
        entry["port"] = free_port()
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "models").symlink_to(weights.models_dir())
    for name, value in {
        "HXP_CATALOGUE": str(file),
        "DATABASE_URL": empty_db_url,
        "HXP_PROFILE": CPU,
        "HXP_STATE_DIR": str(tmp_path / "state"),
        "HXP_CONFIG_AUTHOR": "ops-alice",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HXP_DATABASE_URL", raising=False)
    yield file


def edit(file: Path, change: dict) -> None:
    """Merge ``change`` into the api block of models named in it."""
    raw = yaml.safe_load(file.read_text())
    for entry in raw["models"]:
        entry["api"].update(change.get(entry["name"], {}))
    file.write_text(yaml.safe_dump(raw, sort_keys=False))


def versions() -> list[int]:
    store = ConfigStore.open()
    try:
        return [v.version for v in store.history()]
    finally:
        store.close()


def test_apply_history_diff_and_rollback_byte_for_byte(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = stack.read_bytes()
    assert main(["config", "apply"]) == 0
    edit(stack, {"openchat-3.5": {"max_concurrent_requests": 30, "aliases": ["gpt-3.5-turbo"]}})
    capsys.readouterr()
    assert main(["config", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "openchat-3.5: api.max_concurrent_requests 120 -> 30" in out and "stay" in out and "replace" not in out
    assert versions() == [1]  # a dry run records nothing
    assert main(["config", "apply"]) == 0
    assert main(["config", "diff", "1", "2"]) == 0
    assert any(line.startswith("+") and "gpt-3.5-turbo" in line for line in capsys.readouterr().out.splitlines())
    assert main(["config", "rollback"]) == 0
    assert stack.read_bytes() == original
    capsys.readouterr()
    assert main(["config", "history", "--steps"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("v")] == ["v3", "v2", "v1"]
    assert "ops-alice" in out and "rollback to v1" in out
    store = ConfigStore.open()
    try:
        assert store.get(3).sha256 == store.get(1).sha256 and store.live().version == 3  # type: ignore[union-attr]
        # each change is one audited action (the dry run is none), with the operator as its actor
        events = audit_search.search(store.db, audit_search.parse({"action": "config.*"}))
    finally:
        store.close()
    assert sorted((e["action"], e["outcome"]) for e in events) == [
        ("config.apply", "ok"),
        ("config.apply", "ok"),
        ("config.rollback", "ok"),
    ]
    assert all(e["actor"].startswith("cli:") for e in events)


def test_a_second_apply_of_the_same_file_records_nothing(stack: Path) -> None:
    assert main(["config", "apply"]) == 0
    assert main(["config", "apply"]) == 0
    assert versions() == [1]


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _new_model(file: Path, port: int, source: str = "package:all-minilm-l6-v2") -> None:
    raw = yaml.safe_load(file.read_text())
    entry = {**raw["models"][-1], "name": "minilm-two", "port": port}
    entry["api"] = {**entry["api"], "aliases": []}
    deployment = entry["profiles"][CPU]
    entry["profiles"] = {CPU: {**deployment, "source": source, "vllm": {**deployment["vllm"], "max_num_seqs": 8}}}
    raw["models"].append(entry)
    file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize(
    "breaks, says",
    [
        (lambda f, port: f.write_text(f.read_text() + "models: [\n"), "invalid catalogue"),
        (lambda f, port: edit(f, {"hermes-2": {"fallbacks": ["nope"]}}), "unknown model 'nope'"),
        (lambda f, port: _new_model(f, port), "is in use"),
        (lambda f, port: _new_model(f, free_port(), "/nowhere/minilm"), "no weights folder"),
    ],
)
def test_bad_input_is_refused_before_anything_is_touched(
    stack: Path, listening: int, breaks, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "apply"]) == 0
    breaks(stack, listening)
    broken = stack.read_bytes()
    assert main(["config", "apply"]) == 2
    assert says in capsys.readouterr().err
    assert versions() == [1] and stack.read_bytes() == broken


def test_too_little_memory_and_unknown_model_are_refused(
    stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "apply"]) == 0
    _new_model(stack, free_port())
    monkeypatch.setattr(planning, "available_memory_gib", lambda: 1.0)
    assert main(["config", "apply"]) == 2
    assert "needs about 3.0 GiB, 1.0 GiB is available" in capsys.readouterr().err
    assert main(["model", "update", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert versions() == [1]


def test_plan_names_engines_started_stopped_replaced_and_kept() -> None:
    old = catalogue.load(profile=CPU)
    raw = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    raw["models"] = [m for m in raw["models"] if m["name"] != "all-minilm-l6-v2"]  # embeddings removed
    chat = raw["models"][0]["profiles"][CPU]
    raw["models"][0]["profiles"][CPU] = {**chat, "vllm": {**chat["vllm"], "max_num_seqs": 8}}  # mixtral alone
    new = catalogue.parse(raw, CPU)
    p = planning.plan(old, new)
    assert {(e.action, e.names) for e in p.engines} == {
        ("replace", ("mixtral-8x7b",)),
        ("replace", ("hermes-2", "openchat-3.5", "phi-3-mini")),
        ("stop", ("all-minilm-l6-v2",)),
    }
    assert "all-minilm-l6-v2: removed" in p.gateway
    assert not planning.plan(old, old).changed


def test_an_update_is_in_progress_until_its_last_step(stack: Path, empty_db_url: str) -> None:
    from hxp.core.versions import summary

    assert main(["config", "apply"]) == 0
    store = ConfigStore.open()
    try:
        store.log("update phi-3-mini", "update-started")
        store.log("update phi-3-mini", "canary-passed")
        config = summary(empty_db_url)
        assert config is not None and config["version"] == 1
        assert [u.split(" since ")[0] for u in config["updates"]] == ["update phi-3-mini: canary-passed"]
        store.log("update phi-3-mini", "update-done")
        assert summary(empty_db_url)["updates"] == []  # type: ignore[index]
    finally:
        store.close()
