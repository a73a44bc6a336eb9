"""Headless Locust runs of loadtests/locustfile.py, as `make loadtest` starts them."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from hxp.core import catalogue
from hxp.loadtest.plan import users_needed
from hxp.loadtest.verdict import LATENCY_RATIO, LATENCY_SLACK_MS
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayFactory
from tests.support.relay import TcpRelay
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
# Variables of the developer's shell that would change what a test run does.
_ISOLATED = (
    "GATEWAY_URL",
    "HXP_LOADTEST_KEY",
    "HXP_MASTER_KEY",
    "HXP_LOADTEST_MODELS",
    "HXP_CATALOGUE",
    "HXP_LOADTEST_MAX_FAILURE_RATIO",
    "HXP_LOADTEST_RESULTS",
    "HXP_LOADTEST_TRAFFIC",
)


def locust(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Locust on the load test; stdout and stderr together in ``.stdout``."""
    full_env = {k: v for k, v in os.environ.items() if k not in _ISOLATED} | {"PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def headless(
    host: str, results: Path, seconds: int, users: int, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    run = locust(
        "--headless",
        "--only-summary",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "60",
        "--results-dir",
        str(results),
        env=env,
        timeout=timeout,
    )
    assert "Traceback" not in run.stdout, run.stdout  # Locust logs a failing event handler and goes on
    return run


def verdict_row(output: str, model: str) -> list[str]:
    line = next(line for line in output.splitlines() if re.match(rf"{re.escape(model)}\s+\d", line))
    return line.split()


def test_one_user_class_per_catalogue_model_and_a_direct_twin_on_a_compared_profile():
    gpu = locust("--list", env={"HXP_PROFILE": "gpu"}).stdout
    listed = re.findall(r"^\s+(\w+User)$", gpu, re.M)
    assert len(listed) == len(catalogue.load(profile="gpu").models), gpu
    assert not [name for name in listed if name.endswith("DirectUser")], gpu
    cpu = locust("--list", env={"HXP_PROFILE": "cpu"}).stdout
    listed = re.findall(r"^\s+(\w+User)$", cpu, re.M)
    assert len(listed) == 2 * len(catalogue.load(profile="cpu").models), cpu
    assert len([name for name in listed if name.endswith("DirectUser")]) == len(listed) // 2, cpu
    narrowed = locust(
        "--list", env={"HXP_PROFILE": "gpu", "HXP_LOADTEST_MODELS": catalogue.load().chat_models[0].name}
    ).stdout
    assert len(re.findall(r"^\s+(\w+User)$", narrowed, re.M)) == 1, narrowed


def test_an_unknown_model_is_refused_by_name():
    run = locust("--list", env={"HXP_LOADTEST_MODELS": "no-such-model"})
    assert run.returncode != 0 and "no-such-model" in run.stdout


def test_an_unreachable_gateway_fails_on_the_failure_ratio(tmp_path):
    model = catalogue.load().chat_models[0].name
    run = headless(
        f"http://127.0.0.1:{free_port()}",
        tmp_path,
        seconds=2,
        users=1,
        env={"HXP_PROFILE": "gpu", "HXP_LOADTEST_MODELS": model, "HXP_LOADTEST_KEY": "sk-unchecked"},
    )
    assert run.returncode == 1, run.stdout
    assert re.search(
        rf"^FAIL {re.escape(model)}: no successful request; failure ratio 100.0% > 1.0%", run.stdout, re.M
    ), run.stdout
    assert "x connection failed" in run.stdout
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["passed"] is False and [r["model"] for r in saved["results"]] == [model]
    assert (tmp_path / "verdict.csv").exists() and (tmp_path / "report.html").exists()


# --- against the real CPU stack: the gateway in front of the real engines ------------------------


@pytest.fixture(scope="module")
def stack(chat_engine, embedding_engine):
    """A gateway routing every catalogue model to the session's real engines."""
    backends = {name: [f"{engine.base_url}/v1"] for engine in (chat_engine, embedding_engine) for name in engine.names}
    factory = GatewayFactory()
    yield factory(backends)
    factory.close()


@pytest.mark.engine
def test_a_short_run_is_judged_against_the_engines_reached_directly_through_the_gateway(stack, tmp_path):
    """Every model answers without failure, through the gateway and directly, and is judged against its engine
    reached directly (the cpu profile); whether a 30-s run on a shared test machine meets that is a measurement
    (`make loadtest`), not what this test checks."""
    models = catalogue.load(profile="cpu").models
    run = headless(
        stack.url,
        tmp_path,
        seconds=30,
        users=users_needed(models),
        env={"HXP_PROFILE": "cpu", "HXP_MASTER_KEY": stack.master_key, "HXP_BACKENDS": stack.env["HXP_BACKENDS"]},
    )
    print(run.stdout[-3000:])
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert run.returncode == (0 if saved["passed"] else 1), run.stdout
    assert ("RESULT: PASS" if saved["passed"] else "RESULT: FAIL") in run.stdout
    assert {r["model"] for r in saved["results"]} == {m.name for m in models}
    for model in models:
        result = next(r for r in saved["results"] if r["model"] == model.name)
        row = verdict_row(run.stdout, model.name)
        assert int(row[1]) > 0 and int(row[2]) > 0 and row[3] == "0", row  # users, requests, no failure
        assert result["failures"] == 0 and result["direct_rps"] > 0
        assert result["target_avg_ms"] == round(LATENCY_RATIO * result["direct_avg_ms"] + LATENCY_SLACK_MS, 1)
        assert result["target_p95_ms"] == round(LATENCY_RATIO * result["direct_p95_ms"] + LATENCY_SLACK_MS, 1)
        assert all(p.startswith(("avg ", "p95 ", "throughput ")) for p in result["problems"]), result
    # with one request per chat user, which of them streamed is chance: check the TTFT of those that did
    assert all(r["ttft_p95_ms"] <= r["p95_ms"] for r in saved["results"] if r["streamed"] > 0)
    assert (tmp_path / "report.html").stat().st_size > 10_000
    # the run made its own key and revoked it afterwards
    keys = httpx.get(f"{stack.url}/admin/keys", headers=stack.headers(), timeout=30).json()["data"]
    made = [k for k in keys if k["owner"] == "loadtest"]
    assert len(made) == 1 and made[0]["revoked_at"] is not None


def test_a_model_missing_its_target_fails_the_run_by_name(gateway, tmp_path):
    """The gateway here fronts the fake upstream: a run's exit code and naming do not need a real engine. The
    gpu profile's targets are absolute."""
    cat = catalogue.load(profile="gpu")
    victim = cat.chat_models[-1].name
    raw = yaml.safe_load(cat.path.read_text())
    entry = next(m for m in raw["models"] if m["name"] == victim)
    entry["profiles"]["gpu"] = copy.deepcopy(entry["profiles"]["gpu"])  # the anchor is shared with other models
    entry["profiles"]["gpu"]["targets"]["p95_latency_ms"] = 1
    override = tmp_path / "models.yaml"
    override.write_text(yaml.safe_dump(raw))
    run = headless(
        gateway.url,
        tmp_path / "results",
        seconds=5,
        users=len(cat.chat_models),
        env={
            "HXP_PROFILE": "gpu",
            "HXP_CATALOGUE": str(override),
            "HXP_LOADTEST_MODELS": ",".join(m.name for m in cat.chat_models),
            "HXP_LOADTEST_KEY": gateway.create_key(),
        },
    )
    assert run.returncode == 1, run.stdout
    assert re.search(rf"^FAIL {re.escape(victim)}: .*p95 \d+ ms > 1 ms", run.stdout, re.M), run.stdout
    assert verdict_row(run.stdout, victim)[-1] == "FAIL"
    failed = re.search(r"^RESULT: FAIL \((.*)\)$", run.stdout, re.M)
    assert failed and victim in failed.group(1).split(", ")


def test_on_the_cpu_profile_a_gateway_made_slow_on_purpose_fails_against_its_engine_reached_directly(
    gateway_factory, tmp_path
):
    """The engine is a fake upstream taking 0.3 s per request; the gateway path goes through a relay that holds
    every request 0.25 s: a slower machine would slow both paths, this slows the gateway's alone."""
    engine = FakeUpstream(delay=0.3).start()
    try:
        gateway = gateway_factory(engine.url)
        slow = TcpRelay(gateway.port, delay=0.25).start()
        try:
            model = catalogue.load(profile="cpu").embedding_models[0].name
            run = headless(
                f"http://127.0.0.1:{slow.port}",
                tmp_path,
                seconds=6,
                users=4,
                env={
                    "HXP_PROFILE": "cpu",
                    "HXP_LOADTEST_MODELS": model,
                    "HXP_LOADTEST_KEY": gateway.create_key(),
                    "HXP_BACKENDS": json.dumps({model: [engine.url]}),
                },
            )
        finally:
            slow.stop()
    finally:
        engine.stop()
    assert run.returncode == 1, run.stdout
    assert "targets: the engine reached directly in the same run" in run.stdout, run.stdout
    failed = re.search(rf"^FAIL {re.escape(model)}: (.*)$", run.stdout, re.M)
    assert failed and re.search(r"avg \d+ ms > [\d.]+ ms", failed.group(1)), run.stdout
    result = json.loads((tmp_path / "verdict.json").read_text())["results"][0]
    assert result["failures"] == 0 and result["direct_rps"] > 0
    assert result["target_avg_ms"] == pytest.approx(LATENCY_RATIO * result["direct_avg_ms"] + LATENCY_SLACK_MS, abs=0.1)
