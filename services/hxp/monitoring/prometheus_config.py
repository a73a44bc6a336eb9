"""Prometheus configuration rendered from target groups.

Two forms:
- the development Prometheus (compose or native): a whole prometheus.yml with
  one static job per component, the alert rules and the development Alertmanager;
- the operators' remote Prometheus: file_sd target files (``hxp-<job>.json``),
  each target labelled with its job, read by one scrape job that the operator
  adds once (``remote_scrape_config``); new models then need no edit there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hxp.core.catalogue import Catalogue
from hxp.core.paths import PROJECT_ROOT
from hxp.monitoring import alertmanager
from hxp.monitoring.targets import (
    JOB_ALERTMANAGER,
    JOB_GATEWAY,
    JOB_NODE,
    JOB_POSTGRES,
    JOB_REDIS,
    Endpoints,
    TargetGroup,
)

RULES_DIR = PROJECT_ROOT / "prometheus" / "rules"
TOKEN_FILE_VAR = "HXP_METRICS_TOKEN_FILE"  # where the scraping Prometheus reads the gateway's HXP_METRICS_TOKEN
SD_PREFIX = "hxp-"
REMOTE_JOB = "hxp-llm-server"
# Scrape intervals per job; the rest use the global one.
INTERVALS = {JOB_NODE: "30s", JOB_POSTGRES: "30s", JOB_REDIS: "30s"}


def _jobs(groups: list[TargetGroup]) -> dict[str, list[TargetGroup]]:
    jobs: dict[str, list[TargetGroup]] = {}
    for group in groups:
        jobs.setdefault(group.job, []).append(group)
    return jobs


def bearer(token_file: str) -> dict[str, Any]:
    """The scrape setting that sends the gateway's metrics token (HXP_METRICS_TOKEN), read from a file."""
    return {"authorization": {"type": "Bearer", "credentials_file": token_file}}


def development_config(
    catalogue: Catalogue,
    endpoints: Endpoints,
    *,
    rule_files: list[str],
    scrape_interval: str = "15s",
    job_intervals: bool = True,
    gateway_token_file: str | None = None,
) -> dict[str, Any]:
    """A complete prometheus.yml scraping ``endpoints`` with the alert rules in ``rule_files``.

    ``job_intervals`` keeps the per-job intervals (INTERVALS); without it every job uses ``scrape_interval``.
    ``gateway_token_file``: where Prometheus reads the gateway's metrics token (when /metrics needs one).
    """
    groups = endpoints.groups(catalogue)
    scrape_configs = []
    for job, job_groups in _jobs(groups).items():
        entry: dict[str, Any] = {"job_name": job}
        if job_intervals and job in INTERVALS:
            entry["scrape_interval"] = INTERVALS[job]
        if job == JOB_GATEWAY and gateway_token_file:
            entry.update(bearer(gateway_token_file))
        entry["static_configs"] = [
            {"targets": g.targets, **({"labels": g.labels} if g.labels else {})} for g in job_groups
        ]
        scrape_configs.append(entry)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "external_labels": {"stack": "hxp-llm-server"},
        },
        "rule_files": rule_files,
        "scrape_configs": scrape_configs,
    }
    managers = endpoints.own.get(JOB_ALERTMANAGER)
    if managers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": managers}]}]}
    return config


def file_sd(catalogue: Catalogue, endpoints: Endpoints) -> dict[str, list[dict[str, Any]]]:
    """The remote Prometheus' target files: file name -> file_sd groups (the job is a target label)."""
    files: dict[str, list[dict[str, Any]]] = {}
    for job, job_groups in _jobs(endpoints.groups(catalogue)).items():
        files[f"{SD_PREFIX}{job}.json"] = [
            {"targets": g.targets, "labels": {"job": job, **g.labels}} for g in job_groups
        ]
    return files


def remote_scrape_config(sd_dir: str, gateway_token_file: str | None = None) -> dict[str, Any]:
    """The scrape job the operator adds once to the remote Prometheus to read the target files (with the
    gateway's metrics token when /metrics needs one)."""
    return {
        "job_name": REMOTE_JOB,
        "scrape_interval": "15s",
        "file_sd_configs": [{"files": [f"{sd_dir.rstrip('/')}/{SD_PREFIX}*.json"], "refresh_interval": "1m"}],
        **(bearer(gateway_token_file) if gateway_token_file else {}),
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # repeated lists stay readable (no &id001 anchors)
        return True


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def write_development(
    out: Path,
    catalogue: Catalogue,
    endpoints: Endpoints,
    *,
    rule_files: list[str],
    env: Mapping[str, str],
    header: str = "",
) -> list[Path]:
    """Write prometheus.yml and alertmanager.yml (receivers from ``env``) for a development Prometheus; the gateway
    job sends the metrics token from HXP_METRICS_TOKEN_FILE when ``env`` names one."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    documents = {
        "prometheus.yml": development_config(
            catalogue, endpoints, rule_files=rule_files, gateway_token_file=env.get(TOKEN_FILE_VAR) or None
        ),
        "alertmanager.yml": alertmanager.config(env),
    }
    for name, document in documents.items():
        path = out / name
        path.write_text(header + dump(document))
        written.append(path)
    return written
