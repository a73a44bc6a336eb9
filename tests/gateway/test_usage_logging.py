"""Usage rows written by a real gateway: one per request answered, a client leaving mid-stream, across SIGTERM and
a PostgreSQL outage."""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from hxp.core import catalogue
from hxp.core.database import Database
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import ROOT, Gateway

CHAT = [m.name for m in catalogue.load().chat_models]
WRONG_KEY = "sk-hxp-" + "x" * 40
RULES = ROOT / "prometheus" / "rules" / "infrastructure_alerts.yml"


def started(gateway_factory, *args, **kwargs) -> Gateway:
    """A gateway from the factory, given time to start on a busy machine."""
    gateway = gateway_factory(*args, wait=False, **kwargs)
    gateway.wait_ready(timeout=300)
    return gateway


def sqlite_db(gateway: Gateway) -> Database:
    return Database(f"sqlite:///{gateway.state_dir / 'gateway.sqlite3'}")


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.2)


def stream_chat(gateway: Gateway, key: str, model: str, **params: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "count"}], "stream": True, **params}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers(key), timeout=60
    ) as response:
        response.read()
    return response


def test_each_request_is_one_row_with_its_outcome_and_no_secret(gateway: Gateway) -> None:
    alias = "usage-" + secrets.token_hex(4)
    key = gateway.create_key(alias=alias, models=[CHAT[0]])
    unique = secrets.token_hex(8)
    answers = {
        "ok": gateway.chat(key, CHAT[0]),
        "stream": stream_chat(gateway, key, CHAT[0]),
        "first": gateway.chat(key, CHAT[0], content=unique, temperature=0),
        "cached": gateway.chat(key, CHAT[0], content=unique, temperature=0),
        "forbidden": gateway.chat(key, CHAT[1]),
        "unknown": gateway.chat(key, "no-such-model"),
        "invalid": gateway.chat(key, CHAT[0], temperature=5),
    }
    assert [r.status_code for r in answers.values()] == [200, 200, 200, 200, 403, 404, 400]
    assert answers["cached"].headers.get("x-hxp-cache") == "hit"
    db = sqlite_db(gateway)
    try:
        wait_for(
            lambda: len(db.fetchall("SELECT 1 FROM llm_model_requests WHERE user_id = ?", (alias,))) >= 7, what="7 rows"
        )
        rows = {
            str(r["request_id"]): r for r in db.fetchall("SELECT * FROM llm_model_requests WHERE user_id = ?", (alias,))
        }
        assert len(rows) == 7
        row = {name: rows[r.headers["x-request-id"]] for name, r in answers.items()}
        key_id = row["ok"]["key_id"]
        assert key_id and all(r["key_id"] == key_id for r in rows.values())
        ok = row["ok"]
        assert ok["status"] == "success" and ok["model_name"] == CHAT[0] and not ok["stream"]
        assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] > 0
        assert ok["total_tokens"] == ok["prompt_tokens"] + ok["completion_tokens"]
        assert ok["latency_ms"] >= 0 and ok["time_to_first_token_ms"] is None and ok["cost"] is not None
        stream = row["stream"]
        assert stream["status"] == "success" and stream["stream"] and stream["completion_tokens"] > 0
        assert 0 <= stream["time_to_first_token_ms"] <= stream["latency_ms"]
        assert not row["first"]["cache_hit"] and row["cached"]["cache_hit"]
        assert (row["forbidden"]["status"], row["forbidden"]["model_name"]) == ("forbidden", CHAT[1])
        assert row["unknown"]["status"] == "not_found" and row["invalid"]["status"] == "invalid_request"
        assert "temperature" in row["invalid"]["error_message"] and "400" in row["invalid"]["error_message"]

        before = db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests WHERE status = 'unauthorized'")["n"]
        assert gateway.chat(WRONG_KEY, CHAT[0]).status_code == 401
        wait_for(
            lambda: (
                db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests WHERE status = 'unauthorized'")["n"]
                == before + 1
            ),
            what="the 401 row",
        )
        dump = "\n".join(str(r) for r in db.fetchall("SELECT * FROM llm_model_requests"))
    finally:
        db.close()
    for secret in (key, WRONG_KEY, gateway.master_key):
        assert secret not in dump
        assert secret.encode() not in (gateway.state_dir / "gateway.sqlite3").read_bytes()
    assert unique not in dump  # no prompt text either


