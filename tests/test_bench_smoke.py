"""bench/daemon_bench.py --quick: every scenario runs and prints the JSON it documents.

A smoke test only: toy sizes, and no figure is compared with a goal (performance is
measured by the benchmark itself, never asserted here; docs/benchmarks.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "daemon_bench.py"
SCENARIOS = ["connect", "connect_ports", "scale", "vmotion", "stream", "fanout", "keystroke"]
NUMBER = (int, float)


def run_quick() -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--limit", "40"],
        capture_output=True,
        timeout=90,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    assert lines, done.stderr.decode()[-2000:]
    return lines


def percentile_shape(value: Any) -> None:
    assert set(value) == {"n", "p50", "p90", "p99", "max"}
    assert all(isinstance(value[k], NUMBER) for k in value)


def test_quick_run_prints_one_json_object_per_scenario_then_a_summary() -> None:
    lines = run_quick()
    assert [line["scenario"] for line in lines] == [*SCENARIOS, "summary"]
    by_name = {line["scenario"]: line for line in lines}
    for name in SCENARIOS:
        line = by_name[name]
        assert "error" not in line, line
        assert line["quick"] is True
        assert isinstance(line["params"], dict)
        assert isinstance(line["calibration_ms"], NUMBER)
        assert isinstance(line["ok"], bool)
        if name != "fanout":  # fan-out has no goal of its own
            assert isinstance(line["met"], bool) and isinstance(line["goal"], dict)
    for name in ("connect", "connect_ports", "scale"):
        line = by_name[name]
        for key in ("vms_per_s", "rss_kib_per_vm", "daemon_cpu_us_per_vm"):
            assert isinstance(line[key], NUMBER)
        percentile_shape(line["identify_ms"])
        assert set(line["cpu_cores"]) == {"daemon", "daemon_kernel", "generator", "other"}
    assert isinstance(by_name["vmotion"]["vmotions_per_s"], NUMBER)
    percentile_shape(by_name["vmotion"]["vmotion_ms"])
    runs = by_name["stream"]["runs"]
    assert [run["mib"] for run in runs] == by_name["stream"]["params"]["sizes_mib"]
    assert all(isinstance(run["mb_per_s"], NUMBER) for run in runs)
    assert isinstance(by_name["fanout"]["aggregate_mb_per_s"], NUMBER)
    for phase in ("idle", "chatter"):
        for direction in ("client_to_vm_ms", "vm_to_client_ms", "round_trip_ms"):
            percentile_shape(by_name["keystroke"][phase][direction])
    summary = by_name["summary"]
    assert set(summary["met"]) == set(SCENARIOS) == set(summary["ok"])
    assert isinstance(summary["summary"], dict) and isinstance(summary["goals"], dict)


def _quick_json(script: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / script), "--quick"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_hostile_bench_quick_prints_its_rounds() -> None:
    line = _quick_json("hostile_bench.py")
    assert line["scenario"] == "hostile_rounds"
    assert len(line["results"]) == line["rounds"]
    for result in line["results"]:
        assert isinstance(result["rss_kib_after"], int)
        assert isinstance(result["fresh_vm_identify_ms"], NUMBER)
        assert result["opened"] + result["connect_failed"] == line["per_round"]
    assert isinstance(line["rss_max_over_first"], NUMBER)


def test_port_bind_bench_quick_prints_both_binders() -> None:
    line = _quick_json("port_bind_bench.py")
    assert line["scenario"] == "port_bind_crowded"
    for name in ("remembered", "retry_every_bind"):
        assert line[name]["consoles"] > 0
        assert isinstance(line[name]["binds_per_s"], NUMBER)
