"""The verdict computation: exact statistics, every target check, the table and the saved files."""

import csv
import json

import pytest

from hxp.core.catalogue import Targets
from hxp.loadtest.verdict import (
    LATENCY_RATIO,
    LATENCY_SLACK_MS,
    THROUGHPUT_RATIO,
    Recorder,
    Sample,
    Verdict,
    direct_name,
    evaluate,
    judge,
    percentile,
)

TARGETS = Targets(avg_latency_ms=1000, p95_latency_ms=1500, throughput_rps=2, memory_gb=1)


def ok(ms: float, ttft: float | None = None) -> Sample:
    return Sample(True, ms, ttft)


def test_percentile_is_exact_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 95) == 95
    assert percentile(values, 50) == 50
    assert percentile(values, 100) == 100
    assert percentile([7.0], 95) == 7
    assert percentile([1.0, 2.0, 3.0], 50) == 2
    assert percentile([], 95) is None


def test_a_model_within_every_target_passes():
    samples = [ok(800 + i, ttft=100 + i if i % 2 else None) for i in range(30)]
    r = evaluate("m", samples, window_s=10, targets=TARGETS)
    assert r.passed and r.problems == ()
    assert (r.requests, r.failures) == (30, 0)
    assert r.avg_ms == pytest.approx(814.5)
    assert r.p50_ms == 814 and r.p95_ms == 828
    assert r.rps == pytest.approx(3.0)
    assert r.streamed == 15
    assert r.ttft_avg_ms == pytest.approx(115) and r.ttft_p95_ms == 129


@pytest.mark.parametrize(
    "samples, window, problem",
    [
        ([ok(1200)] * 30, 10, "avg 1200 ms > 1000 ms"),
        ([ok(500)] * 90 + [ok(1600)] * 10, 10, "p95 1600 ms > 1500 ms"),
        ([ok(500)] * 10, 10, "throughput 1.00 req/s < 2 req/s"),
        ([ok(500)] * 97 + [Sample(False, 5)] * 3, 10, "failure ratio 3.0% > 1.0%"),
        ([Sample(False, 5)] * 4, 10, "no successful request"),
        ([], 10, "no successful request"),
    ],
)
def test_each_missed_target_fails_the_model_with_its_reason(samples, window, problem):
    r = evaluate("m", samples, window_s=window, targets=TARGETS)
    assert not r.passed
    assert problem in r.problems


def test_latency_counts_successful_requests_only():
    samples = [ok(900)] * 99 + [Sample(False, 60000)]
    r = evaluate("m", samples, window_s=10, targets=TARGETS, max_failure_ratio=0.05)
    assert r.passed
    assert r.avg_ms == 900 and r.p95_ms == 900
    assert (r.requests, r.failures) == (100, 1)
    assert r.rps == pytest.approx(9.9)


def test_the_most_frequent_errors_are_reported():
    samples = [ok(500)] * 10 + [Sample(False, 5, error="HTTP 500: boom")] * 3 + [Sample(False, 5, error="timeout")]
    r = evaluate("m", samples, window_s=1, targets=TARGETS)
    assert r.errors == (("HTTP 500: boom", 3), ("timeout", 1))
    table = Verdict("cpu", "2026-01-01T00:00:00Z", 1.0, 1, 0.01, (r,)).table()
    assert "  3 x HTTP 500: boom" in table and "  1 x timeout" in table


def test_failure_ratio_threshold_is_a_setting():
    samples = [ok(500)] * 95 + [Sample(False, 5)] * 5
    assert not evaluate("m", samples, 10, TARGETS, max_failure_ratio=0.01).passed
    assert evaluate("m", samples, 10, TARGETS, max_failure_ratio=0.05).passed


class _Model:
    def __init__(self, name: str, targets: Targets) -> None:
        self.name, self.targets = name, targets


