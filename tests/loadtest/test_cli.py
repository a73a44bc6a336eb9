"""`hxp loadtest plan|propose`."""
import json

from hxp import catalogue
from hxp.cli import main
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


def test_propose_takes_the_worst_model_per_task_with_a_margin(tmp_path, capsys):
    cat = catalogue.load(profile="cpu")
    chat = [m.name for m in cat.chat_models]
    rows = [_row(chat[0], 2, 8000, 15000, 0.21), _row(chat[1], 2, 3000, 6100, 0.6)]
    rows.append(_row(cat.embedding_models[0].name, 3, 200, None, 9.0, failures=1))
    (tmp_path / "verdict.json").write_text(json.dumps(
        {"profile": "cpu", "started_at": "2026-11-27T12:00:00Z", "duration_s": 120.4, "results": rows}))
    assert main(["loadtest", "propose", str(tmp_path), "--margin", "1.5"]) == 0
    captured = capsys.readouterr()
    assert "avg_latency_ms: 12000, p95_latency_ms: 23000, throughput_rps: 0.14" in captured.out
    assert "2026-11-27, users per model 2, 120 s through the gateway: worst avg 8000 ms, p95 15000 ms" in captured.out
    assert "embedding: not proposed" in captured.err
