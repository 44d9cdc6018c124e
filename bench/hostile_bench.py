"""Hostile-peer benchmark: memory and latency under pre-identification floods (issue #7).

Starts `python -m vspc.vspcd` (with --ssl and a throwaway certificate, defaults
otherwise) via bench/daemon_bench.py's `Daemon`, then:

1. a good VM connects from 127.0.0.2 and identifies, an operator connects to its
   telnet port, and an echo probe runs for the whole benchmark: the operator types
   one byte, the VM echoes it, the operator's round trip is timed (every ~20 ms);
2. ROUNDS rounds, each opening PER_ROUND hostile connections from 127.0.0.1, a third
   of each kind: idle (send nothing), data (64 KiB of data, then a subnegotiation left
   open at 60 KiB) and stalled TLS (a ClientHello record header, then nothing).  They
   are held `hold` seconds (meanwhile a fresh VM from 127.0.0.3 must identify), then
   closed by us; the daemon's RSS is read once its CPU is quiet and `--trim-wait`
   seconds have passed (the daemon trims its heap when a flood ends, at most once
   per 5 s: vspcd/service/heap.py).

Prints ONE JSON line: per round the RSS after it, the fresh VM's identification
time, the echo round trips during it, how many hostile connections the daemon
closed or refused before we did.  Figures go to docs/reliability.md; this is not a
test (nothing is asserted).  `--quick` runs toy sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_bench import (  # noqa: E402  (bench/ is not a package)
    WILL_PROXY,
    Client,
    Daemon,
    FakeVm,
    calibration_ms,
    hello,
    percentiles,
    settle,
    vm_key,
)

HOSTILE = "127.0.0.1"
GOOD = "127.0.0.2"
FRESH = "127.0.0.3"
DATA_ATTACK = b"x" * 65536 + b"\xff\xfa\xe8" + b"A" * 61440
TLS_STALL = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's first bytes


class Hostile(asyncio.Protocol):
    """One attacking connection: writes its payload, notes when the daemon hangs up."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.transport: asyncio.Transport | None = None
        self.closed_by_daemon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.payload:
            self.transport.write(self.payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.closed_by_daemon = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.transport.is_closing() or exc is not None:
            self.closed_by_daemon = True


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key)]
        + ["-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def identify(port: int, key: str, local: str) -> tuple[FakeVm, float]:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    _, vm_end = await loop.create_connection(
        lambda: FakeVm(hello(key, key)), "127.0.0.1", port, local_addr=(local, 0)
    )
    async with asyncio.timeout(30):
        await vm_end.expect(WILL_PROXY)
    vm_end.idle()
    return vm_end, time.perf_counter() - started


async def _probe_main(proxy_port: int, admin_path: str, control: Connection) -> None:
    """The helper process: good VM + operator + echo probe, away from the attack."""
    loop = asyncio.get_running_loop()
    good, _ = await identify(proxy_port, vm_key(7, 0), GOOD)
    port = None
    async with asyncio.timeout(10):
        while port is None:
            reader, writer = await asyncio.open_unix_connection(admin_path)
            writer.write(b'{"cmd":"list"}\n')
            reply = json.loads(await reader.readline())
            writer.close()
            rows = [r for r in reply["vms"] if r["key"].startswith(vm_key(7, 0))]
            port = rows[0]["port"] if rows else None
    _, client = await loop.create_connection(Client, "127.0.0.1", port)
    async with asyncio.timeout(10):
        await client.first
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    loop.add_reader(control.fileno(), stop.set)
    control.send("ready")
    await echo_probe(good, client, samples, stop)
    loop.remove_reader(control.fileno())
    control.recv()
    control.send(samples)


def _probe_process(proxy_port: int, admin_path: str, control: Connection) -> None:
    asyncio.run(_probe_main(proxy_port, admin_path, control))