STREAM_WORDS = 400
_TEXT_CHUNK = re.compile(rb'"content":\s*"[^"]')


@pytest.fixture
def paced_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    upstream.set_reply(words=STREAM_WORDS, rate=20)  # a 20 s stream: a disconnect comes long before its end
    yield upstream
    upstream.stop()


def leave_mid_stream(gateway: Gateway, key: str, body: dict, chunks: int) -> tuple[str, int]:
    """POST a streamed request on a raw socket, read until ``chunks`` text chunks have come, take what else has
    already arrived, and close the connection; the request id and the text chunks received."""
    data = json.dumps(body).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    received = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as sock:
        sock.sendall(request)
        while len(_TEXT_CHUNK.findall(received)) < chunks:
            piece = sock.recv(65536)
            assert piece, received
            received += piece
        sock.setblocking(False)
        try:
            while piece := sock.recv(65536):
                received += piece
        except BlockingIOError:
            pass
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    request_id = re.search(r"(?im)^x-request-id: (\S+)", head)
    assert request_id, head
    return request_id.group(1), len(_TEXT_CHUNK.findall(received))


def test_a_client_leaving_mid_stream_stops_the_engine_and_gets_a_row_with_what_it_received(
    gateway_factory, paced_upstream: FakeUpstream
) -> None:
    gateway = started(gateway_factory, paced_upstream.url)
    key = gateway.create_key(alias="leaves-" + secrets.token_hex(4), models=[CHAT[0]])
    body = {"model": CHAT[0], "messages": [{"role": "user", "content": "count"}], "stream": True}
    assert stream_chat(gateway, key, CHAT[0], max_tokens=3).status_code == 200  # a first stream warms LiteLLM up
    paced_upstream.reset()
    request_id, received = leave_mid_stream(gateway, key, {**body, "max_tokens": STREAM_WORDS}, 10)
    wait_for(lambda: paced_upstream.stream_outcomes()["cut"] == 1, timeout=30, what="the upstream stream cut")
    outcome = paced_upstream.stream_outcomes()
    assert outcome["completed"] == 0
    [sent] = outcome["cut_after_chunks"]
    assert received <= sent < STREAM_WORDS // 2  # the engine stopped generating soon after the client left
    row = gateway.usage_rows([request_id])[request_id]
    assert row["status"] == "cancelled" and row["stream"] and row["error_message"].startswith("499")
    assert received <= row["completion_tokens"] <= received + 1  # what it received, within the chunk in flight
    assert 0 <= row["time_to_first_token_ms"] <= row["latency_ms"]


