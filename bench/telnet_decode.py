"""Micro-benchmark: TelnetCodec.receive_data throughput (docs/benchmarks.md).

Feeds pre-built wire chunks to one codec and prints one JSON object with MB/s
(10**6 wire bytes per second, best of `--repeat` runs):

- `iac_free`: console output without any 0xff, the common case.  The codec's DATA
  state `find()`s the next IAC, so such a chunk costs one search and one event.
  Target: >= 200 MB/s.
- `iac_1pct`: about 1% of the data bytes are 0xff, each doubled on the wire
  (docs/protocol.md §1 rule 5), so the tokenizer leaves the fast path at every one.
- `session_iac_1pct`: the same wire through ProxySession, which walks the codec's
  `iter_events()` so its own replies keep the request order (common/session.py).

Not a test: timings depend on the machine.  Run `python bench/telnet_decode.py`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence

from vspc.common.session import ProxySession
from vspc.common.telnet import TelnetCodec, escape

TARGET_MB_S = 200.0


def iac_free_chunk(size: int) -> bytes:
    """`size` bytes of every value except 0xff."""
    pattern = bytes(range(255))
    return (pattern * (size // len(pattern) + 1))[:size]


def iac_chunks(size: int, count: int, share: float, seed: int = 2) -> list[bytes]:
    """`count` wire chunks of about `size` bytes, with `share` of the data bytes 0xff."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        data = bytearray(rng.randrange(255) for _ in range(size))
        for i in rng.sample(range(size), int(size * share)):
            data[i] = 0xFF
        # Escaping makes the chunk ~1% longer; throughput counts wire bytes.
        chunks.append(escape(bytes(data))[:size])
    return chunks


def measure(feed: Callable[[bytes], object], chunks: Sequence[bytes], rounds: int) -> float:
    """Seconds to feed `chunks` `rounds` times over."""
    start = time.perf_counter()
    for _ in range(rounds):
        for chunk in chunks:
            feed(chunk)
    return time.perf_counter() - start


def best_mb_s(
    make_feed: Callable[[], Callable[[bytes], object]],
    chunks: Sequence[bytes],
    total: int,
    repeat: int,
) -> float:
    """Best MB/s over `repeat` runs of `total` wire bytes, a fresh codec per run."""
    per_round = sum(len(c) for c in chunks)
    rounds = max(1, total // per_round)
    best = min(measure(make_feed(), chunks, rounds) for _ in range(repeat))
    return rounds * per_round / best / 1e6


def session_feed() -> Callable[[bytes], object]:
    session = ProxySession()
    return session.receive_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-kib", type=int, default=64, help="chunk size (KiB)")
    parser.add_argument("--total-mib", type=int, default=256, help="IAC-free bytes per run")
    parser.add_argument("--iac-total-mib", type=int, default=16, help="1%%-IAC bytes per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    parser.add_argument("--quick", action="store_true", help="1 MiB, one run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.total_mib = args.iac_total_mib = args.repeat = 1

    size = args.chunk_kib * 1024
    iac = iac_chunks(size, 4, 0.01)
    free = best_mb_s(
        lambda: TelnetCodec().receive_data,
        [iac_free_chunk(size)],
        args.total_mib << 20,
        args.repeat,
    )
    result = {
        "benchmark": "TelnetCodec.receive_data",
        "unit": "MB/s (10**6 wire bytes per second, best run)",
        "chunk_size": size,
        "iac_free": {"mb_per_s": round(free, 1), "mib_per_run": args.total_mib},
        "iac_1pct": {
            "mb_per_s": round(
                best_mb_s(
                    lambda: TelnetCodec().receive_data, iac, args.iac_total_mib << 20, args.repeat
                ),
                1,
            ),
            "mib_per_run": args.iac_total_mib,
        },
        "session_iac_1pct": {
            "mb_per_s": round(
                best_mb_s(session_feed, iac, args.iac_total_mib << 20, args.repeat), 1
            ),
            "mib_per_run": args.iac_total_mib,
        },
        "target_iac_free_mb_per_s": TARGET_MB_S,
        "meets_target": free >= TARGET_MB_S,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
