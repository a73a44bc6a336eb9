"""A gateway worker's own calls (engine probes, the vector API's embeddings, /health/models) share one HTTP
client: none loads the CA bundle per call.

Each new httpx client parses the CA bundle into an SSL context, and that context outlives the client until
the garbage collector's next pass: one per vector search and per probe round grew a worker's heap by up to
some 200 MB under the soak's load (docs/reliability.md). The gateway runs with tests/support/ca_loads first on
its PYTHONPATH, which logs every CA bundle load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from hxp.core import catalogue
from tests.support import soak
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, all_models

CA_LOADS = Path(__file__).resolve().parents[1] / "support" / "ca_loads"
PROBE_ROUNDS = 12


def _loads(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def _calls(gateway: Gateway, key: str, chat: str) -> None:
    """A vector search, a chat answered by one of the model's two engines (the router probes them at most every
    second), the models' health and the metrics."""
    headers = gateway.headers(key)
    search = {"query": "soak", "limit": 3}
    url = f"{gateway.url}/v1/vector/collections/{soak.COLLECTION}/search"
    assert httpx.post(url, json=search, headers=headers, timeout=30).status_code == 200
    body = {"model": chat, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    assert httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=30).status_code == 200
    assert httpx.get(f"{gateway.url}/health/models", headers=gateway.headers(), timeout=30).status_code == 200
    assert httpx.get(f"{gateway.url}/metrics", headers=gateway.headers(), timeout=30).status_code == 200


def test_a_workers_own_calls_load_no_ca_bundle_per_call(tmp_path: Path) -> None:
    cat = catalogue.load()
    chat, embedding = cat.chat_models[0].name, cat.embedding_models[0].name
    log = tmp_path / "ca-loads.log"
    one, two = FakeUpstream(), FakeUpstream()
    one.start()
    two.start()
    gateway: Gateway | None = None
    try:
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (str(CA_LOADS), os.environ.get("PYTHONPATH")) if p),
            "HXP_CA_LOAD_LOG": str(log),
            "QDRANT_URL": "",
            "QDRANT_PATH": str(tmp_path / "qdrant"),
            "HXP_VECTOR_CONFIG": str(soak.write_vector_config(tmp_path, embedding)),
        }
        backends = {**all_models(one.url), chat: [one.url, two.url]}
        gateway = Gateway(backends, env, workers=1).start()
        key = gateway.create_key("ca-loads", write_collections=[soak.COLLECTION])
        soak.seed(gateway, key)
        _calls(gateway, key, chat)  # every client a worker keeps is built by now
        built = _loads(log)
        for _ in range(PROBE_ROUNDS):
            _calls(gateway, key, chat)
            time.sleep(1.1)  # a new probe round is due
        assert built > 0  # the log sees the gateway's loads (LiteLLM's own clients at start)
        assert _loads(log) == built, f"{_loads(log) - built} CA bundle loads in {PROBE_ROUNDS} rounds of calls"
    finally:
        if gateway is not None:
            gateway.close()
        one.stop()
        two.stop()
