"""The alert rules (prometheus/rules) and the Alertmanager configuration, checked by promtool and amtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from hxp.core.paths import PROJECT_ROOT
from hxp.monitoring import alertmanager
from hxp.monitoring.prometheus_config import RULES_DIR, dump

TESTS_DIR = PROJECT_ROOT / "prometheus" / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*_test.yml"))
REQUIRED = {  # the requirements' alerts and the issue's additions, with their severity
    "HighLatency": "warning",
    "LowThroughput": "warning",
    "HighMemoryUsage": "critical",
    "LLMServiceDown": "critical",
    "LLMHighMemoryUsage": "warning",
    "LLMHighErrorRatio": "warning",
    "LLMBackendUnhealthy": "critical",
    "PostgreSQLDown": "critical",
    "RedisDown": "critical",
    "UsageLogBacklogGrowing": "warning",
    "UsageSpillNearlyFull": "warning",
    "UsageRowsDropped": "critical",
    "ConsoleSignInFailures": "warning",
    "DeniedRequestBurst": "warning",
}


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=TESTS_DIR)


def alert_rules() -> dict[str, dict]:
    rules = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = rule
    return rules


def test_rule_files_pass_promtool_check() -> None:
    result = run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_rule_unit_tests_pass(test_file: Path) -> None:
    result = run("promtool", "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_exist_with_their_severity() -> None:
    rules = alert_rules()
    assert {name: rules[name]["labels"]["severity"] for name in REQUIRED if name in rules} == REQUIRED
    assert rules["HighLatency"]["for"] == "2m" and rules["LowThroughput"]["for"] == "5m"
    assert rules["HighMemoryUsage"]["for"] == "1m" and rules["LLMServiceDown"]["for"] == "1m"
    assert rules["LLMHighMemoryUsage"]["for"] == "5m"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    tested_files: set[Path] = set()
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        tested_files |= {(TESTS_DIR / f).resolve() for f in doc["rule_files"]}
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert tested_files == {p.resolve() for p in RULE_FILES}
    assert set(alert_rules()) - fires == set(), "alerts without a firing case"
    assert set(alert_rules()) - quiet == set(), "alerts without a quiet case"


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The rule tests can fail: a changed expected value is reported by promtool."""
    doc = yaml.safe_load((TESTS_DIR / "llm_alerts_test.yml").read_text())
    doc["rule_files"] = [str(RULES_DIR / "llm_alerts.yml")]
    doc["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["model"] = "fast"
    broken = tmp_path / "broken_test.yml"
    broken.write_text(dump(doc))
    result = run("promtool", "test", "rules", str(broken))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"HXP_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/warn"},
        {
            "HXP_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/warn",
            "HXP_ALERT_CRITICAL_WEBHOOK_URL": "http://127.0.0.1:9/page",
        },
    ],
    ids=["no-receivers", "one-webhook", "two-webhooks"],
)
def test_alertmanager_config_passes_amtool(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(dump(alertmanager.config(env)))
    result = run("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = {r["name"]: r for r in alertmanager.config(env)["receivers"]}
    critical_url = env.get("HXP_ALERT_CRITICAL_WEBHOOK_URL") or env.get("HXP_ALERT_WEBHOOK_URL")
    assert [w["url"] for w in receivers["critical"].get("webhook_configs", [])] == (
        [critical_url] if critical_url else []
    )


@pytest.mark.parametrize(
    "labels,receiver",
    [
        (["alertname=LLMServiceDown", "severity=critical", "model=phi-3-mini"], "critical"),
        (["alertname=HighLatency", "severity=warning", "model=phi-3-mini"], "warning"),
        (["alertname=Other"], "default"),
    ],
)
def test_alertmanager_routes_by_severity(tmp_path: Path, labels: list[str], receiver: str) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(dump(alertmanager.config({})))
    result = run("amtool", "config", "routes", "test", f"--config.file={path}", *labels)
    assert result.stdout.strip() == receiver, result.stdout + result.stderr
    assert alertmanager.config({})["route"]["group_by"] == ["alertname", "model"]


def test_committed_alertmanager_config_is_the_generated_default() -> None:
    committed = yaml.safe_load((PROJECT_ROOT / "prometheus" / "alertmanager.yml").read_text())
    assert committed == alertmanager.config({})
    assert run("amtool", "check-config", str(PROJECT_ROOT / "prometheus" / "alertmanager.yml")).returncode == 0
