"""`hxp loadtest plan|propose`."""

import json

from hxp.cli import main
from hxp.core import catalogue
from hxp.loadtest.plan import users_needed


def test_plan_prints_the_users_the_targets_need(capsys):
    assert main(["loadtest", "plan", "--users"]) == 0
    assert int(capsys.readouterr().out) == users_needed(catalogue.load().models)
    assert main(["loadtest", "plan"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in catalogue.load().names)
    assert main(["loadtest", "plan", "--models", "nope"]) == 2


def _row(model: str, users: int, avg: float | None, p95: float | None, rps: float, failures: int = 0) -> dict:
    return {"model": model, "users": users, "avg_ms": avg, "p95_ms": p95, "rps": rps, "failures": failures}


def _run(folder, started: str, rows: list[dict], profile: str = "cpu"):
    folder.mkdir()
    (folder / "verdict.json").write_text(
        json.dumps({"profile": profile, "started_at": started, "duration_s": 120.4, "results": rows})
    )
    return str(folder)


def test_propose_gives_each_model_its_worst_run_with_a_margin(tmp_path, capsys):
    cat = catalogue.load(profile="cpu")
    chat = [m.name for m in cat.chat_models]
    embedding = cat.embedding_models[0].name
    first = _run(
        tmp_path / "a",
        "2026-11-27T12:00:00Z",
        [
            _row(chat[0], 1, 8000, 15000, 0.21),
            _row(chat[1], 1, 3000, 6100, 0.6),
            _row(embedding, 2, 200, None, 9.0, failures=1),
        ],
    )
    second = _run(tmp_path / "b", "2026-11-28T12:00:00Z", [_row(chat[0], 1, 7000, 16000, 0.25)])
    third = _run(tmp_path / "c", "2026-11-28T13:00:00Z", [_row(chat[3], 1, 6501, 14632, 13.96)])
    assert main(["loadtest", "propose", first, second, third, "--margin", "1.5"]) == 0
    out, err = capsys.readouterr()
    # each model from its own numbers (never from a slower model sharing its engine), worst over the runs
    assert f"{chat[0]}:\n  avg_latency_ms: 12000, p95_latency_ms: 24000, throughput_rps: 0.14" in out
    assert (
        "2026-11-27, 2026-11-28, 2 run(s) of 120/120 s through the gateway, 1 user(s): "
        "worst avg 8000 ms, p95 16000 ms, lowest 0.21 req/s; margin 1.5"
    ) in out
    assert f"{chat[1]}:\n  avg_latency_ms: 4500, p95_latency_ms: 9100, throughput_rps: 0.4" in out  # 9150 down
    # rounded down: latencies never looser than the margin, throughput x latency never above the measured
    assert f"{chat[3]}:\n  avg_latency_ms: 9700, p95_latency_ms: 21000, throughput_rps: 9.3" in out
    assert chat[2] not in out  # not measured
    assert f"{embedding}: not proposed" in err and embedding + ":\n" not in out


def test_propose_refuses_runs_of_different_profiles(tmp_path, capsys):
    model = catalogue.load(profile="cpu").chat_models[0].name
    cpu = _run(tmp_path / "cpu", "2026-11-27T12:00:00Z", [_row(model, 1, 10, 20, 1.0)])
    gpu = _run(tmp_path / "gpu", "2026-11-27T12:00:00Z", [_row(model, 1, 10, 20, 1.0)], profile="gpu")
    assert main(["loadtest", "propose", cpu, gpu]) == 2
    assert "different profiles" in capsys.readouterr().err
    for margin in ("2.5", "1"):
        assert main(["loadtest", "propose", cpu, "--margin", margin]) == 2
        assert "--margin must be above 1 and at most 2" in capsys.readouterr().err