async def echo_probe(
    vm_end: FakeVm, client: Client, samples: list[float], stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    state: dict[str, asyncio.Future[float]] = {}

    def vm_got(data: bytes) -> None:
        vm_end.write(data)  # the guest echoes

    def client_got(data: bytes) -> None:
        waiter = state.get("echo")
        if waiter is not None and not waiter.done():
            waiter.set_result(time.monotonic())

    vm_end.on_data, client.on_data = vm_got, client_got
    assert client.transport is not None
    while not stop.is_set():
        state["echo"] = loop.create_future()
        sent = time.monotonic()
        client.transport.write(b"k")
        async with asyncio.timeout(30):
            samples.append((sent, await state["echo"] - sent))
        await asyncio.sleep(0.02)


async def attack_round(
    port: int, per_round: int, hold: float
) -> tuple[dict[str, int], list[Hostile]]:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(200)
    kinds = [b"", DATA_ATTACK, TLS_STALL]
    peers: list[Hostile] = []
    failed = 0

    async def one(payload: bytes) -> None:
        nonlocal failed
        async with limit:
            try:
                _, peer = await loop.create_connection(
                    lambda: Hostile(payload), "127.0.0.1", port, local_addr=(HOSTILE, 0)
                )
            except OSError:
                failed += 1
                return
            peers.append(peer)

    await asyncio.gather(*(one(kinds[i % 3]) for i in range(per_round)))
    await asyncio.sleep(hold)
    closed = sum(p.closed_by_daemon for p in peers)
    return {"opened": len(peers), "connect_failed": failed, "closed_by_daemon": closed}, peers


async def run(rounds: int, per_round: int, hold: float, trim_wait: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vspc-hostile-"))
    cert, key = make_cert(workdir)
    daemon = Daemon(workdir, vm_ports=True, port_count=100)
    daemon.args += ["--ssl", "--cert", str(cert), "--key", str(key)]
    try:
        daemon.start()
        # The operator and its VM run in a helper process, so the echo measures the
        # daemon, not this process's own busy loop opening 1,500 connections.
        control, theirs = multiprocessing.Pipe()
        helper = multiprocessing.Process(
            target=_probe_process, args=(daemon.proxy_port, str(daemon.admin_path), theirs)
        )
        helper.start()
        if not control.poll(30):
            raise RuntimeError("echo probe did not start")
        control.recv()
        await asyncio.sleep(0.5)
        settle(daemon)
        rss_before = daemon.rss_kib()
        results = []
        spans = []
        for index in range(rounds):
            began = time.monotonic()
            stats, peers = await attack_round(daemon.proxy_port, per_round, hold)
            fresh, ident_s = await identify(daemon.proxy_port, vm_key(8, index), FRESH)
            spans.append((began, time.monotonic()))
            for peer in peers:
                if peer.transport is not None:
                    peer.transport.abort()
            fresh.close()
            settle(daemon)
            # The daemon trims its heap once the flood is gone (vspcd/service/heap.py): at
            # most once per 5 s, so give it that long before reading RSS.
            await asyncio.sleep(trim_wait)
            settle(daemon)
            results.append(
                {
                    **stats,
                    "rss_kib_after": daemon.rss_kib(),
                    "fresh_vm_identify_ms": round(ident_s * 1e3, 2),
                }
            )
        control.send("stop")
        samples: list[tuple[float, float]] = control.recv()
        helper.join(10)
        for result, (began, ended) in zip(results, spans, strict=True):
            during = [rtt for at, rtt in samples if began <= at <= ended]
            result["echo_ms"] = percentiles(during) if during else None
        # Between rounds: the attacker's connections are torn down and the heap is
        # trimmed (vspcd/service/heap.py); the operator's echo is measured there too.
        between = [
            rtt
            for at, rtt in samples
            if at >= spans[0][0] and not any(b <= at <= e for b, e in spans)
        ]
        quiet = [rtt for at, rtt in samples if at < spans[0][0]]
        baseline = percentiles(quiet) if quiet else None
        rtts = [rtt for _at, rtt in samples]
        first = results[0]["rss_kib_after"]
        return {
            "scenario": "hostile_rounds",
            "rounds": rounds,
            "per_round": per_round,
            "hold_s": hold,
            "trim_wait_s": trim_wait,
            "rss_kib_before": rss_before,
            "results": results,
            "rss_max_over_first": round(max(r["rss_kib_after"] for r in results) / first, 3),
            "echo_idle_ms": baseline,
            "echo_between_rounds_ms": percentiles(between) if between else None,
            "echo_max_ms": round(max(rtts) * 1e3, 2),
            "log_lines": len(daemon.log_path.read_text(errors="replace").splitlines()),
            "calibration_ms": calibration_ms(),
        }
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=1500)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each round is held")
    parser.add_argument(
        "--trim-wait",
        type=float,
        default=5.5,
        help="seconds to wait after a round before reading RSS (the daemon's heap trim)",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round, args.hold, args.trim_wait = 2, 60, 0.3, 0.0
    result = asyncio.run(run(args.rounds, args.per_round, args.hold, args.trim_wait))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
