"""Before and after: the figures of this run beside those of an earlier LATEST.json, subject by
subject, for a change to the hot path to show what it bought. Runs on different days share no
machine load, so the ratios to the floors measured in each run are shown too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.report import BenchReport, Figures
from bench.targets import RELAY

# (label, Figures field, digits): what is compared.
COMPARED = (
    ("p50 ms @1", "latency_p50", 2),
    ("TTFT p50 ms", "ttft_p50", 2),
    ("RPS @c", "rps", 0),
    ("CPU ms/req @c", "cpu_ms_per_request", 2),
    ("CPU µs/token", "cpu_us_per_token", 1),
)


def load_figures(path: str | Path) -> tuple[dict[str, Figures], dict[str, Any]]:
    """The per-subject figures and the environment of an earlier run's JSON."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    fields = set(Figures.__dataclass_fields__)
    figures = {
        key: Figures(**{k: v for k, v in values.items() if k in fields})
        for key, values in data.get("figures", {}).items()
    }
    return figures, data.get("environment", {})


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return "-"
    return f"{after / before:.2f}x"


def to_markdown(
    before: Mapping[str, Figures],
    before_env: Mapping[str, Any],
    report: BenchReport,
) -> str:
    after = report.figures()
    names = {s.key: s.name for s in report.subjects}
    lines = [
        f"## Against commit {before_env.get('commit', '?')} ({before_env.get('date', '?')})",
        "",
        "| subject | figure | before | after | after/before |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            continue
        for label, field, digits in COMPARED:
            a, b = getattr(old, field), getattr(new, field)
            if a is None and b is None:
                continue
            lines.append(
                f"| {names[key]} | {label} | {_f(a, digits)} | {_f(b, digits)} | {_change(a, b)} |"
            )
    old_relay, new_relay = before.get(RELAY), after.get(RELAY)
    if old_relay and new_relay:
        lines += [
            "",
            "The minimal relay's own change between the runs "
            f"(CPU/token {_change(old_relay.cpu_us_per_token, new_relay.cpu_us_per_token)}, "
            f"p50 {_change(old_relay.latency_p50, new_relay.latency_p50)}) is the machine's, "
            "not the code's.",
        ]
    return "\n".join(lines) + "\n"
