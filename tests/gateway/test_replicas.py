"""Two gateway replicas sharing PostgreSQL and Redis: exact per-key limits, shared cache, keys kept secret."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import yaml

from hxp.core import catalogue
from hxp.core.database import Database
from tests.support.gateway import all_models

pytestmark = pytest.mark.services

CHAT = catalogue.load().chat_models
CACHED, UNCACHED = CHAT[0], CHAT[-1]


@pytest.fixture(scope="module")
def replicas(postgres, redis_server, fake_upstream, tmp_path_factory):
    """Two single-worker gateways on one database and one Redis; the catalogue turns off one model's cache."""
    from tests.support.gateway import GatewayFactory

    raw = yaml.safe_load(catalogue.load().path.read_text())
    for entry in raw["models"]:
        if entry["name"] == UNCACHED.name:
            entry["api"]["cache"] = False
    path = tmp_path_factory.mktemp("catalogue") / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {"DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url, "HXP_CATALOGUE": str(path)}
    factory = GatewayFactory()
    pair = [factory(all_models(fake_upstream.url), env, wait=False) for _ in range(2)]
    for gateway in pair:
        gateway.wait_ready()
    yield pair
    factory.close()


async def _burst(urls: list[str], key: str, model: str, total: int) -> list[int]:
    body = {"model": model, "messages": [{"role": "user", "content": "count me"}]}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=total)) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                for i in range(total)
            )
        )
    return [r.status_code for r in responses]


def test_rpm_is_exact_across_replicas(replicas):
    key = replicas[0].create_key(rpm=10)
    statuses = asyncio.run(_burst([g.base_url for g in replicas], key, CACHED.name, 100))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 90, statuses


def test_tpm_limit_stops_a_key_once_its_tokens_are_spent(replicas):
    key = replicas[0].create_key(tpm=20)  # the fake upstream's answers cost about 8 tokens each
    statuses = [replicas[i % 2].chat(key, CACHED.name).status_code for i in range(8)]
    assert 200 in statuses and statuses[-1] == 429, statuses


def test_cache_is_shared_and_costs_no_backend_call(replicas, fake_upstream):
    key = replicas[0].create_key()
    prompt = f"cache me {uuid.uuid4()}"
    first = replicas[0].chat(key, CACHED.name, prompt, temperature=0)
    served = fake_upstream.requests_served()
    second = replicas[1].chat(key, CACHED.name, prompt, temperature=0)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-hxp-cache"] == "miss"
    assert second.headers["x-hxp-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert fake_upstream.requests_served() == served


def test_cache_only_at_temperature_zero_and_where_the_catalogue_allows(replicas, fake_upstream):
    key = replicas[0].create_key()
    for model, params in ((CACHED.name, {"temperature": 0.7}), (UNCACHED.name, {"temperature": 0})):
        prompt = f"do not cache {uuid.uuid4()}"
        before = fake_upstream.requests_served()
        answers = [replicas[0].chat(key, model, prompt, **params) for _ in range(2)]
        assert [r.headers["x-hxp-cache"] for r in answers] == ["miss", "miss"], model
        assert fake_upstream.requests_served() == before + 2


def test_keys_never_in_clear_in_the_database_or_the_logs(replicas, postgres):
    secrets = [replicas[0].create_key(rpm=1000)]
    rotated = httpx.post(
        f"{replicas[1].url}/admin/keys/{uuid.uuid4()}/rotate", headers=replicas[1].headers(), timeout=30
    )
    assert rotated.status_code == 404
    for gateway in replicas:
        assert gateway.chat(secrets[0], CACHED.name).status_code == 200
        assert gateway.chat(secrets[0] + "x", CACHED.name).status_code == 401  # a near miss is logged too
    secrets += [replicas[0].master_key, replicas[1].master_key]
    db = Database(postgres.url)
    try:
        dump = "\n".join(
            str(row) for table in ("api_keys", "llm_model_requests") for row in db.fetchall(f"SELECT * FROM {table}")
        )
    finally:
        db.close()
    assert dump
    for secret in secrets:
        body = secret.split("-", 2)[-1]
        assert body not in dump
        for gateway in replicas:
            assert body not in gateway.log
