"""The gateway's /metrics and request log on the live stack (2 workers, real engine, PostgreSQL, Redis)."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring.conftest import LiveStack

pytestmark = [pytest.mark.engine, pytest.mark.services]


def scrape(stack: LiveStack) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels without pid): value}, summed over worker pids."""
    response = httpx.get(
        f"{stack.gateway.url}/metrics", headers={"Authorization": f"Bearer {stack.metrics_token}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid")))
            samples[key] = samples.get(key, 0.0) + s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_traffic_got_the_expected_answers(live_stack: LiveStack) -> None:
    assert sorted(live_stack.statuses) == sorted([200] * 9 + [429] * 2 + [401] + [live_stack.statuses[-1]])
    assert live_stack.statuses[-1] >= 500


def test_requests_are_counted_once_whichever_worker_answers(live_stack: LiveStack) -> None:
    model = live_stack.chat_model
    samples = scrape(live_stack)
    counted = (
        "llm_requests_total",
        "llm_request_duration_seconds",
        "llm_tokens_processed_total",
        "llm_cache_hits_total",
        "llm_rate_limit_rejections_total",
        "llm_time_to_first_token_seconds",
    )

    def totals(scraped: dict) -> dict:
        return {k: v for k, v in scraped.items() if k[0].startswith(counted)}

    assert all(totals(scrape(live_stack)) == totals(samples) for _ in range(4)), (
        "every worker must serve the same totals"
    )
    assert value(samples, "llm_requests_total", model=model, status="200", user_id="team-live") == 8
    assert value(samples, "llm_requests_total", model=model, status="200", user_id="team-limited") == 1
    assert value(samples, "llm_requests_total", model=model, status="429", user_id="team-limited") == 2
    assert value(samples, "llm_requests_total", model="unknown", status="401", user_id="unknown") == 1  # body unread
    broken = [
        dict(ls)
        for (n, ls), v in samples.items()
        if n == "llm_requests_total" and dict(ls)["model"] == live_stack.broken_model and v == 1
    ]
    assert [(b["status"], b["user_id"]) for b in broken] == [(str(live_stack.statuses[-1]), "team-live")]
    assert value(samples, "llm_rate_limit_rejections_total", model=model, user_id="team-limited") == 2
    assert value(samples, "llm_request_duration_seconds_count", model=model, status="200") == 9
    assert value(samples, "llm_request_duration_seconds_bucket", model=model, status="200", le="+Inf") == 9
    assert value(samples, "llm_active_requests") == 0


def test_tokens_ttft_and_cache_hits(live_stack: LiveStack) -> None:
    samples = scrape(live_stack)
    model = live_stack.chat_model
    assert value(samples, "llm_tokens_processed_total", model=model, type="prompt") > 0
    assert value(samples, "llm_tokens_processed_total", model=model, type="completion") > 0
    assert value(samples, "llm_time_to_first_token_seconds_count", model=model) == 2
    assert value(samples, "llm_cache_hits_total", model=model) == 1


def test_engine_health_memory_and_backlog(live_stack: LiveStack) -> None:
    samples = scrape(live_stack)
    assert value(samples, "llm_backend_up", model=live_stack.chat_model) == 1
    assert value(samples, "llm_backend_up", model=live_stack.broken_model) == 0
    assert value(samples, "llm_model_memory_usage_bytes", model=live_stack.chat_model) > 100 * 2**20
    assert ("llm_model_memory_usage_bytes", (("model", live_stack.broken_model),)) not in samples
    assert ("llm_usage_log_backlog", ()) in samples


def test_metrics_need_the_token_and_never_show_a_key(live_stack: LiveStack) -> None:
    url = f"{live_stack.gateway.url}/metrics"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert httpx.get(url, headers=live_stack.gateway.headers(), timeout=30).status_code == 200  # the master key
    text = httpx.get(url, headers={"Authorization": f"Bearer {live_stack.metrics_token}"}, timeout=30).text
    assert "sk-" not in text and all(secret not in text for secret in live_stack.keys.values())


def test_one_json_log_line_per_request_without_content_or_secrets(live_stack: LiveStack) -> None:
    log = live_stack.gateway.log
    requests = [
        r
        for r in (json.loads(line) for line in log.splitlines() if line.startswith('{"time"'))
        if r.get("event") == "request"
    ]
    assert sorted(r["status"] for r in requests) == sorted(live_stack.statuses)
    assert len({r["request_id"] for r in requests}) == len(requests)
    answered = [r for r in requests if r["status"] == 200]
    assert all(
        r["model"] == live_stack.chat_model and r["latency_ms"] > 0 and r["key"] in live_stack.keys for r in answered
    )
    assert all(r["completion_tokens"] for r in answered if not r["cache_hit"])
    assert sum(r["cache_hit"] for r in requests) == 1 and sum(r["stream"] for r in answered) == 2
    assert all(r["ttft_ms"] > 0 for r in answered if r["stream"])
    assert all("prompt" not in r and "completion" not in r for r in requests)
    assert "cache me" not in json.dumps(requests) and "sk-not-a-key" not in json.dumps(requests)
    assert all(secret not in log for secret in live_stack.keys.values())


def test_engine_memory_of_a_remote_engine_comes_from_its_own_metrics(chat_engine) -> None:
    """Where the gateway cannot see the engine's processes (compose), the engine's /metrics tells."""
    from hxp.gateway.metrics import engine_memory_from_metrics

    with httpx.Client(timeout=10) as client:
        assert engine_memory_from_metrics(client, chat_engine.base_url + "/v1") > 100 * 2**20
        assert engine_memory_from_metrics(client, "http://127.0.0.1:9/v1") is None