def test_a_stream_the_engine_breaks_off_is_recorded_as_failed_with_the_tokens_sent(gateway_factory) -> None:
    upstream = FakeUpstream().start()
    try:
        gateway = started(gateway_factory, upstream.url)
        alias = "broken-" + secrets.token_hex(4)
        key = gateway.create_key(alias=alias, models=[CHAT[0]])
        upstream.set_reply(words=50, break_after=7)  # the engine dies after 7 chunks of a 50-chunk answer
        answer = stream_chat(gateway, key, CHAT[0])
        assert upstream.stream_outcomes()["broken"] == 1
    finally:
        upstream.stop()
    assert answer.status_code == 200  # the status line went out with the first chunk
    events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: {")]
    assert '"error"' in events[-1], answer.text  # the client is told: LiteLLM's error event ends the stream
    request_id = answer.headers["x-request-id"]
    row = gateway.usage_rows([request_id])[request_id]
    assert row["status"] == "backend_error" and row["stream"], dict(row)
    assert re.match(r"5\d\d ", row["error_message"]), row["error_message"]  # the status, then what LiteLLM said
    assert row["completion_tokens"] == 7  # what the client received before the break
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert re.search(rf'llm_requests_total{{[^}}]*status="5\d\d"[^}}]*user_id="{alias}"', metrics), (
        "the failed stream is counted as an error"
    )


class Load:
    """Client threads sending a mix of requests until stopped; counts the responses they received."""

    def __init__(self, gateway: Gateway, key: str, threads: int = 6) -> None:
        self.gateway, self.key, self.threads = gateway, key, threads
        self.answered: Counter[int] = Counter()
        self.call_ids: set[str] = set()
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(threads)]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answered.values())

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def _client(self, index: int) -> None:
        gw = self.gateway
        with httpx.Client(timeout=60) as client:
            for n in range(100_000):
                if self._stop.is_set():
                    return
                kind = (index + n) % 5
                key = WRONG_KEY if kind == 4 else self.key
                body = {
                    "model": CHAT[0],
                    "messages": [{"role": "user", "content": f"req {index}-{n}"}],
                    "stream": kind == 1,
                }
                if kind == 3:
                    body["temperature"] = 7  # a 400 from validation
                try:
                    with client.stream(
                        "POST", f"{gw.base_url}/chat/completions", json=body, headers=gw.headers(key)
                    ) as response:
                        response.read()
                except httpx.TransportError:
                    with self._lock:
                        self.failures += 1  # never answered (the gateway is stopping or stopped)
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.answered[response.status_code] += 1
                    if "x-request-id" in response.headers:
                        self.call_ids.add(response.headers["x-request-id"])


@pytest.fixture
def slow_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(delay=0.1).start()  # requests stay in flight long enough to be caught by SIGTERM
    yield upstream
    upstream.stop()


@pytest.fixture
def pg_url(postgres) -> Iterator[str]:
    url = fresh_postgres_database(postgres)
    yield url
    drop_postgres_database(postgres, url)


def spilled_rows(state_dir: Path) -> int:
    return sum(1 for p in (state_dir / "usage-spill").glob("usage-*.jsonl") for line in p.open() if line.strip())


def stored_ids(db: Database) -> set[str]:
    return {str(r["request_id"]) for r in db.fetchall("SELECT request_id FROM llm_model_requests")}


def test_sigterm_during_load_logs_every_answered_request(
    gateway_factory, slow_upstream: FakeUpstream, pg_url: str
) -> None:
    # Nothing is written before the shutdown (huge batch, long interval): every row comes from the flush.
    gateway = started(
        gateway_factory,
        slow_upstream.url,
        workers=2,
        env={"DATABASE_URL": pg_url, "HXP_USAGE_BATCH_SIZE": "100000", "HXP_USAGE_FLUSH_INTERVAL_S": "600"},
    )
    key = gateway.create_key(alias="sigterm-load", models=[CHAT[0]])
    with Load(gateway, key) as load:
        wait_for(lambda: load.total >= 60, what="60 answered requests")
        gateway.stop(signal.SIGTERM)
    db = Database(pg_url)
    try:
        assert load.total >= 60 and load.answered[200] and load.answered[400] and load.answered[401]
        assert db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] == load.total, load.answered
        assert load.call_ids <= stored_ids(db)
    finally:
        db.close()