def test_judge_covers_every_model_under_test_and_saves_json_and_csv(tmp_path):
    rec = Recorder()
    rec.start(now=1000.0)
    for _ in range(40):
        rec.record("fast", ok(300, ttft=50))
        rec.record("slow", ok(1400))
    rec.record("unknown-to-the-run", ok(1))
    rec.stop(now=1010.0)
    models = [_Model("fast", TARGETS), _Model("slow", TARGETS), _Model("idle", TARGETS)]
    verdict = judge(rec, models, profile="gpu", users={"fast": 2, "slow": 4}, max_failure_ratio=0.01)

    assert [r.model for r in verdict.results] == ["fast", "slow", "idle"]
    assert verdict.duration_s == 10
    assert not verdict.passed and verdict.failed_models == ["slow", "idle"]
    table = verdict.table()
    assert "FAIL slow: avg 1400 ms > 1000 ms" in table
    assert "FAIL idle: no successful request" in table
    assert table.splitlines()[-1] == "RESULT: FAIL (slow, idle)"
    fast_row = next(line for line in table.splitlines() if line.startswith("fast "))
    assert fast_row.split()[1:4] == ["2", "40", "0"] and fast_row.rstrip().endswith("PASS")
    assert "50/50" in fast_row and "1000/1500 @ 2" in fast_row

    json_path, csv_path = verdict.save(tmp_path / "run")
    data = json.loads(json_path.read_text())
    assert data["passed"] is False and data["profile"] == "gpu" and data["users"] == 6
    assert [(m["model"], m["passed"]) for m in data["results"]] == [("fast", True), ("slow", False), ("idle", False)]
    assert [m["users"] for m in data["results"]] == [2, 4, 0]
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[1]["model"] == "slow" and rows[1]["problems"] == "avg 1400 ms > 1000 ms"
    assert float(rows[0]["rps"]) == pytest.approx(4.0)


def test_on_the_cpu_profile_each_model_is_judged_against_its_engine_reached_directly(tmp_path):
    """The catalogue's absolute targets do not count there: a slow machine slows both paths alike."""
    rec = Recorder()
    rec.start(now=1000.0)
    for i in range(40):
        rec.record("near", ok(3000 + i))  # far beyond TARGETS' 1000 ms, as on a slow CPU
        rec.record(direct_name("near"), ok(2900 + i))
        rec.record("slow", ok(400))
        rec.record(direct_name("slow"), ok(200))
    rec.record("fewer", ok(100))
    for _ in range(40):
        rec.record(direct_name("fewer"), ok(100))
    rec.stop(now=1010.0)
    models = [_Model("near", TARGETS), _Model("slow", TARGETS), _Model("fewer", TARGETS), _Model("alone", TARGETS)]
    verdict = judge(rec, models, profile="cpu", users={"near": 1})
    near, slow, fewer, alone = verdict.results
    assert near.passed, near.problems
    assert near.direct_avg_ms == pytest.approx(2919.5) and near.direct_rps == pytest.approx(4.0)
    assert near.target_avg_ms == round(LATENCY_RATIO * 2919.5 + LATENCY_SLACK_MS, 1)
    assert near.target_p95_ms == round(LATENCY_RATIO * 2937 + LATENCY_SLACK_MS, 1)
    assert near.target_rps == round(THROUGHPUT_RATIO * 4.0 - 1 / 10, 3)  # one user: one request less, over 10 s
    assert slow.problems == (
        f"avg 400 ms > {LATENCY_RATIO * 200 + LATENCY_SLACK_MS:g} ms",
        f"p95 400 ms > {LATENCY_RATIO * 200 + LATENCY_SLACK_MS:g} ms",
    )
    assert fewer.problems == (f"throughput 0.10 req/s < {THROUGHPUT_RATIO * 4:g} req/s",)
    assert alone.problems[0].startswith("no successful request to the engine directly")
    table = verdict.table()
    assert "targets: the engine reached directly in the same run" in table
    near_row = next(line for line in table.splitlines() if line.startswith("near "))
    assert "2920/2937 @ 4.00" in near_row and near_row.rstrip().endswith("PASS")


@pytest.mark.parametrize(("answered", "passed"), [(10, True), (9, False)])
def test_a_short_runs_throughput_allows_each_user_one_request_less_than_the_engine_directly(answered, passed):
    """`make loadtest DURATION=60s` beside `make run`: one user, requests of 6 s, 11 answered directly. A
    closed-loop user's last request straddles the end: 10 through the gateway is that phase, not a slower
    gateway; 9 is (less than 0.95x, less one)."""
    rec = Recorder()
    rec.start(now=0.0)
    for _ in range(11):
        rec.record(direct_name("phi"), ok(5500))
    for _ in range(answered):
        rec.record("phi", ok(5600))
    rec.stop(now=69.4)
    (result,) = judge(rec, [_Model("phi", TARGETS)], profile="cpu", users={"phi": 1}).results
    assert result.passed is passed, result.problems


def test_a_new_run_starts_from_no_samples():
    rec = Recorder()
    rec.start(now=0.0)
    rec.record("m", ok(1))
    rec.start(now=5.0)
    rec.stop(now=7.0)
    assert rec.samples == {} and rec.window_s == 2
