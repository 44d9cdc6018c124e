"""Resource-bound benchmark: what a stranger can make vspcd hold, and what comes back.

Three attacks on a `python -m vspc.vspcd` subprocess (bench/daemon_bench.py's
`Daemon`), each reporting the daemon's RSS idle, at the attack's peak, and once the
attack has ended and the daemon is quiet (docs/security.md, "Resource bounds"):

- `consoles`: one address opens COUNT connections, each a new UUID that identifies
  and closes (concurrency 64); then a real VM from another address connects.  Reports
  consoles kept, fds, refusals and the real VM's telnet port (`--consoles-per-host`,
  `--console-limit`).
- `peerlink`: with `--cluster` (a throwaway redis-server), CONNS connections to the
  inter-node port each announce a 64 MiB frame and send MIB MiB of it before any
  handshake (common/peerlink.py HANDSHAKE_FRAME).
- `clients`: a VM streams output to one console while CLIENTS telnet clients that
  never read sit on it (`--client-limit 0`, `--client-queue` 1 MiB); reports how
  many the daemon dropped over `--output-budget`, then closes them all.

Prints ONE JSON line.  `--event-loop asyncio|uvloop` is passed to the daemon;
`--quick` runs toy sizes.  Figures go to docs/benchmarks.md; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_bench  # noqa: E402  (bench/ is not a package)
from daemon_bench import (  # noqa: E402
    WILL_PROXY,
    FakeVm,
    free_port,
    hello,
    running_daemon,
    vm_key,
)

HOSTILE = "127.0.0.1"
GOOD = "127.0.0.2"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def quiet(wait: float) -> None:
    """Let the daemon finish closing and trimming (the trimmer waits 0.5-5 s)."""
    await asyncio.sleep(wait)


async def _ident(port: int, key: str, local: str) -> FakeVm:
    loop = asyncio.get_running_loop()
    _, vm = await loop.create_connection(
        lambda: FakeVm(hello(key, f"vm-{key[-6:]}")), "127.0.0.1", port, local_addr=(local, 0)
    )
    return vm


# -- 4: consoles --------------------------------------------------------------------------


async def consoles_attack(daemon: Any, count: int, settle: float) -> dict[str, Any]:
    port = daemon.proxy_port
    idle = rss_mib(daemon.pid)
    peak = idle
    done = 0
    began = time.monotonic()

    async def worker(start: int) -> None:
        nonlocal done, peak
        for i in range(start, count, 64):
            try:
                vm = await _ident(port, vm_key(0xB0, i), HOSTILE)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(vm.expect(WILL_PROXY), 5)
                vm.close()
            except OSError:
                pass
            done += 1
            if done % 500 == 0:
                peak = max(peak, rss_mib(daemon.pid))

    await asyncio.gather(*(worker(s) for s in range(64)))
    elapsed = time.monotonic() - began
    peak = max(peak, rss_mib(daemon.pid))
    await quiet(settle)
    kept = daemon.consoles()
    good = await _ident(port, vm_key(0xB1, 0), GOOD)
    await asyncio.wait_for(good.expect(WILL_PROXY), 10)
    await asyncio.sleep(0.3)
    row = next((r for r in daemon.consoles() if r["key"] == vm_key(0xB1, 0)), None)
    log = daemon.log_path.read_text()
    result = {
        "attempts": count,
        "seconds": round(elapsed, 1),
        "consoles_kept": len(kept),
        "fds_after": fds(daemon.pid),
        "refusal_lines": log.count("refused:") + log.count("more in the last"),
        "evicted_lines": log.count("forgotten early to make room"),
        "real_vm_port": None if row is None else row.get("port"),
        "rss_idle_mib": idle,
        "rss_peak_mib": peak,
        "rss_after_mib": rss_mib(daemon.pid),
    }
    good.close()
    return result


# -- 5: peerlink ---------------------------------------------------------------------------


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def peerlink_attack(
    pid: int, link_port: int, conns: int, mib: int, settle: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    idle = rss_mib(pid)
    peak = idle
    sinks: list[Sink] = []
    began = time.monotonic()
    for _ in range(conns):
        try:
            _, sink = await loop.create_connection(Sink, "127.0.0.1", link_port)
        except OSError:
            continue
        sinks.append(sink)
        assert sink.transport is not None
        sink.transport.write(struct.pack(">IBI", 64 << 20, 1, 0))
        chunk = b"\0" * (1 << 20)
        for _ in range(mib):
            if sink.transport.is_closing():
                break
            sink.transport.write(chunk)
    for _ in range(20):
        await asyncio.sleep(0.05)
        peak = max(peak, rss_mib(pid))
    refused = sum(1 for s in sinks if s.lost.done())
    elapsed = time.monotonic() - began
    for sink in sinks:
        if sink.transport is not None:
            sink.transport.abort()
    await quiet(settle)
    return {
        "connections": conns,
        "mib_each": mib,
        "closed_by_node": refused,
        "seconds": round(elapsed, 2),
        "rss_idle_mib": idle,
        "rss_peak_mib": peak,
        "rss_after_mib": rss_mib(pid),
    }


def run_peerlink(conns: int, mib: int, settle: float) -> dict[str, Any]:
    redis = shutil.which("redis-server")
    if redis is None:
        return {"skipped": "no redis-server"}
    tmp = Path(tempfile.mkdtemp(prefix="vspc-bounds-"))
    redis_port, link_port = free_port(), free_port()
    secret = tmp / "secret"
    secret.write_bytes(os.urandom(24).hex().encode())
    proc = subprocess.Popen(
        [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    args = [
        "--cluster", f"redis://127.0.0.1:{redis_port}/0", "--node-id", "a",
        "--node-address", f"127.0.0.1:{link_port}", "--cluster-secret-file", str(secret),
        "--no-vm-ports",
    ]  # fmt: skip
    try:
        with running_daemon(vm_ports=False, extra_args=args) as daemon:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", link_port), 0.5).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(6)  # the probe above waits out its handshake timeout
            return asyncio.run(peerlink_attack(daemon.pid, link_port, conns, mib, settle))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


# -- 6: clients ----------------------------------------------------------------------------


async def clients_attack(
    daemon: Any, clients: int, seconds: float, settle: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    port = daemon.proxy_port
    vm = await _ident(port, vm_key(0xC0, 0), GOOD)
    await asyncio.wait_for(vm.expect(WILL_PROXY), 10)
    vm.idle()
    await asyncio.sleep(0.3)
    row = next(r for r in daemon.consoles() if r["key"] == vm_key(0xC0, 0))
    tport = row["port"]
    idle = rss_mib(daemon.pid)
    socks = []
    for _ in range(clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", tport))
        socks.append(sock)
    chunk = bytes(range(32, 127)) * 690  # ~64 KiB of printable output
    peak = idle
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        vm.write(chunk)
        sent += len(chunk)
        await asyncio.sleep(0.002)
        if sent % (64 * len(chunk)) == 0:
            peak = max(peak, rss_mib(daemon.pid))
    peak = max(peak, rss_mib(daemon.pid))
    for sock in socks:
        sock.close()
    vm.close()
    await quiet(settle)
    log = daemon.log_path.read_text()
    # Logged one by one up to a burst, then "... and N more in the last 10 s".
    more = re.findall(r"over the output budget \.\.\. and (\d+) more", log)
    return {
        "clients": clients,
        "stream_mib": round(sent / (1 << 20)),
        "dropped_by_daemon": log.count("over --output-budget") + sum(map(int, more)),
        "rss_idle_mib": idle,
        "rss_peak_mib": peak,
        "rss_after_mib": rss_mib(daemon.pid),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--quick", action="store_true", help="toy sizes")
    parser.add_argument("--scenario", action="append", choices=("consoles", "peerlink", "clients"))
    parser.add_argument("--settle", type=float, default=7.0, help="seconds after an attack")
    ns = parser.parse_args(argv)
    daemon_bench.DAEMON_ARGS[:] = ["--event-loop", ns.event_loop]
    scenarios = ns.scenario or ["consoles", "peerlink", "clients"]
    count, conns, mib, clients, secs = (
        (400, 5, 4, 50, 2.0) if ns.quick else (6000, 20, 64, 1000, 10.0)
    )
    out: dict[str, Any] = {"event_loop": ns.event_loop, "quick": ns.quick}
    # --quick lowers the caps so that toy sizes reach them.
    cap = ["--consoles-per-host", "100"] if ns.quick else []
    budget = ["--output-budget", str(16 << 20)] if ns.quick else []
    if "consoles" in scenarios:
        with running_daemon(vm_ports=True, port_count=count + 16, extra_args=cap) as daemon:
            out["consoles"] = asyncio.run(consoles_attack(daemon, count, ns.settle))
    if "peerlink" in scenarios:
        out["peerlink"] = run_peerlink(conns, mib, ns.settle)
    if "clients" in scenarios:
        with running_daemon(vm_ports=True, port_count=4, extra_args=budget) as daemon:
            out["clients"] = asyncio.run(clients_attack(daemon, clients, secs, ns.settle))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
