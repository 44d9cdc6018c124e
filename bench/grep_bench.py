"""Benchmark of the admin `grep` command over many consoles' logs (docs/benchmarks.md).

Generates, in a temporary directory, the console logs of `--consoles` consoles
(`--log-name name`, `--log-timestamps`), each `--mib-per-console` MiB split into a
current file, plain rotated generations and gzipped ones (`FILE.N`, `FILE.N.gz`; the
owners index `.vspcd-owners` names their consoles as vspcd does), starts a real
vspcd on them (`--log-dir`, no VM connected) and times admin `grep` requests over a
Unix socket: a pattern that matches a few lines (one per 64 consoles), one that
matches nothing, and one that matches so often the limit truncates it.  While each
search runs, a probe measures the daemon's event loop: the slowest reply to the
`hello` requests a second connection sends every 20 ms.

Prints one JSON line.  Example:

    .venv/bin/python bench/grep_bench.py --consoles 1000 --mib-per-console 10
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vspc.vspcd.history.lineformat import format_stamp  # noqa: E402
from vspc.vspctui.client import AdminAddress, AdminClient  # noqa: E402

LINE = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"


def generate(directory: Path, consoles: int, size: int, generations: int) -> int:
    """Write the logs; returns the bytes written (before compression)."""
    stamp = format_stamp(time.time() - 3600)
    stamped = stamp + LINE
    per_file = max(len(stamped), size // generations)
    block = stamped * (per_file // len(stamped))
    written = 0
    owners = []
    for index in range(consoles):
        key = f"{index:032x}"
        name = f"vmlog-vm{index:05d}"
        owners.append(json.dumps({"key": key, "file": name}) + "\n")
        needle = b""
        if index % 64 == 0:
            needle = stamp + b"[  12.3] Kernel panic - not syncing: bench console %d\r\n" % index
        for generation in range(1, generations + 1):
            data = block + (needle if generation == 1 else b"")
            written += len(data)
            if generation == generations:
                (directory / name).write_bytes(data)
            elif generation <= generations // 2:
                with gzip.open(directory / f"{name}.{generation}.gz", "wb", compresslevel=1) as f:
                    f.write(data)
            else:
                (directory / f"{name}.{generation}").write_bytes(data)
    (directory / ".vspcd-owners").write_text("".join(owners))
    return written


async def probe(address: AdminAddress, stop: asyncio.Event) -> float:
    client = await AdminClient.connect(address)
    worst = 0.0
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await client.request("hello")
            worst = max(worst, time.perf_counter() - started)
            await asyncio.sleep(0.02)  # within the admin rate limit
    finally:
        await client.close()
    return worst


async def timed(address: AdminAddress, **fields: Any) -> dict[str, Any]:
    client = await AdminClient.connect(address)
    stop = asyncio.Event()
    prober = asyncio.ensure_future(probe(address, stop))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    try:
        reply = await client.request("grep", **fields)
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        await client.close()
    return {
        "pattern": fields["pattern"],
        "seconds": round(elapsed, 3),
        "matches": len(reply["matches"]),
        "truncated": reply["truncated"],
        "consoles": reply["consoles"],
        "hello_max_ms": round(await prober * 1000, 1),
    }


async def run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    logs = workdir / "logs"
    logs.mkdir()
    started = time.perf_counter()
    size = generate(logs, args.consoles, int(args.mib_per_console * 1024 * 1024), args.generations)
    generated = time.perf_counter() - started
    on_disk = sum(p.stat().st_size for p in logs.iterdir())
    socket = workdir / "admin.sock"
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vspc.vspcd",
        "--proxy-iface", "127.0.0.1", "--proxy-port", "0", "--no-vm-ports",
        "--admin-socket", str(socket), "--log-dir", str(logs), "--log-timestamps",
        *(["--allow-root"] if os.geteuid() == 0 else []),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if socket.exists():
                break
            await asyncio.sleep(0.05)
        address = AdminAddress(path=str(socket))
        runs = [
            await timed(address, pattern=r"Kernel panic - not syncing", limit=10000),
            await timed(address, pattern=r"no such text anywhere", limit=10000),
            await timed(address, pattern=r"quick brown", limit=1000),
        ]
    finally:
        if daemon.returncode is None:
            daemon.terminate()
        await daemon.wait()
    return {
        "bench": "grep",
        "consoles": args.consoles,
        "mib_per_console": args.mib_per_console,
        "generations": args.generations,
        "bytes": size,
        "bytes_on_disk": on_disk,
        "generate_seconds": round(generated, 1),
        "runs": runs,
        "mb_per_s": round(size / runs[1]["seconds"] / 1e6, 1),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consoles", type=int, default=1000)
    parser.add_argument("--mib-per-console", type=float, default=10.0)
    parser.add_argument("--generations", type=int, default=4, help="files per console")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vspcd-grep-bench-"))
    try:
        print(json.dumps(asyncio.run(run(workdir, args))))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
