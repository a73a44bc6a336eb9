"""The Alertmanager configuration: grouped per model, routed by severity.

Receivers come from the environment, never from the repository:

| variable                       | meaning                                                   |
|--------------------------------|-----------------------------------------------------------|
| HXP_ALERT_WEBHOOK_URL          | webhook receiving warnings (and critical alerts, unless   |
|                                | HXP_ALERT_CRITICAL_WEBHOOK_URL is set)                    |
| HXP_ALERT_CRITICAL_WEBHOOK_URL | webhook receiving critical alerts                         |

Without either, alerts are only shown in Alertmanager's own UI and API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _receiver(name: str, url: str | None) -> dict[str, Any]:
    receiver: dict[str, Any] = {"name": name}
    if url:
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True}]
    return receiver


def config(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The Alertmanager configuration for the receivers configured in ``env``."""
    warning_url = env.get("HXP_ALERT_WEBHOOK_URL") or None
    critical_url = env.get("HXP_ALERT_CRITICAL_WEBHOOK_URL") or warning_url
    return {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "model"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {
                    "receiver": "critical",
                    "matchers": ['severity="critical"'],
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                },
                {"receiver": "warning", "matchers": ['severity="warning"']},
            ],
        },
        "inhibit_rules": [
            # A model that is down does not also warn about its latency, errors or throughput.
            {
                "source_matchers": ['severity="critical"', 'model=~".+"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["model"],
            },
            # A store that is down explains the gateway's symptoms.
            {
                "source_matchers": ['alertname="PostgreSQLDown"'],
                "target_matchers": ['alertname="UsageLogBacklogGrowing"'],
            },
            {"source_matchers": ['alertname="RedisDown"'], "target_matchers": ['alertname="GatewayRedisUnavailable"']},
        ],
        "receivers": [
            _receiver("default", warning_url),
            _receiver("warning", warning_url),
            _receiver("critical", critical_url),
        ],
    }
