"""Benchmark: vspc-web's console fan-out and its live console list.

Everything runs as separate processes on loopback: vspcd (`daemon_bench.Daemon`),
vspc-web (`python -m vspc.vspctui.web.cli`, token login), the fake ESXi VMs and the
reference client in this process, and the WebSocket viewers in `--procs` helper
processes (aiohttp's client), so that the viewers' CPU is not vspc-web's.

- **stream**: one VM writes `--rate` bytes a second in 10 ms chunks, each chunk
  starting with a sequence marker `<m:N>` (vspctui/sim/markers.py) and padded with
  text.  `--clients` WebSocket viewers watch the console's page socket
  (`/ws/console/NAME`); a `vspc attach`-style reader (the admin attach channel,
  docs/admin-protocol.md "The attach channel") watches the same console directly.
  Every viewer must get every byte: no marker lost or repeated, and exactly the
  bytes sent from `<m:0>` on.  Latency: for each marker and viewer, arrival at the
  viewer minus arrival at the attach reader ("added"), and send-to-arrival of both.
- **list**: `--consoles` fake VMs connect in a burst (vspcd with `--no-vm-ports`)
  while one `/ws/list` socket is open: row updates a second reaching it and how long
  until every console is listed; then a new list socket's first (full) message: its
  JSON size and how long it takes; then every VM disconnects at once (the updates
  again).

    .venv/bin/python bench/web_bench.py                       # both, the goals' sizes
    .venv/bin/python bench/web_bench.py --only stream --clients 50 --seconds 5

Prints one JSON object.  Figures and method: docs/benchmarks.md ("vspc-web").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_bench import (  # noqa: E402  (bench/ is not a package)
    HOST,
    CpuMeter,
    close_all,
    connect_vms,
    free_port,
    hello,
    proc_cpu_seconds,
    running_daemon,
    vm_key,
)

from vspc.vspctui.sim.markers import MarkerChecker, marker  # noqa: E402
from vspc.vspctui.sim.report import percentiles  # noqa: E402

TOKEN = "web-bench-token-0123456789abcdef"
NAME = "web-bench"
TICK = 0.01  # seconds between the VM's writes
PAD = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"
GOALS = {"clients": 200, "rate": 1_000_000, "added_p99_ms": 50.0, "consoles": 10_000}


# ===================================================================== vspc-web


class Web:
    """vspc-web in a subprocess, token login on loopback."""

    def __init__(self, workdir: Path, admin: Path) -> None:
        self.port = free_port()
        token_file = workdir / "token"
        token_file.write_text(TOKEN)
        self.args = [
            sys.executable,
            "-m",
            "vspc.vspctui.web.cli",
            "--socket",
            str(admin),
            "--listen",
            f"{HOST}:{self.port}",
            "--token-file",
            str(token_file),
        ]
        self.log = workdir / "vspc-web.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, VSPC_WEB_CONFIG="/dev/null")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"vspc-web: http" in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"vspc-web did not start: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def login(session: Any, base: str) -> str:
    """Log in with the token (the cookie lands in `session`); the CSRF token."""
    async with session.get(f"{base}/?token={TOKEN}", allow_redirects=False) as reply:
        assert reply.status == 303, reply.status
    async with session.get(f"{base}/") as page:
        text = await page.text()
    found = re.search(r'data-csrf="([^"]+)"', text)
    assert found, "no CSRF token on the page"
    return found.group(1)


# ===================================================================== stream


class Arrivals:
    """One receiver: when each marker arrived, and the bytes from `<m:0>` on."""

    def __init__(self) -> None:
        self.checker = MarkerChecker(from_first=True)
        self.times: dict[int, float] = {}
        self.window = b""
        self.counted = -1  # bytes from <m:0> on; -1 until it is seen

    def feed(self, data: bytes) -> None:
        now = time.monotonic()
        if self.counted < 0:
            self.window = (self.window + data)[-(len(data) + 16) :]
            at = self.window.find(b"<m:0>")
            if at < 0:
                return
            self.counted = len(self.window) - at
            data = self.window[at:]
        else:
            self.counted += len(data)
        for stream, number in self.checker.feed(data):
            if stream == "m":
                self.times[number] = now


async def _viewers(base: str, count: int, total: int, control: Connection) -> None:
    import aiohttp

    arrivals = [Arrivals() for _ in range(count)]
    done = asyncio.Event()
    finished = 0

    async def viewer(index: int, ready: asyncio.Event) -> None:
        nonlocal finished
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            csrf = await login(session, base)
            url = f"{base}/ws/console/{NAME}?csrf={csrf}"
            # compress=15: offer permessage-deflate, as browsers do.
            async with session.ws_connect(url, origin=base, max_msg_size=0, compress=15) as ws:
                first = await ws.receive_json()
                assert first.get("type") == "grant", first
                ready.set()
                mine = arrivals[index]
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.BINARY:
                        mine.feed(msg.data)
                        if mine.counted >= total:
                            break
                    elif msg.type is not aiohttp.WSMsgType.TEXT:
                        break
        finished += 1
        if finished == count:
            done.set()

    readies = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(viewer(i, readies[i])) for i in range(count)]
    all_ready = asyncio.ensure_future(asyncio.gather(*(r.wait() for r in readies)))
    await asyncio.wait([all_ready, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if not all_ready.done():
        failed = [t.exception() for t in tasks if t.done()]
        control.send(f"failed: {failed[0]!r}")
        return
    control.send("ready")
    limit = await asyncio.to_thread(control.recv)  # seconds to wait for the end
    try:
        async with asyncio.timeout(limit):
            await done.wait()
    except TimeoutError:
        pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    control.send(
        [{"times": a.times, "bytes": a.counted, "tally": a.checker.totals()} for a in arrivals]
    )


def _viewers_main(base: str, count: int, total: int, control: Connection) -> None:
    asyncio.run(_viewers(base, count, total, control))


async def _attach_reader(admin: Path, arrivals: Arrivals, total: int) -> None:
    """The reference: a read-only attach on the admin socket, as `vspc attach` makes."""
    reader, writer = await asyncio.open_unix_connection(str(admin), limit=1 << 20)
    request = {"cmd": "attach", "id": 1, "vm": NAME, "readonly": True}
    writer.write(json.dumps(request).encode() + b"\n")
    reply = json.loads(await reader.readline())
    assert reply.get("ok"), reply
    try:
        while arrivals.counted < total and (data := await reader.read(1 << 16)):
            arrivals.feed(data)
    finally:
        writer.close()


def chunk_of(number: int, size: int) -> bytes:
    head = marker("m", number)
    body = (PAD * (size // len(PAD) + 1))[: size - len(head)]
    return head + body


async def scenario_stream(clients: int, rate: int, seconds: float, procs: int) -> dict[str, Any]:
    size = int(rate * TICK)
    count = int(seconds / TICK)
    total = size * count
    with running_daemon(vm_ports=False) as daemon:
        web = Web(daemon.admin_path.parent, daemon.admin_path)
        web.start()
        base = f"http://{HOST}:{web.port}"
        try:
            key = vm_key(0x3EB, 1)
            (source,), _, _ = await connect_vms(daemon.proxy_port, [hello(key, NAME)], 1)
            source.write(b"warming up\r\n")
            await asyncio.sleep(0.5)  # the console is named before anyone attaches
            context = multiprocessing.get_context("spawn")
            helpers: list[tuple[Any, Connection]] = []
            shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
            for share in shares:
                parent, child = context.Pipe()
                proc = context.Process(target=_viewers_main, args=(base, share, total, child))
                proc.start()
                helpers.append((proc, parent))
            for _, parent in helpers:
                said = parent.recv() if await asyncio.to_thread(parent.poll, 120) else "silent"
                if said != "ready":
                    raise RuntimeError(f"viewers: {said}: {web.log.read_text()[-2000:]}")
            reference = Arrivals()
            attach = asyncio.create_task(_attach_reader(daemon.admin_path, reference, total))
            await asyncio.sleep(0.3)
            pids = [p.pid or 0 for p, _ in helpers]
            meter = CpuMeter(daemon.pid, pids)
            web_cpu = proc_cpu_seconds(web.pid)
            began = time.perf_counter()
            sent: dict[int, float] = {}
            start = time.monotonic()
            late = 0.0
            for number in range(count):
                due = start + number * TICK
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late = max(late, -delay)
                sent[number] = time.monotonic()
                source.write(chunk_of(number, size))
                if source.resumed is not None:
                    await source.resumed
            writing = time.perf_counter() - began
            for _, parent in helpers:
                parent.send(30.0)
            reports: list[dict[str, Any]] = []
            for _, parent in helpers:
                if not await asyncio.to_thread(parent.poll, 90):
                    raise RuntimeError("viewer process did not report")
                reports += parent.recv()
            elapsed = time.perf_counter() - began
            cpu = meter.stop()
            cpu["vspc_web"] = round((proc_cpu_seconds(web.pid) - web_cpu) / elapsed, 2)
            await asyncio.wait_for(attach, 10)
            rss = web.rss_kib()
            for proc, _ in helpers:
                proc.join(10)
            await close_all([source])
        finally:
            web.stop()
    added: list[float] = []
    ws_latency: list[float] = []
    for report in reports:
        for number, at in report["times"].items():
            ws_latency.append(at - sent[number])
            if number in reference.times:
                added.append(at - reference.times[number])
    attach_latency = [at - sent[n] for n, at in reference.times.items()]
    exact = sum(
        1
        for r in reports
        if r["bytes"] == total and r["tally"]["lost"] == 0 and r["tally"]["repeated"] == 0
    )
    added_ms = percentiles(added)
    return {
        "clients": clients,
        "rate_bytes_per_s": rate,
        "seconds": seconds,
        "bytes_per_viewer": total,
        "writer_seconds": round(writing, 2),
        "writer_late_max_ms": round(late * 1e3, 1),
        "viewers_exact": exact,
        "lost_markers": sum(r["tally"]["lost"] for r in reports),
        "repeated_markers": sum(r["tally"]["repeated"] for r in reports),
        "bytes_short": sum(max(0, total - r["bytes"]) for r in reports),
        "attach_exact": reference.counted == total,
        "added_latency_ms": added_ms,
        "viewer_latency_ms": percentiles(ws_latency),
        "attach_latency_ms": percentiles(attach_latency),
        "cpu_cores": cpu,
        "vspc_web_rss_kib": rss,
        "goal_met": exact == clients
        and bool(added_ms)
        and added_ms["p99"] <= GOALS["added_p99_ms"],
    }


# ===================================================================== list


class ListWatcher:
    """One `/ws/list` socket: rows as they arrive, and when."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.updates = 0  # rows and removals in pushed (not full) messages
        self.messages = 0
        self.stamps: list[tuple[float, int]] = []  # (time, row updates in that message)
        self.first_bytes = 0
        self.changed = asyncio.Event()

    def take(self, text: str) -> None:
        message = json.loads(text)
        self.messages += 1
        if message.get("full"):
            self.first_bytes = len(text.encode())
            self.rows = {row["key"]: row for row in message["rows"]}
        else:
            for row in message["rows"]:
                self.rows[row["key"]] = row
            for key in message["gone"]:
                self.rows.pop(key, None)
            n = len(message["rows"]) + len(message["gone"])
            self.updates += n
            self.stamps.append((time.monotonic(), n))
        self.changed.set()

    async def until(self, predicate: Any, limit: float) -> float:
        """Seconds until `predicate(self)` holds."""
        began = time.monotonic()
        async with asyncio.timeout(limit):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic() - began


