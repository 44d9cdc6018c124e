"""In-process benchmark of the console alert matcher (docs/benchmarks.md).

Feeds the `stream` scenario's text (bench/daemon_bench.py `LINE`, lines cut anywhere
by the chunk boundaries) through `AlertMatcher.feed`, in chunks of each `--sizes`
bytes, with the built-in rules and with the built-ins plus `CUSTOM_ALERTS`
(`custom20`), and reports MB/s of CPU time (`time.process_time`, so a loaded machine
slows it less than wall time).  With `--baseline FILE` (another version of
vspcd/history/alerts.py, e.g. `git show main:vspcd/history/alerts.py > /tmp/old.py`)
both are measured in turns, each repeat running one then the other.

Prints one JSON line.  Example:

    .venv/bin/python bench/alerts_bench.py --baseline /tmp/old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_bench import CUSTOM_ALERTS, LINE  # noqa: E402

from vspc.vspcd.history import alerts  # noqa: E402
from vspc.vspcd.hub.selectors import ConsoleRef  # noqa: E402

REF = ConsoleRef("bench", "bench", "0" * 32, "")


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("alerts_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rate(module: Any, mode: str, size: int, total: int) -> float:
    """MB/s of CPU time feeding `total` bytes in `size`-byte chunks."""
    custom = [module.AlertRule(f"custom{i}", r) for i, r in enumerate(CUSTOM_ALERTS)]
    rules = module.rules_in_force(custom if mode == "custom20" else [], True)
    matcher = module.AlertMatcher(rules, clock=lambda: 0.0)
    text = LINE * (8 * size // len(LINE))
    step = size - 7  # not a multiple of the line: every chunk cuts a line
    chunks = [text[i * step : i * step + size] for i in range(4)]
    count = max(1, total // size)
    began = time.process_time()
    for i in range(count):
        if matcher.feed(1, lambda: REF, chunks[i & 3]):
            raise RuntimeError("the bench text raised an alert")
    return count * size / (time.process_time() - began) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[65536, 262144])
    parser.add_argument("--mib", type=int, default=128, help="MiB fed per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="another alerts.py to measure in turns")
    args = parser.parse_args()
    versions: dict[str, Any] = {"current": alerts}
    if args.baseline:
        versions["baseline"] = load(args.baseline)
    results: dict[str, Any] = {}
    for size in args.sizes:
        for mode in ("builtin", "custom20"):
            runs: dict[str, list[float]] = {name: [] for name in versions}
            for _ in range(args.repeats):
                for name, module in versions.items():
                    runs[name].append(rate(module, mode, size, args.mib << 20))
            results[f"{mode}@{size}"] = {
                name: {"min": round(min(r)), "max": round(max(r))} for name, r in runs.items()
            }
    print(json.dumps({"mb_per_s_cpu": results}))


if __name__ == "__main__":
    main()
