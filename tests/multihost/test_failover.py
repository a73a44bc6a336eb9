"""Failover across hosts under a bounded steady load through both gateways: an engine host unplugged (and its
engine killed), a gateway host unplugged, the database unreachable for a while. Each scenario's measurements are
printed as a RELIABILITY line (docs/reliability.md); the assertions are about outcomes, with generous bounds only
as hang guards."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from hxp.core.database import Database
from tests.multihost.conftest import MODEL, TIMEOUT_S, Cluster, keys, loads, record, wait_for
from tests.support.load import Outcome, recovery

SLOW_S = 1.0  # an answer slower than this counts as not yet recovered (a normal one takes some 50 ms)
CLIENT_TIMEOUT_S = 15.0  # a client's own timeout: its request in flight on an unplugged gateway never returns
UNAFFECTED_GUARD_S = 10.0  # far above a normal answer, far below waiting on a lost host
OUTAGE_S = 8.0  # how long a link stays cut: the load runs on meanwhile
RESTORED_GUARD_S = 60.0  # a gateway whose host is back answers again once its backends' cooldowns ran out


def served(cluster: Cluster, index: int, outcomes: list[Outcome]) -> set[str]:
    """The markers of these outcomes that engine ``index`` received."""
    seen = {str(r.get("messages")) for r in cluster.engines[index].requests()}
    return {o.marker for o in outcomes if any(o.marker in s for s in seen)}


def stored(cluster: Cluster, ids: set[str]) -> set[str]:
    db = cluster.stores.call(Database, cluster.postgres.url)
    try:
        rows = cluster.stores.call(db.fetchall, "SELECT request_id FROM llm_model_requests")
        return {str(r["request_id"]) for r in rows} & ids
    finally:
        db.close()


def test_an_engine_host_unplugged_mid_load(cluster: Cluster) -> None:
    running = loads(cluster, keys(cluster))
    wait_for(lambda: all(load.answered() >= 20 for load in running), "traffic through both gateways")
    cut_at = time.monotonic()
    cluster.engine_hosts[0].cut()
    cluster.engines[0].stop()  # killed while unplugged: no reset ever reaches the gateways
    time.sleep(OUTAGE_S)
    cluster.restart_engine(0)
    back_at = time.monotonic()
    cluster.engine_hosts[0].restore()
    wait_for(lambda: cluster.engines[0].requests_served() >= 10, "traffic back on the restored engine")
    outcomes = sorted((o for load in running for o in load.stop()), key=lambda o: o.sent_at)
    during = [o for o in outcomes if cut_at <= o.sent_at < back_at]
    failed = [o for o in outcomes if not o.ok]
    results = {
        "requests": len(outcomes),
        "failed": len(failed),
        "errors": sorted({str(o.error) for o in failed}),
        "slowest_s": round(max(o.latency_s for o in outcomes), 2),
        "recovered_after_s": round(recovery(outcomes, cut_at, SLOW_S), 2),
        "sent_while_cut": len(during),
        "served_by_survivor_while_cut": len(served(cluster, 1, during)),
        "back_on_restored_engine_after_s": round(
            min(o.sent_at for o in outcomes if o.marker in served(cluster, 0, outcomes)) - back_at, 2
        ),
    }
    record("engine_host_cut", results)
    assert max(o.latency_s for o in outcomes) < TIMEOUT_S  # nothing waited past the timeout
    assert not failed, results  # requests on the lost engine were retried on the other before their first byte
    assert results["served_by_survivor_while_cut"] > len(during) / 2  # new requests found the surviving engine


def test_a_gateway_host_unplugged_mid_load(cluster: Cluster) -> None:
    running = loads(cluster, keys(cluster), timeout_s=CLIENT_TIMEOUT_S)
    wait_for(lambda: all(load.answered() >= 20 for load in running), "traffic through both gateways")
    cut_at = time.monotonic()
    cluster.gateway_hosts[0].cut()
    before = running[1].answered()
    wait_for(lambda: running[1].answered() >= before + 50, "the other gateway's clients served meanwhile")
    other = running[1].stop()
    cluster.gateway_hosts[0].restore()
    restored_at = time.monotonic()
    outcomes = [running[0].stop(), other]
    probe = cluster.clients.call(cluster.gateways[0].create_key)
    wait_for(
        lambda: cluster.clients.call(cluster.gateways[0].chat, probe, MODEL).status_code == 200,
        "the restored gateway answering again",
        timeout=RESTORED_GUARD_S,
    )
    serves_again_s = time.monotonic() - restored_at
    answered = [{o.request_id for o in out if o.ok and o.request_id} for out in outcomes]
    wait_for(lambda: all(stored(cluster, ids) == ids for ids in answered), "every answered request's row")
    after = [o for o in outcomes[1] if o.sent_at >= cut_at]
    results = {
        "other_gateway": {
            "requests_after_cut": len(after),
            "failed": sum(not o.ok for o in after),
            "errors": sorted({f"{o.status} {o.error}" for o in after if not o.ok}),
            "slowest_s": round(max(o.latency_s for o in after), 2),
        },
        "cut_gateway": {
            "requests": len(outcomes[0]),
            "answered": len(answered[0]),
            "unanswered": sum(not o.ok for o in outcomes[0]),
            "serves_again_after_restore_s": round(serves_again_s, 2),
        },
        "rows_lost": sum(len(ids - stored(cluster, ids)) for ids in answered),
    }
    record("gateway_host_cut", results)
    assert all(o.ok and o.latency_s < UNAFFECTED_GUARD_S for o in after), results  # its clients saw nothing of it
    assert results["rows_lost"] == 0


def test_the_database_unreachable_for_a_while(cluster: Cluster) -> None:
    limited = cluster.clients.call(cluster.gateways[0].create_key, rpm=10)
    warm = [cluster.clients.call(gw.chat, limited, MODEL).status_code for gw in cluster.gateways]  # key cached
    running = loads(cluster, keys(cluster))
    wait_for(lambda: all(load.answered() >= 20 for load in running), "traffic through both gateways")
    cut_at = time.monotonic()
    block_database(cluster, True)
    try:
        statuses = warm + [
            cluster.clients.call(gw.chat, limited, MODEL, content=f"limited {i}").status_code
            for i in range(14)
            for gw in cluster.gateways
        ]  # 30 requests, alternating gateways
        time.sleep(OUTAGE_S)
        spilled = sum(spilled_rows(gw.state_dir) for gw in cluster.gateways)
    finally:
        block_database(cluster, False)
    back_at = time.monotonic()
    outcomes = [load.stop() for load in running]
    answered = {o.request_id for out in outcomes for o in out if o.ok and o.request_id}
    wait_for(lambda: stored(cluster, answered) == answered, "every answered request's row")
    rows_back_s = time.monotonic() - back_at
    wait_for(lambda: sum(spilled_rows(gw.state_dir) for gw in cluster.gateways) == 0, "the spill replayed")
    during = [o for out in outcomes for o in out if cut_at <= o.sent_at < back_at]
    results = {
        "requests_while_away": len(during),
        "failed_while_away": sum(not o.ok for o in during),
        "spilled_rows": spilled,
        "rows_lost": len(answered - stored(cluster, answered)),
        "limited_key_rpm_10": {"answered": statuses.count(200), "refused_429": statuses.count(429)},
        "all_rows_stored_after_s": round(rows_back_s, 2),
        "spill_empty_after_s": round(time.monotonic() - back_at, 2),
    }
    record("database_cut", results)
    assert all(o.ok for o in during), results  # the gateways kept answering without their database
    assert spilled > 0 and results["rows_lost"] == 0
    assert statuses.count(200) == 10 and statuses.count(429) == 20  # one limit across both gateways


def block_database(cluster: Cluster, blocked: bool) -> None:
    """Drop (or let through again) every packet to PostgreSQL's port on the stores host; Redis stays reachable."""
    if blocked:
        rules = [
            "add table inet hxp",
            "add chain inet hxp input { type filter hook input priority 0 ; }",
            f"add rule inet hxp input tcp dport {cluster.postgres.port} drop",
        ]
    else:
        rules = ["delete table inet hxp"]
    for rule in rules:
        subprocess.run(cluster.stores.wrap(["nft", rule]), check=True)


def spilled_rows(state_dir: Path) -> int:
    folder = state_dir / "usage-spill"
    return sum(1 for p in folder.glob("usage-*.jsonl") for line in p.open() if line.strip())
