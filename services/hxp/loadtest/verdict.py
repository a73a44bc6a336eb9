"""The load-test verdict: exact per-model statistics of a run checked against the model's targets.

The samples are recorded in-process from every request Locust reports (not
from its periodic CSV, which misses the last second, nor its rounded
percentiles). Latency statistics cover successful requests; failures count
against the failure-ratio threshold; achieved req/s is successful requests over
the run's wall-clock window.

The targets are the catalogue's (absolute: the gpu profile), or, under a compared profile
(:data:`hxp.loadtest.plan.COMPARED_PROFILES`: cpu), the engine reached directly by the same plan in
the same run: the gateway's avg and p95 at most LATENCY_RATIO times the direct ones plus
LATENCY_SLACK_MS, its req/s at least THROUGHPUT_RATIO times the direct one, less one request per user over
the run (each closed-loop user's last request straddles the run's end: with requests of seconds, as CPU
engines answer, a short run's counts differ by one per user with nothing slower). A slower CPU slows both
paths alike; a slow gateway fails.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

from hxp.core.catalogue import Model, Targets
from hxp.loadtest.plan import compared

DEFAULT_MAX_FAILURE_RATIO = 0.01
TOP_ERRORS = 3
LATENCY_RATIO = 1.15  # compared profiles: gateway avg and p95 at most this times the direct ones...
LATENCY_SLACK_MS = 5.0  # ...plus this
THROUGHPUT_RATIO = 0.95  # and req/s at least this times the direct one
DIRECT_SUFFIX = " (direct)"


def direct_name(model: str) -> str:
    """The name the requests sent to a model's engine directly are recorded and reported under."""
    return model + DIRECT_SUFFIX


@dataclass(frozen=True)
class Sample:
    """One finished request."""

    ok: bool
    latency_ms: float
    ttft_ms: float | None = None  # time to the first content token, streamed requests only
    error: str | None = None  # why it failed


@dataclass
class Recorder:
    """The samples of one run, per model, and the run's wall-clock window."""

    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    started: float | None = None
    stopped: float | None = None

    def start(self, now: float | None = None) -> None:
        self.samples.clear()
        self.started, self.stopped = (time.time() if now is None else now), None

    def stop(self, now: float | None = None) -> None:
        self.stopped = time.time() if now is None else now

    def record(self, model: str, sample: Sample) -> None:
        self.samples[model].append(sample)

    @property
    def window_s(self) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.stopped or time.time()) - self.started)


def percentile(values: list[float], q: float) -> float | None:
    """The exact nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class ModelResult:
    """One model's statistics for a run and the checks it failed."""

    model: str
    users: int  # simulated users that sent this model's requests
    requests: int
    failures: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    streamed: int
    ttft_avg_ms: float | None
    ttft_p95_ms: float | None
    rps: float
    target_avg_ms: float
    target_p95_ms: float
    target_rps: float
    problems: tuple[str, ...]
    errors: tuple[tuple[str, int], ...] = ()  # the most frequent failure reasons and their counts
    direct_avg_ms: float | None = None  # compared profiles: the engine reached directly (the targets' base)
    direct_p95_ms: float | None = None
    direct_rps: float | None = None

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Stats:
    good: list[float]
    ttft: list[float]
    failures: int
    avg: float | None
    p95: float | None
    rps: float

    @classmethod
    def of(cls, samples: list[Sample], window_s: float) -> _Stats:
        good = [s.latency_ms for s in samples if s.ok]
        return cls(
            good,
            [s.ttft_ms for s in samples if s.ok and s.ttft_ms is not None],
            len(samples) - len(good),
            fmean(good) if good else None,
            percentile(good, 95),
            len(good) / window_s if window_s > 0 else 0.0,
        )


def evaluate(
    model: str,
    samples: list[Sample],
    window_s: float,
    targets: Targets,
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO,
    users: int = 0,
    direct: list[Sample] | None = None,
) -> ModelResult:
    """Check one model's samples against its targets, or, given the ``direct`` samples of its engine reached
    directly in the same run, against those."""
    stats = _Stats.of(samples, window_s)
    failure_ratio = stats.failures / len(samples) if samples else 0.0
    target_avg, target_p95, target_rps = targets.avg_latency_ms, targets.p95_latency_ms, targets.throughput_rps
    problems = []
    base = None if direct is None else _Stats.of(direct, window_s)
    if base is not None:
        if base.avg is None or base.p95 is None:
            problems.append("no successful request to the engine directly (HXP_BACKENDS names the engines)")
        else:
            target_avg = round(LATENCY_RATIO * base.avg + LATENCY_SLACK_MS, 1)
            target_p95 = round(LATENCY_RATIO * base.p95 + LATENCY_SLACK_MS, 1)
            target_rps = round(max(0.0, THROUGHPUT_RATIO * base.rps - users / window_s), 3)
    if stats.avg is None:
        problems.append("no successful request")
    if failure_ratio > max_failure_ratio:
        problems.append(f"failure ratio {failure_ratio:.1%} > {max_failure_ratio:.1%}")
    if stats.avg is not None and stats.avg > target_avg:
        problems.append(f"avg {stats.avg:.0f} ms > {target_avg:g} ms")
    if stats.p95 is not None and stats.p95 > target_p95:
        problems.append(f"p95 {stats.p95:.0f} ms > {target_p95:g} ms")
    if stats.rps < target_rps:
        problems.append(f"throughput {stats.rps:.2f} req/s < {target_rps:g} req/s")
    errors = Counter(s.error or "unknown" for s in samples if not s.ok).most_common(TOP_ERRORS)
    return ModelResult(
        model=model,
        users=users,
        requests=len(samples),
        failures=stats.failures,
        avg_ms=stats.avg,
        p50_ms=percentile(stats.good, 50),
        p95_ms=stats.p95,
        streamed=len(stats.ttft),
        ttft_avg_ms=fmean(stats.ttft) if stats.ttft else None,
        ttft_p95_ms=percentile(stats.ttft, 95),
        rps=stats.rps,
        target_avg_ms=target_avg,
        target_p95_ms=target_p95,
        target_rps=target_rps,
        problems=tuple(problems),
        errors=tuple(errors),
        direct_avg_ms=None if base is None else base.avg,
        direct_p95_ms=None if base is None else base.p95,
        direct_rps=None if base is None else base.rps,
    )


