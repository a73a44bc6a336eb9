"""One result per check, for `hxp validate` and `hxp doctor`: PASS, FAIL, WARN or SKIP, why, and the fix.

Printed one line each (the fix indented below a failure or a warning), or as JSON for scripts;
the exit status is 1 when any check failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""


def passed(check: str, detail: str) -> Finding:
    return Finding(check, PASS, detail)


def failed(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, FAIL, detail, fix)


def warned(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, WARN, detail, fix)


def skipped(check: str, detail: str) -> Finding:
    return Finding(check, SKIP, detail)


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0


def summary(findings: list[Finding]) -> dict[str, int]:
    return {status.lower(): sum(f.status == status for f in findings) for status in (PASS, FAIL, WARN, SKIP)}


def to_json(findings: list[Finding], **extra: Any) -> str:
    return json.dumps(
        {
            "ok": exit_code(findings) == 0,
            **extra,
            "summary": summary(findings),
            "checks": [asdict(f) for f in findings],
        },
        indent=2,
    )


def render(title: str, findings: list[Finding]) -> str:
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.status}  {f.check.ljust(width)}  {f.detail}")
        if f.fix and f.status in (FAIL, WARN):
            lines.append(f"{' ' * 6}{' ' * width}  fix: {f.fix}")
    counts = summary(findings)
    verdict = "FAILED" if counts["fail"] else "ok"
    lines.append(
        f"{title}: {verdict} ({counts['pass']} passed, {counts['fail']} failed, {counts['warn']} warnings, "
        f"{counts['skip']} skipped)"
    )
    return "\n".join(lines)


def emit(title: str, findings: list[Finding], as_json: bool, **extra: Any) -> int:
    """Print the findings (text or JSON) and return the exit status."""
    print(to_json(findings, **extra) if as_json else render(title, findings), flush=True)
    return exit_code(findings)
