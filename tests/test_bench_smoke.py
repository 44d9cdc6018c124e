"""bench/*.py --quick: every scenario runs and prints the JSON it documents.

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
STORM = BENCH.with_name("storm_bench.py")
SCENARIOS = ["connect", "connect_ports", "scale", "vmotion", "stream", "fanout", "keystroke"]
NUMBER = (int, float)


def run_quick(script: Path = BENCH, limit: int | None = 40) -> list[dict[str, Any]]:
    bound = [] if limit is None else ["--limit", str(limit)]
    done = subprocess.run(
        [sys.executable, str(script), "--quick", *bound],
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


def test_storm_quick_run_prints_its_figures() -> None:
    lines = run_quick(STORM, limit=60)
    assert len(lines) == 1
    line = lines[0]
    assert "error" not in line, line
    assert line["scenario"] == "storm" and line["quick"] is True
    assert isinstance(line["calibration_ms"], NUMBER)
    assert isinstance(line["ok"], bool) and isinstance(line["met"], bool)
    params = line["params"]
    assert line["vms_connected"] == line["vms"] == params["vms"]
    assert line["typing_clients"] == params["typing"]
    percentile_shape(line["begin_goahead_ms"])
    percentile_shape(line["vmotion_ms"])
    assert line["begin_goahead_ms"]["n"] == params["migrating"]
    for key in ("drain_s", "vmotions_failed", "bytes_lost", "bytes_repeated", "budget_ms"):
        assert isinstance(line[key], NUMBER)
    assert set(line["daemon"]) >= {"cpu_s", "cpu_cores", "rss_kib_before", "rss_kib_peak"}
    assert set(line["generator"]) == {
        "worker_cpu_cores",
        "cpu_us_per_vmotion",
        "ceiling_vmotions_per_s_per_core",
    }


def test_quick_micro_benchmarks_print_their_figures() -> None:
    decode = run_quick(BENCH.with_name("telnet_decode.py"), limit=None)
    assert len(decode) == 1
    for key in ("iac_free", "iac_1pct", "session_iac_1pct"):
        assert isinstance(decode[0][key]["mb_per_s"], NUMBER)
    micro = run_quick(BENCH.with_name("vmotion_micro.py"), limit=None)
    assert len(micro) == 1 and micro[0]["vmotions"] == 200
    assert isinstance(micro[0]["us_per_vmotion"], NUMBER)
    assert isinstance(micro[0]["calibration_ms"], NUMBER)


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


def test_metrics_overhead_quick_prints_all_three_variants() -> None:
    line = _quick_json("metrics_overhead.py")
    assert line["benchmark"] == "metrics_overhead" and line["vmotions"] == 200
    for key in ("us_per_vmotion_plain", "us_per_vmotion_noop_observer", "us_per_vmotion_metrics"):
        assert isinstance(line[key], NUMBER) and line[key] > 0
