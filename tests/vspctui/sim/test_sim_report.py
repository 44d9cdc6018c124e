"""vspc-sim's report: merging workers' figures, text rendering, the progress line."""

from __future__ import annotations

import io
import json

from vspc.vspctui.sim.report import Progress, Stats, merge, percentiles, render, summary


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_merge_adds_counts_and_pools_samples() -> None:
    one, two = Stats(), Stats()
    one.count("vmotions_ok", 2)
    one.sample("begin_answer", 0.001)
    two.count("vmotions_ok")
    two.sample("begin_answer", 0.003)
    two.fail("vm\x1b[2J: lost")
    # The raw form travels between processes as JSON.
    total = merge(json.loads(json.dumps(s.to_raw())) for s in (one, two))
    assert total.counts["vmotions_ok"] == 3 and total.counts["failures"] == 1
    assert percentiles(total.samples["begin_answer"]) == {
        "n": 2,
        "p50": 3.0,
        "p90": 3.0,
        "p99": 3.0,
        "max": 3.0,
    }
    report = summary(total, vms=2)
    assert json.loads(render(report, as_json=True))["failures"] == ["vm\x1b[2J: lost"]
    text = render(report, as_json=False)
    assert "vms: 2" in text and "vmotions_ok" in text and "begin_answer" in text
    assert "\x1b" not in text  # a VM name cannot drive the operator's terminal


def test_progress_only_on_a_terminal() -> None:
    stats = Stats()
    stats.count("connected", 5)
    plain = io.StringIO()
    Progress(plain).show(stats, "running")
    assert plain.getvalue() == ""
    tty = Tty()
    progress = Progress(tty)
    progress.show(stats, "running")
    progress.done()
    assert tty.getvalue().startswith("\rrunning: vms 5") and tty.getvalue().endswith("\r")
