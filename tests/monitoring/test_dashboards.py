"""The Grafana dashboards and provisioning: structure, every query's syntax, the metric names they use."""

from __future__ import annotations

import json
import re
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from hxp.core.paths import PROJECT_ROOT
from hxp.monitoring import dashboards, targets
from hxp.monitoring.prometheus_config import dump

GRAFANA = PROJECT_ROOT / "grafana"
RENDERED = [dashboards.render(d) for d in dashboards.DASHBOARDS]
VLLM_LOGGERS = PROJECT_ROOT / ".venv-engine/lib/python3.11/site-packages/vllm/v1/metrics/loggers.py"


def test_committed_json_is_generated(tmp_path: Path) -> None:
    written = dashboards.write(tmp_path)
    for path in written:
        assert (GRAFANA / "dashboards" / path.name).read_text() == path.read_text(), (
            f"grafana/dashboards/{path.name} is stale: run `make grafana-dashboards`"
        )
    assert sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json")) == sorted(p.name for p in written)


def test_the_required_dashboards_are_provisioned_in_their_folder() -> None:
    assert [d["title"] for d in RENDERED] == ["LLM Server Overview", "Model Performance", "Resource Utilization"]
    assert len({d["uid"] for d in RENDERED}) == len(RENDERED)
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/hxp.yml").read_text())["providers"][0]
    assert provider["folder"] == dashboards.FOLDER == "AI Infrastructure" and provider["type"] == "file"
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus"
    port = targets.PORTS[targets.JOB_PROMETHEUS][1]
    assert source["url"] == f"http://{targets.COMPOSE_SERVICES[targets.JOB_PROMETHEUS]}:{port}"


@pytest.mark.parametrize("board", RENDERED, ids=lambda d: d["uid"])
def test_structure(board: dict) -> None:
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for a, b in combinations(panels, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        overlap = (
            ga["x"] < gb["x"] + gb["w"]
            and gb["x"] < ga["x"] + ga["w"]
            and ga["y"] < gb["y"] + gb["h"]
            and gb["y"] < ga["y"] + ga["h"]
        )
        assert not overlap, f"{a['title']!r} overlaps {b['title']!r}"


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), with Grafana's variables resolved."""
    rules = [
        {"record": f"hxp:dashboard_query_{i}", "expr": dashboards.resolve(e)}
        for i, e in enumerate(dashboards.queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum(rate(x[1m])"}]}]}))
    assert subprocess.run(["promtool", "check", "rules", str(broken)], capture_output=True).returncode != 0


def test_the_required_panels_are_there() -> None:
    text = json.dumps(RENDERED)
    for needle in [
        "rate(llm_requests_total",
        'status=~\\"5..\\"',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "llm_time_to_first_token_seconds_bucket",
        "llm_tokens_processed_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "llm_model_memory_usage_bytes",
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "llm_rate_limit_rejections_total",
        "sum by (user_id)",
    ]:
        assert needle in text, needle


@pytest.mark.skipif(not VLLM_LOGGERS.exists(), reason="engine virtualenv not installed")
def test_vllm_metric_names_exist_in_the_installed_vllm() -> None:
    source = VLLM_LOGGERS.read_text()
    used = {re.sub(r"_(bucket|total)$", "", m) for m in re.findall(r"vllm:[a-z0-9_]+", " ".join(dashboards.queries()))}
    assert used and all(f'"{name}"' in source for name in used), used
