"""Prometheus text exposition format 0.0.4, written by hand.

Boundary: sans-IO: families in, text out; no sockets, no clock, no hub.  Spec: the
Prometheus "Exposition formats" document, text format version 0.0.4 (what
`Content-Type: text/plain; version=0.0.4` announces and every Prometheus scrapes).

Why not `prometheus-client`: vspcd is stdlib-only (pyproject.toml has no runtime
dependency, so a package manager installs it beside any Python 3.11), and the
format is small: `# HELP` and `# TYPE` lines, then one `name{labels} value` line per
sample.  The tests parse our output with prometheus-client's own parser
(`text_string_to_metric_families`), so the hand-written side is checked against the
reference implementation without shipping it.

What the writer guarantees (tests/vspcd/faces/test_exposition.py checks each with
hypothesis): metric and label names match the format's grammar (else ValueError, a
bug in the caller, never peer data); HELP text escapes backslash and newline; label
values escape backslash, double quote and newline; counters are named `*_total`, on
their HELP and TYPE lines too, as 0.0.4 has it; a histogram has cumulative
`_bucket{le="..."}` samples ending with `le="+Inf"` equal to `_count`, plus `_sum`;
integers print exactly, floats as the shortest text that reads back to the same
float, and `+Inf`, `-Inf`, `NaN` by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["CONTENT_TYPE", "Family", "Kind", "Sample", "escape_help", "escape_label", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class Kind(StrEnum):
    """A family's `# TYPE`."""

    COUNTER = "counter"  # only goes up (`Family.counter` names it `*_total`)
    GAUGE = "gauge"  # goes up and down
    HISTOGRAM = "histogram"  # cumulative `_bucket` samples, `_sum` and `_count`


@dataclass(frozen=True, slots=True)
class Sample:
    """One line: `suffix` is appended to the family name (`_total`, `_bucket`, ...)."""

    suffix: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: HELP, TYPE and its samples."""

    name: str
    help: str
    kind: Kind
    samples: Sequence[Sample] = field(default_factory=tuple)

    @classmethod
    def counter(
        cls, name: str, help: str, values: Mapping[tuple[tuple[str, str], ...], int] | int
    ) -> Family:
        """A counter; `name` without `_total`.  In format 0.0.4 the suffix is part of
        the metric's name, so HELP and TYPE name `name_total` too (OpenMetrics-aware
        parsers strip it back to the family name)."""
        return cls(f"{name}_total", help, Kind.COUNTER, _samples("", values))

    @classmethod
    def gauge(
        cls, name: str, help: str, values: Mapping[tuple[tuple[str, str], ...], float] | float
    ) -> Family:
        return cls(name, help, Kind.GAUGE, _samples("", values))

    @classmethod
    def histogram(
        cls,
        name: str,
        help: str,
        buckets: Iterable[tuple[float, int]],
        total: float,
        count: int,
    ) -> Family:
        """`buckets`: (upper bound, cumulative count) in increasing bound order,
        without +Inf (that bucket is `count`)."""
        samples = [Sample("_bucket", {"le": format_value(le)}, n) for le, n in buckets]
        samples.append(Sample("_bucket", {"le": "+Inf"}, count))
        samples += [Sample("_sum", {}, total), Sample("_count", {}, count)]
        return cls(name, help, Kind.HISTOGRAM, tuple(samples))


def _samples(
    suffix: str, values: Mapping[tuple[tuple[str, str], ...], float] | float
) -> tuple[Sample, ...]:
    if isinstance(values, Mapping):
        return tuple(Sample(suffix, dict(labels), v) for labels, v in values.items())
    return (Sample(suffix, {}, values),)


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed escaped (0.0.4)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    """A label value: backslash, double quote and line feed escaped (0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers exactly; floats as the shortest repr; +Inf/-Inf/NaN by name."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _line(name: str, labels: Mapping[str, str], value: float) -> str:
    if labels:
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {format_value(value)}\n"
    return f"{name} {format_value(value)}\n"


def render(families: Iterable[Family]) -> str:
    """The whole exposition, every family once, in the order given."""
    out: list[str] = []
    seen: set[str] = set()
    for family in families:
        if not _METRIC_NAME.match(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        if family.name in seen:
            raise ValueError(f"metric family {family.name!r} given twice")
        seen.add(family.name)
        out.append(f"# HELP {family.name} {escape_help(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.kind.value}\n")
        for sample in family.samples:
            out.append(_line(family.name + sample.suffix, sample.labels, sample.value))
    return "".join(out)
