"""bench/cluster_bench.py --quick: both scenarios run and print the JSON they document
(figures are never asserted; docs/cluster.md has them with the method)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.vspcd.cluster.cluster_kit import needs_redis

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cluster_bench.py"


@needs_redis
def test_quick_run_prints_one_json_line_per_scenario() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["scenario"] for line in lines] == ["vmotion", "reuse_port"]
    vmotion, reuse = lines
    for mode in ("same_node", "cross_node"):
        assert set(vmotion[mode]) == {"vmotions_per_s", "begin_to_goahead", "peer_to_peer_ok"}
        assert set(vmotion[mode]["peer_to_peer_ok"]) == {"p50_ms", "p90_ms", "p99_ms", "max_ms"}
    assert [run["nodes"] for run in reuse["runs"]] == [1, 2]
    for run in reuse["runs"]:
        assert run["listed"] == reuse["vms"]
        assert sum(run["spread"].values()) == reuse["vms"]
