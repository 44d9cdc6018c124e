"""What vspc-sim saw: counters, latency percentiles, text or JSON, a progress line.

vspc-sim reports what it saw (bytes, latencies, failures, lost or repeated bytes)
as text or JSON, with a progress display on long runs (docs/vspc-sim.md).  `Stats` is filled by the
VMs and clients of one process; `merge()` adds up the Stats of several worker
processes (the storm benchmark), which is why it travels as a plain dict (JSON-able,
never pickled objects).  Percentiles are over raw samples in seconds, printed in ms.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from vspc.common.display import safe

__all__ = ["Progress", "Stats", "merge", "percentiles", "render_text"]

MAX_FAILURES = 20  # failure messages kept verbatim; the rest are only counted
SAMPLE_KINDS = ("identify", "begin_answer", "vmotion", "typed", "reconnect")


def percentiles(samples: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """n, p50/p90/p99 and max of `samples` (seconds) in ms; {} when there are none."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 3)

    return {
        "n": len(ordered),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1] * scale, 3),
    }


@dataclass
class Stats:
    """Counters and latency samples of one process's VMs and clients."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[float]] = field(
        default_factory=lambda: {kind: [] for kind in SAMPLE_KINDS}
    )
    failures: list[str] = field(default_factory=list)

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def sample(self, kind: str, seconds: float) -> None:
        self.samples[kind].append(seconds)

    def fail(self, what: str) -> None:
        self.counts["failures"] += 1
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(what)

    def to_raw(self) -> dict[str, Any]:
        """A JSON-able form that `merge()` can add up (samples kept raw)."""
        return {"counts": dict(self.counts), "samples": self.samples, "failures": self.failures}


def merge(raws: Iterable[dict[str, Any]]) -> Stats:
    """Add up `Stats.to_raw()` dicts (e.g. from several worker processes)."""
    total = Stats()
    for raw in raws:
        total.counts.update(raw["counts"])
        for kind, values in raw["samples"].items():
            total.samples.setdefault(kind, []).extend(values)
        total.failures.extend(raw["failures"][: MAX_FAILURES - len(total.failures)])
    return total


def summary(stats: Stats, **extra: Any) -> dict[str, Any]:
    """The report as JSON-able data: counts, latency percentiles (ms), failures."""
    return {
        **extra,
        "counts": dict(sorted(stats.counts.items())),
        "latency_ms": {kind: percentiles(values) for kind, values in stats.samples.items()},
        "failures": stats.failures,
    }


def render_text(report: dict[str, Any]) -> str:
    """A human-readable report; peer-controlled strings go through `safe()`."""
    lines = []
    for key, value in report.items():
        if key in ("counts", "latency_ms", "failures"):
            continue
        lines.append(f"{key}: {safe(str(value))}")
    counts = report.get("counts", {})
    if counts:
        lines.append("counts:")
        lines += [f"  {name:<28} {value:>12,}" for name, value in counts.items()]
    latency = report.get("latency_ms", {})
    rows = [(kind, p) for kind, p in latency.items() if p]
    if rows:
        lines.append(f"latency (ms)  {'n':>8} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
        for kind, p in rows:
            figures = " ".join(f"{p[q]:>9.3f}" for q in ("p50", "p90", "p99", "max"))
            lines.append(f"  {kind:<11} {p['n']:>8} {figures}")
    failures = report.get("failures", [])
    if failures:
        lines.append("failures (first few):")
        lines += [f"  {safe(message)}" for message in failures]
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any], *, as_json: bool) -> str:
    return json.dumps(report) + "\n" if as_json else render_text(report)


class Progress:
    """One self-overwriting status line on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._width = 0

    def show(self, stats: Stats, phase: str) -> None:
        if not self.enabled:
            return
        c = stats.counts
        text = (
            f"{phase}: vms {c['connected']:,}  reconnects {c['reconnects']:,}"
            f"  vmotions {c['vmotions_done']:,}"
            f"/{c['vmotions_started']:,}  failed {c['failures']:,}"
            f"  out {c['bytes_out']:,} B  in {c['bytes_in']:,} B"
            f"  lost {c['lost_bytes']:,}  repeated {c['repeated_bytes']:,}"
        )
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
