"""The request log's content switch and secret masking (the live stack checks the lines themselves)."""

from __future__ import annotations

import pytest

from hxp.gateway import request_log


def entry(**fields):
    return request_log.entry(request_id="r1", model="m", key_alias="team", status=200, latency_s=0.25, **fields)


def test_no_content_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HXP_REQUEST_LOG_CONTENT", raising=False)
    record = entry(prompt=[{"role": "user", "content": "secret plans"}], completion="the answer")
    assert "prompt" not in record and "completion" not in record
    assert record["latency_ms"] == 250.0 and record["key"] == "team"


def test_content_when_enabled_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXP_REQUEST_LOG_CONTENT", "true")
    record = entry(
        prompt=[{"role": "user", "content": "my key is sk-abcdefghijklmnopqrstuvwxyz"}],
        completion="use postgresql://hxp:hunter2@db:5432/x",
        error="401: Bearer sk-zyxwvutsrqponmlkjihg rejected",
    )
    assert record["prompt"][0]["content"] == "my key is sk-abcd***"
    assert record["completion"] == "use postgresql://hxp:***@db:5432/x"
    assert "zyxwvu" not in record["error"] and "hunter2" not in str(record)
