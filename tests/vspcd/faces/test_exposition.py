"""The hand-written Prometheus text format (vspcd/faces/exposition.py) against the reference
parser (prometheus-client's `text_string_to_metric_families`), fuzzed with hypothesis:
escaping of HELP text and label values, histogram invariants, value formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from vspc.vspcd.faces.exposition import Family, Kind, Sample, escape_label, format_value, render
from vspc.vspcd.faces.metrics import GOAHEAD_BUCKETS, Histogram

label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
# HELP text is the daemon's own (never a peer's); the reference parser strips
# surrounding whitespace from it, so generated texts carry none.
help_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).map(str.strip)


@given(help_texts, st.dictionaries(label_values, st.integers(0, 1 << 62), max_size=5))
def test_help_and_label_values_round_trip_through_the_reference_parser(
    help: str, counts: dict[str, int]
) -> None:
    family = Family.counter("vspcd_things", help, {(("reason", k),): n for k, n in counts.items()})
    [parsed] = text_string_to_metric_families(render([family]))
    assert parsed.name == "vspcd_things" and parsed.type == "counter"
    assert parsed.documentation == help
    got = {s.labels["reason"]: s.value for s in parsed.samples if s.name == "vspcd_things_total"}
    assert got == counts


@given(st.lists(st.floats(0, 20, allow_nan=False), max_size=60))
def test_histogram_invariants(observations: list[float]) -> None:
    histogram = Histogram(GOAHEAD_BUCKETS)
    for x in observations:
        histogram.observe(x)
    snap = histogram.cumulative()
    family = Family.histogram("vspcd_lat_seconds", "h", snap.buckets, snap.sum, snap.count)
    [parsed] = text_string_to_metric_families(render([family]))
    buckets = [(s.labels["le"], s.value) for s in parsed.samples if s.name.endswith("_bucket")]
    bounds = [math.inf if le == "+Inf" else float(le) for le, _ in buckets]
    counts = [v for _, v in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf
    assert counts == sorted(counts)  # cumulative: never decreasing
    assert counts[-1] == len(observations)
    for bound, count in zip(bounds, counts, strict=True):
        assert count == sum(1 for x in observations if x <= bound)
    by_name = {s.name: s.value for s in parsed.samples}
    assert by_name["vspcd_lat_seconds_count"] == len(observations)
    assert by_name["vspcd_lat_seconds_sum"] == pytest.approx(sum(observations))


@given(st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats()))
def test_values_parse_back_exactly(number: float) -> None:
    family = Family.gauge("vspcd_g", "g", number)
    [parsed] = text_string_to_metric_families(render([family]))
    got = parsed.samples[0].value
    if isinstance(number, float) and math.isnan(number):
        assert math.isnan(got)
    else:
        assert got == number  # integers exactly, floats to the bit


def test_escaping_by_example() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    text = render([Family("vspcd_x", "line\\one\nline two", Kind.GAUGE, (Sample("", {}, 1),))])
    assert text == "# HELP vspcd_x line\\\\one\\nline two\n# TYPE vspcd_x gauge\nvspcd_x 1\n"
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf"


@pytest.mark.parametrize(
    "family",
    [
        Family.gauge("0bad", "h", 1),
        Family.gauge("bad-name", "h", 1),
        Family.gauge("ok", "h", {(("bad-label", "v"),): 1}),
        Family.gauge("ok", "h", {(("__reserved", "v"),): 1}),
    ],
)
def test_invalid_names_are_refused(family: Family) -> None:
    with pytest.raises(ValueError):
        render([family])


def test_a_family_appears_once() -> None:
    with pytest.raises(ValueError):
        render([Family.gauge("vspcd_a", "h", 1), Family.gauge("vspcd_a", "h", 2)])
