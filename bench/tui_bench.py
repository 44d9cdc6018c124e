"""Benchmark: vspc-tui's key-to-redraw latency and CPU under a stream of events.

Two processes, so that the CPU figure is the dashboard's alone:

- a **feeder** (this script with ``--serve``): a minimal admin-protocol server on a
  Unix socket.  It answers `subscribe` with N console rows, `tail`/`untail`/`show`
  with small replies, and pushes RATE events a second in 10 ms batches: VMs
  reconnecting (`vm_disconnected` then `vm_connected` with its row, for random
  consoles: what the issue measured) plus, for every tenth event, an `output` event
  of the console being tailed.
- the **dashboard**: the real `App` (vspctui/dashboard/app.py) on a headless urwid screen of
  the size asked for, connected to the feeder through the real `AdminClient`.  Every
  `--key-every` seconds a key (`j`/`k`, and now and then `end`/`home`) is queued on
  the event loop, as the terminal's input callback would be, and the time from
  queueing to the end of its redraw (`App.press`: `process_input`, the controller's
  update and `draw_screen`, which renders) is recorded.  Keys therefore wait behind
  whatever event work is queued before them, as a real key press does.

CPU is `time.process_time()` of the dashboard process over the measured interval,
divided by wall time (100 % = one core).  The first render (connect, subscribe,
model load, first full draw) is timed separately.

    .venv/bin/python bench/tui_bench.py                      # 10,000 consoles, 1,000 ev/s
    .venv/bin/python bench/tui_bench.py --consoles 10000 --rate 0 --seconds 5

Prints one JSON object.  Figures and method: docs/benchmarks.md ("Dashboard").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import urwid

from vspc.vspctui.client import AdminAddress
from vspc.vspctui.dashboard.app import App


def row(i: int, connected: bool = True) -> dict[str, Any]:
    key = f"{i:032x}"
    return {
        "key": key,
        "name": f"vm{i:05d}",
        "vm_name": f"vm{i:05d}",
        "uuid": f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}",
        "label": "",
        "port": 20000 + i % 40000,
        "connected": connected,
        "clients": 0,
        "vmotion": "normal",
        "expires_in": None,
        "lock": None,
        "lock_holder": None,
        "attached": [],
    }


# ===================================================================== feeder


async def serve(path: str, consoles: int, rate: int) -> None:
    rows = [row(i) for i in range(consoles)]
    rng = random.Random(1)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tailed: list[str] = []
        pusher: asyncio.Task[None] | None = None

        async def push() -> None:
            n = 0
            batch = max(1, rate // 100)
            while True:
                lines = []
                for _ in range(batch):
                    n += 1
                    if n % 10 == 0 and tailed:
                        key = tailed[-1]
                        data = base64.b64encode(b"line %d of output\r\n" % n).decode()
                        lines.append({"event": "output", "key": key, "name": key, "data_b64": data})
                        continue
                    r = rows[rng.randrange(consoles)]
                    if n % 2:
                        lines.append(
                            {"event": "vm_disconnected", "key": r["key"], "name": r["name"],
                             "peer": "10.0.0.1:1000"}
                        )  # fmt: skip
                    else:
                        lines.append(
                            {"event": "vm_connected", "key": r["key"], "name": r["name"],
                             "peer": "10.0.0.1:1000", "console": r}
                        )  # fmt: skip
                writer.write(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
                await writer.drain()
                await asyncio.sleep(0.01)

        try:
            while line := await reader.readline():
                req = json.loads(line)
                reply: dict[str, Any] = {"ok": True, "id": req["id"]}
                cmd = req["cmd"]
                if cmd == "subscribe":
                    reply["vms"] = rows
                    if rate and pusher is None:
                        pusher = asyncio.create_task(push())
                elif cmd == "tail":
                    tailed.append(req["vm"])
                    reply |= {"key": req["vm"], "name": req["vm"], "data_b64": ""}
                elif cmd == "untail":
                    if req["vm"] in tailed:
                        tailed.remove(req["vm"])
                elif cmd == "show":
                    i = int(req["vm"], 16)
                    reply["console"] = rows[i] | {"counters": {"bytes_from_vm": 0}}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if pusher is not None:
                pusher.cancel()
            writer.close()

    server = await asyncio.start_unix_server(client, path)
    async with server:
        await server.serve_forever()


# ===================================================================== dashboard


class HeadlessScreen(urwid.BaseScreen):
    """A screen with no terminal: draws into nothing, reads no input."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def get_cols_rows(self) -> tuple[int, int]:
        return self.size

    def draw_screen(self, size: tuple[int, int], canvas: urwid.Canvas) -> None:
        canvas.text  # noqa: B018 - materialise the rows, as a terminal screen would

    def hook_event_loop(self, event_loop: Any, callback: Any) -> None:
        pass

    def unhook_event_loop(self, event_loop: Any) -> None:
        pass


async def measure(
    path: str, size: tuple[int, int], seconds: float, key_every: float, sort: str
) -> dict[str, Any]:
    app = App(AdminAddress(path=path), screen=HeadlessScreen(size))
    # (Only the name order is asked of a tree without `Model.sort`: the "before" runs.)
    while sort != "name" and app.model.sort.value != sort:
        app.model.sort = app.model.sort.next()
    started = time.perf_counter()
    task = asyncio.create_task(app.run())
    await app.changed.wait()
    first_render = time.perf_counter() - started
    await asyncio.sleep(1.0)  # the preview tail and the first events settle

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    keys = ["j", "j", "k", "j", "end", "k", "home", "j"]

    def press(key: str, queued: float) -> None:
        app.press(key)
        latencies.append(time.perf_counter() - queued)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    events0 = len(app.model.log)
    applied = 0
    n = 0
    while time.perf_counter() - wall0 < seconds:
        loop.call_soon(press, keys[n % len(keys)], time.perf_counter())
        n += 1
        await asyncio.sleep(key_every)
        applied = len(app.model.log)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    del events0, applied
    app.finish(0)
    await task
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "first_render_s": round(first_render, 3),
        "cpu_percent": round(100 * cpu / wall, 1),
        "keys": len(ms),
        "key_to_redraw_ms": {
            "p50": round(statistics.median(ms), 2),
            "p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "max": round(ms[-1], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consoles", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1000, help="events per second (0: none)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--key-every", type=float, default=0.1)
    parser.add_argument("--size", default="200x50", help="COLSxROWS of the headless screen")
    parser.add_argument("--sort", default="name", choices=["name", "activity", "port"])
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        asyncio.run(serve(ns.serve, ns.consoles, ns.rate))
        return
    cols, rows = (int(x) for x in ns.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as directory:
        path = str(Path(directory) / "feed.sock")
        feeder = subprocess.Popen(
            [sys.executable, __file__, "--serve", path, "--consoles", str(ns.consoles),
             "--rate", str(ns.rate)],
        )  # fmt: skip
        try:
            while not os.path.exists(path):
                if feeder.poll() is not None:
                    raise SystemExit("the feeder did not start")
                time.sleep(0.01)  # a one-off start-up wait outside the measurement
            result = asyncio.run(measure(path, (cols, rows), ns.seconds, ns.key_every, ns.sort))
        finally:
            feeder.terminate()
            feeder.wait()
    print(
        json.dumps(
            {
                "bench": "tui",
                "consoles": ns.consoles,
                "events_per_s": ns.rate,
                "seconds": ns.seconds,
                "size": ns.size,
                "sort": ns.sort,
                "python": platform.python_version(),
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
