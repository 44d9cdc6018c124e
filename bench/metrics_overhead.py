"""Micro-benchmark: what the metrics observer adds to a vMotion.

Runs bench/vmotion_micro.py's loop (one console migrating back and forth through the
real `VmLink` + `ProxySession` + `Hub`, in-memory transports) three ways per round:
the hub as it is, with one observer that does nothing, and with
`vspcd.metrics.Metrics.observe` subscribed as the daemon subscribes it.  Rounds
alternate so the VM's speed drift hits all alike; the best round of each counts.

    .venv/bin/python bench/metrics_overhead.py          # one JSON line
    .venv/bin/python bench/metrics_overhead.py --quick  # toy size

Every vMotion emits VMotionBegun, VMotionPeered, VMotionCompleted and VmDisconnected
(the source closing), so this is the observer's whole per-vMotion cost, including the
GOAHEAD latency check.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import vmotion_micro  # noqa: E402  (the sibling script, not a package)

from vspc.vspcd.faces.metrics import Metrics, Sources  # noqa: E402
from vspc.vspcd.hub.hub import Hub  # noqa: E402


class _Never:
    def cancel(self) -> None:
        pass


class ObservedHub(Hub):
    """The hub with one observer that does nothing: what any observer costs (the
    daemon always has several: admin, hooks), so `metrics - observed` is the
    registry's own work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscribe(lambda event: None)


class MeteredHub(Hub):
    """The hub with the metrics observer subscribed, as vspcd/service/server.py does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = Metrics(
            self,
            Sources(fds_in_use=lambda: 0, fd_limit=lambda: 0),
            clock=time.monotonic,
            call_later=lambda delay, callback: _Never(),
        )
        self.subscribe(self.metrics.observe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 vMotions, one round")
    args = parser.parse_args(argv)
    n, rounds = (200, 1) if args.quick else (5000, 7)
    variants: dict[str, type[Hub]] = {"plain": Hub, "noop": ObservedHub, "metrics": MeteredHub}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, hub_class in variants.items():
            vmotion_micro.Hub = hub_class  # type: ignore[misc]
            times[name].append(vmotion_micro.run(n))
    vmotion_micro.Hub = Hub  # type: ignore[misc]
    us = {name: min(t) / n * 1e6 for name, t in times.items()}
    print(json.dumps({
        "benchmark": "metrics_overhead",
        "us_per_vmotion_plain": round(us["plain"], 2),
        "us_per_vmotion_noop_observer": round(us["noop"], 2),
        "us_per_vmotion_metrics": round(us["metrics"], 2),
        "metrics_us": round(us["metrics"] - us["noop"], 2),
        "overhead_pct": round((us["metrics"] - us["plain"]) / us["plain"] * 100, 1),
        "vmotions": n,
        "rounds": rounds,
        "calibration_ms": round(vmotion_micro.calibrate(), 1),
        "python": platform.python_version(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