@dataclass(frozen=True)
class Verdict:
    """The run's result for every model under test."""

    profile: str
    started_at: str
    duration_s: float
    users: int
    max_failure_ratio: float
    results: tuple[ModelResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed_models(self) -> list[str]:
        return [r.model for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for result, row in zip(self.results, data["results"]):
            row["passed"] = result.passed
        return data

    def table(self) -> str:
        """The verdict as a fixed-width text table, with the reasons of every failure below it."""
        compared = any(r.direct_rps is not None for r in self.results)
        head = [
            "model",
            "users",
            "reqs",
            "fail",
            "avg ms",
            "p50 ms",
            "p95 ms",
            "TTFT avg/p95 ms",
            "req/s",
            "target avg/p95 ms @ req/s",
            *(["direct avg/p95 ms @ req/s"] if compared else []),
            "verdict",
        ]
        rows = [
            [
                r.model,
                str(r.users),
                str(r.requests),
                str(r.failures),
                _ms(r.avg_ms),
                _ms(r.p50_ms),
                _ms(r.p95_ms),
                f"{_ms(r.ttft_avg_ms)}/{_ms(r.ttft_p95_ms)}" if r.streamed else "-",
                f"{r.rps:.2f}",
                f"{r.target_avg_ms:g}/{r.target_p95_ms:g} @ {r.target_rps:g}",
                *([f"{_ms(r.direct_avg_ms)}/{_ms(r.direct_p95_ms)} @ {r.direct_rps or 0:.2f}"] if compared else []),
                "PASS" if r.passed else "FAIL",
            ]
            for r in self.results
        ]
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = [
            f"Load-test verdict: profile {self.profile}, {self.duration_s:.1f} s, {self.users} users, "
            f"max failure ratio {self.max_failure_ratio:.1%}"
        ]
        if compared:
            lines.append(
                f"targets: the engine reached directly in the same run, avg and p95 x {LATENCY_RATIO:g} "
                f"+ {LATENCY_SLACK_MS:g} ms, req/s x {THROUGHPUT_RATIO:g} less one request per user"
            )
        lines += [
            "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in [head, *rows]
        ]
        for r in self.results:
            if not r.passed:
                lines.append(f"FAIL {r.model}: {'; '.join(r.problems)}")
            lines += [f"  {count} x {error}" for error, count in r.errors]
        lines.append("RESULT: PASS" if self.passed else f"RESULT: FAIL ({', '.join(self.failed_models)})")
        return "\n".join(lines)

    def save(self, folder: Path) -> list[Path]:
        """Write verdict.json and verdict.csv into ``folder``; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = folder / "verdict.json", folder / "verdict.csv"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        rows = self.to_dict()["results"]
        with csv_path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["model"])
            writer.writeheader()
            writer.writerows(
                {
                    **row,
                    "problems": "; ".join(row["problems"]),
                    "errors": "; ".join(f"{count} x {error}" for error, count in row["errors"]),
                }
                for row in rows
            )
        return [json_path, csv_path]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def judge(
    recorder: Recorder,
    models: list[Model],
    *,
    profile: str,
    users: dict[str, int],
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO,
) -> Verdict:
    """The verdict of a recorded run for ``models`` (those under test, with their ``users``) against their targets
    (on a compared profile, against their engines reached directly)."""
    window = recorder.window_s
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(recorder.started or time.time()))
    results = tuple(
        evaluate(
            m.name,
            recorder.samples.get(m.name, []),
            window,
            m.targets,
            max_failure_ratio,
            users.get(m.name, 0),
            recorder.samples.get(direct_name(m.name), []) if compared(profile) else None,
        )
        for m in models
    )
    return Verdict(profile, started, round(window, 3), sum(users.values()), max_failure_ratio, results)