def test_sigkill_during_load_loses_no_answered_request(
    gateway_factory, slow_upstream: FakeUpstream, pg_url: str
) -> None:
    """Killed as the OOM killer would kill it, the gateway writes nothing at its end: every answer a client got
    is in the journal (written before the answer's last byte) and the next gateway on that state replays it."""
    env = {"DATABASE_URL": pg_url, "HXP_USAGE_BATCH_SIZE": "100000", "HXP_USAGE_FLUSH_INTERVAL_S": "600"}
    first = started(gateway_factory, slow_upstream.url, workers=2, env=env)
    key = first.create_key(alias="sigkill-load", models=[CHAT[0]])
    with Load(first, key) as load:
        wait_for(lambda: load.total >= 60, what="60 answered requests")
        first.stop(signal.SIGKILL)
    assert list((first.state_dir / "usage-spill").glob("journal-*.jsonl"))  # what the killed workers left
    second = started(gateway_factory, slow_upstream.url, env=env, state_dir=first.state_dir)
    db = Database(pg_url)
    try:
        assert load.answered[200] and load.answered[400] and load.answered[401]
        wait_for(lambda: load.call_ids <= stored_ids(db), what="every answered request in the database")
        stored = db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"]
        assert load.total <= stored <= load.total + load.threads, load.answered  # plus rows of unfinished answers
    finally:
        db.close()
        second.stop()


def test_postgres_outage_during_load_loses_no_row(
    gateway_factory, fake_upstream: FakeUpstream, postgres, pg_url: str
) -> None:
    gateway = started(
        gateway_factory,
        fake_upstream.url,
        workers=2,
        env={
            "DATABASE_URL": pg_url,
            "HXP_KEY_CACHE_TTL_S": "600",
            "HXP_USAGE_MAX_BUFFER": "5",
            "HXP_USAGE_RETRY_MAX_S": "1",
        },
    )
    key = gateway.create_key(alias="outage-load", models=[CHAT[0]])
    with Load(gateway, key) as load:
        wait_for(lambda: load.total >= 30, what="30 answered requests")
        postgres.stop()
        try:
            during = load.total
            time.sleep(10)
            during = load.total - during
            spilled = spilled_rows(gateway.state_dir)
        finally:
            postgres.start()
        time.sleep(1)
    assert during >= 20, during  # the gateway kept answering while the database was away
    assert spilled > 0  # beyond the memory bound rows went to disk
    db = Database(pg_url)
    try:
        wait_for(
            lambda: db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] >= load.total,
            timeout=90,
            what="every answered request in the database",
        )
        assert db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] == load.total
        assert load.call_ids <= stored_ids(db)
        assert spilled_rows(gateway.state_dir) == 0  # replayed once the database returned
    finally:
        db.close()


def test_rows_spilled_at_shutdown_during_an_outage_are_replayed_at_the_next_start(
    gateway_factory, fake_upstream: FakeUpstream, postgres, pg_url: str
) -> None:
    env = {"DATABASE_URL": pg_url, "HXP_KEY_CACHE_TTL_S": "600"}
    first = started(gateway_factory, fake_upstream.url, env=env)
    key = first.create_key(alias="spill-replay", models=[CHAT[0]])
    assert first.chat(key, CHAT[0]).status_code == 200  # the key is cached: auth works without the database
    postgres.stop()
    try:
        answered = [first.chat(key, CHAT[0], content=f"outage {i}") for i in range(10)]
        first.stop(signal.SIGTERM)
    finally:
        postgres.start()
    assert spilled_rows(first.state_dir) >= 10  # the outage's rows (and any not yet written before it)
    second = started(gateway_factory, fake_upstream.url, env=env, state_dir=first.state_dir)
    db = Database(pg_url)
    try:
        wait_for(
            lambda: db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] == 11,
            what="the spilled rows replayed",
        )
        assert {r.headers["x-request-id"] for r in answered} <= stored_ids(db)
    finally:
        db.close()
        second.stop()