async def _pump_list(ws: Any, watcher: ListWatcher) -> None:
    import aiohttp

    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            watcher.take(msg.data)


async def scenario_list(consoles: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    # Every fake VM comes from 127.0.0.1: lift the per-address cap, and the automatic
    # console limit (a third of the open-file limit) above the burst (docs/security.md).
    extra = ["--consoles-per-host", "0", "--console-limit", str(consoles + 100)]
    with running_daemon(vm_ports=False, extra_args=extra) as daemon:
        web = Web(daemon.admin_path.parent, daemon.admin_path)
        web.start()
        base = f"http://{HOST}:{web.port}"
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                csrf = await login(session, base)
                url = f"{base}/ws/list?csrf={csrf}"
                live = ListWatcher()
                ws = await session.ws_connect(url, origin=base, max_msg_size=0)
                pump = asyncio.create_task(_pump_list(ws, live))
                await live.until(lambda w: w.messages >= 1, 10)
                greetings = [hello(vm_key(0x11, i), f"list-{i:05d}") for i in range(consoles)]
                web_cpu = proc_cpu_seconds(web.pid)
                began = time.monotonic()
                vms, connect_s, _ = await connect_vms(daemon.proxy_port, greetings, concurrency)
                connected_at = time.monotonic()
                # Named rows: a VM's row is listed on connect, its name with VM-NAME.
                full = await live.until(lambda w: len(w.rows) >= consoles, 120)
                listed_at = time.monotonic()
                burst_cpu = proc_cpu_seconds(web.pid) - web_cpu
                burst = _rates(live.stamps, began)
                # A newcomer's snapshot of every console.
                fresh = ListWatcher()
                opened = time.monotonic()
                ws2 = await session.ws_connect(url, origin=base, max_msg_size=0)
                first = await ws2.receive(timeout=60)
                fresh.take(first.data)
                snapshot_s = time.monotonic() - opened
                await ws2.close()
                # Every VM goes at once: the list shows each disconnected.
                before = len(live.stamps)
                gone_began = time.monotonic()
                await close_all(vms)
                disconnect_s = await live.until(
                    lambda w: not any(r["connected"] for r in w.rows.values()), 120
                )
                gone = _rates(live.stamps[before:], gone_began)
                pump.cancel()
                await ws.close()
            rss = web.rss_kib()
        finally:
            web.stop()
    return {
        "consoles": consoles,
        "connect_burst_s": round(connect_s, 2),
        "vms_per_s": round(consoles / connect_s, 1),
        "all_listed_after_s": round(listed_at - began, 2),
        "listed_after_last_connect_s": round(listed_at - connected_at, 2),
        "connect_updates": burst,
        "vspc_web_cpu_s_during_burst": round(burst_cpu, 2),
        "snapshot_json_bytes": fresh.first_bytes,
        "snapshot_rows": len(fresh.rows),
        "snapshot_s": round(snapshot_s, 3),
        "all_disconnected_after_s": round(disconnect_s, 2),
        "disconnect_updates": gone,
        "vspc_web_rss_kib": rss,
        "full_after_s": round(full, 2),
    }


def _rates(stamps: list[tuple[float, int]], began: float) -> dict[str, Any]:
    """Row updates a second reaching the list socket, and its messages a second."""
    if not stamps:
        return {"updates": 0, "messages": 0}
    span = max(stamps[-1][0] - began, 1e-6)
    updates = sum(n for _, n in stamps)
    return {
        "updates": updates,
        "messages": len(stamps),
        "updates_per_s": round(updates / span, 1),
        "messages_per_s": round(len(stamps) / span, 2),
        "largest_message_rows": max(n for _, n in stamps),
    }


# ===================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("stream", "list"))
    parser.add_argument("--clients", type=int, default=GOALS["clients"])
    parser.add_argument("--rate", type=int, default=GOALS["rate"], help="bytes/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="viewer processes")
    parser.add_argument("--consoles", type=int, default=GOALS["consoles"])
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "goals": GOALS,
    }
    if args.only in (None, "stream"):
        out["stream"] = asyncio.run(
            scenario_stream(args.clients, args.rate, args.seconds, args.procs)
        )
    if args.only in (None, "list"):
        out["list"] = asyncio.run(scenario_list(args.consoles, args.concurrency))
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
