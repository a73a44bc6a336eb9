"""Locust load test of every catalogue model through the gateway, with a verdict against the targets.

    locust -f loadtests/locustfile.py --headless -u 12 -r 12 -t 60s --stop-timeout 60

User classes come from the catalogue under HXP_PROFILE (HXP_LOADTEST_MODELS, a
comma-separated list, narrows them); the traffic from loadtests/traffic.yaml; under a compared
profile (cpu) as many users again send the same requests to each model's engine directly
(HXP_BACKENDS, else where `make run` starts them), the base of that profile's verdict;
the gateway from --host or GATEWAY_URL; the key from HXP_LOADTEST_KEY, else one
is created with the master key (HXP_MASTER_KEY, else the native stack's
.state/master.key) and revoked at the end; without a usable key Locust stops
before it sends a request (hxp.loadtest.keys). When a run stops, the
per-model verdict (hxp.loadtest.verdict) is printed and saved with Locust's HTML
report under loadtests/results/<timestamp>/; the process exits 1 when any model
missed a target.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment
from locust.runners import LocalRunner

from hxp.core import catalogue, traffic
from hxp.core.paths import PROJECT_ROOT
from hxp.loadtest import keys
from hxp.loadtest.plan import engine_urls, models_under_test
from hxp.loadtest.users import user_classes
from hxp.loadtest.verdict import DEFAULT_MAX_FAILURE_RATIO, Recorder, Sample, Verdict, judge

CATALOGUE = catalogue.load()
try:
    MODELS = models_under_test(CATALOGUE)
except catalogue.CatalogueError as err:
    raise SystemExit(str(err)) from None
USER_CLASSES = user_classes(
    MODELS,
    traffic.load(),
    host=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"),
    engines=engine_urls(CATALOGUE, MODELS),
)
globals().update({cls.__name__: cls for cls in USER_CLASSES})

recorder = Recorder()


@dataclass
class Run:
    """What the event handlers share about the current run."""

    env: Environment | None = None
    headless: bool = False
    results: Path = PROJECT_ROOT / "loadtests" / "results"
    host: str = ""
    key: keys.TestKey | None = None
    users: dict[str, int] = field(default_factory=dict)  # per model, the most spawned at once
    verdict: Verdict | None = None


run = Run()


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        env_var="HXP_LOADTEST_MAX_FAILURE_RATIO",
        default=DEFAULT_MAX_FAILURE_RATIO,
        help="highest failed/total request ratio a model may have",
    )
    parser.add_argument(
        "--results-dir",
        env_var="HXP_LOADTEST_RESULTS",
        default="",
        help="where the verdict and report go (default loadtests/results/<timestamp>)",
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, LocalRunner):
        raise SystemExit("the load-test verdict needs the samples in one process: run Locust without workers")
    options = environment.parsed_options
    run.env = environment
    run.headless = bool(getattr(options, "headless", False))
    run.results = Path(
        getattr(options, "results_dir", "") or PROJECT_ROOT / "loadtests" / "results" / time.strftime("%Y%m%d-%H%M%S")
    )
    if options is not None and not options.html_file:
        options.html_file = str(run.results / "report.html")
    run.host = environment.host or USER_CLASSES[0].host
    run.key = keys.provision(run.host)
    for cls in USER_CLASSES:
        if not cls.engine_url:
            cls.api_key = run.key.secret


@events.request.add_listener
def _record(response_time: float, exception: Exception | None, context: dict[str, Any], **_: Any) -> None:
    if "model" in context:
        error = None if exception is None else str(exception)[:300]
        recorder.record(context["model"], Sample(exception is None, response_time, context.get("ttft_ms"), error))


@events.test_start.add_listener
def _start(**_: Any) -> None:
    recorder.start()
    run.users = {}


@events.spawning_complete.add_listener
def _spawned(**_: Any) -> None:
    counts = run.env.runner.user_classes_count
    for cls in USER_CLASSES:
        if not cls.engine_url:
            run.users[cls.model.name] = max(run.users.get(cls.model.name, 0), counts.get(cls.__name__, 0))


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    recorder.stop()
    verdict = judge(
        recorder,
        MODELS,
        profile=CATALOGUE.profile,
        users=run.users,
        max_failure_ratio=getattr(environment.parsed_options, "max_failure_ratio", DEFAULT_MAX_FAILURE_RATIO),
    )
    verdict.save(run.results)
    run.verdict = verdict
    if not run.headless:  # the web UI may start and stop several runs
        _print(verdict)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    if run.key is not None:
        keys.revoke(run.host, run.key)
    if run.verdict is not None and not run.verdict.passed:
        environment.process_exit_code = 1


@events.quit.add_listener
def _report(**_: Any) -> None:
    if run.headless and run.verdict is not None:
        _print(run.verdict)


def _print(verdict: Verdict) -> None:
    print(f"\n{verdict.table()}\nresults: {run.results}", flush=True)