def test_liveness_keeps_answering_while_rows_spill(
    gateway_factory, fake_upstream: FakeUpstream, postgres, pg_url: str
) -> None:
    """Every row goes through the spill folder (a buffer of one row, the database away): the event loop that
    answers requests never waits for that disk I/O, so /health/liveness answers throughout."""
    gateway = started(
        gateway_factory,
        fake_upstream.url,
        env={"DATABASE_URL": pg_url, "HXP_KEY_CACHE_TTL_S": "600", "HXP_USAGE_MAX_BUFFER": "1"},
    )
    key = gateway.create_key(alias="spill-liveness", models=[CHAT[0]])
    assert gateway.chat(key, CHAT[0]).status_code == 200  # the key is cached: auth works without the database
    postgres.stop()
    probes: list[float] = []
    try:
        with Load(gateway, key, threads=4) as load:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                started_at = time.monotonic()
                assert httpx.get(f"{gateway.url}/health/liveness", timeout=10).status_code == 200
                probes.append(time.monotonic() - started_at)
                time.sleep(0.05)
        spilled = spilled_rows(gateway.state_dir)
    finally:
        postgres.start()
    assert load.total >= 20 and spilled >= 20, (load.total, spilled)  # the load spilled row after row
    assert len(probes) >= 20  # ...and liveness answered all along, each within the 10 s timeout


@pytest.fixture(params=["bound", "filesystem"])
def full_spill(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The gateway's settings for a spill folder that fills up: its bound (HXP_USAGE_SPILL_MAX_MB) reached, or
    the filesystem under it full (a 64 KiB tmpfs; root only)."""
    if request.param == "bound":
        yield {"HXP_USAGE_SPILL_MAX_MB": "0.008"}
        return
    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield {"HXP_USAGE_SPILL_DIR": str(folder / "spill")}
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_spill_folder_drops_rows_counts_them_and_the_gateway_keeps_answering(
    gateway_factory, fake_upstream: FakeUpstream, postgres, pg_url: str, full_spill: dict[str, str]
) -> None:
    """PostgreSQL away and the spill folder full: requests are still answered, the rows beyond the folder are
    dropped and counted in the metric the UsageRowsDropped alert watches, no worker dies; once the database
    returns, every row kept is written."""
    gateway = started(
        gateway_factory,
        fake_upstream.url,
        workers=2,
        env={
            "DATABASE_URL": pg_url,
            "HXP_KEY_CACHE_TTL_S": "600",
            "HXP_USAGE_MAX_BUFFER": "1",
            "HXP_USAGE_RETRY_MAX_S": "1",
            **full_spill,
        },
    )
    spill = Path(full_spill.get("HXP_USAGE_SPILL_DIR") or gateway.state_dir / "usage-spill")
    key = gateway.create_key(alias="spill-full", models=[CHAT[0]])
    assert gateway.chat(key, CHAT[0]).status_code == 200  # the key is cached: auth works without the database
    workers = psutil.Process(gateway.pid).children()
    postgres.stop()
    try:
        with Load(gateway, key, threads=4) as load:
            wait_for(lambda: metric(gateway, "llm_usage_rows_dropped_total") >= 20, timeout=120, what="20 rows dropped")
        assert httpx.get(f"{gateway.url}/health/liveness", timeout=10).status_code == 200
        assert psutil.Process(gateway.pid).children() == workers  # no worker died or was replaced
        # as without an outage, but an unknown key cannot be looked up: 503 (Retry-After), never a 500
        assert load.failures == 0 and set(load.answered) <= {200, 400, 401, 503}, load.answered
        assert sum(1 for p in spill.glob("usage-*.jsonl") for line in p.open() if line.strip()) > 0
        dropped = int(metric(gateway, "llm_usage_rows_dropped_total"))
    finally:
        postgres.start()
    alerts = yaml.safe_load(RULES.read_text())["groups"]
    assert "llm_usage_rows_dropped_total" in next(
        r["expr"] for g in alerts for r in g["rules"] if r.get("alert") == "UsageRowsDropped"
    )
    db = Database(pg_url)
    try:
        kept = 1 + load.total - dropped  # the warm-up chat and the load's answers, less the rows dropped
        wait_for(
            lambda: db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] >= kept,
            timeout=120,
            what="the rows kept written once the database returned",
        )
        assert db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"] == kept
        wait_for(lambda: not any(spill.glob("usage-*.jsonl")), what="the spill folder emptied")
    finally:
        db.close()


def metric(gateway: Gateway, name: str) -> float:
    """A metric summed over its samples (and the workers) on the gateway's /metrics."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
