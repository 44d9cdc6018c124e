"""Storm benchmark: a host evacuation against the real vspcd.

10,000 VMs connected, each with its telnet port; a typing client on 200 of them;
then 2,000 of them (the 200 typed ones among them) vMotion at once, as when a host
enters maintenance mode.  Reported, as ONE JSON line:

- `drain_s`: from "go" until the last of the 2,000 vMotions has COMPLETEd;
- `begin_goahead_ms`: BEGIN -> GOAHEAD percentiles against VMware's 5,000 ms budget
  (`serialN.vmotionLimit`, docs/protocol.md §4.6), as each source VM measures it;
- `vmotions_failed`: timeouts, lost connections, NOTNOW;
- `bytes_lost` / `bytes_repeated` (must be 0): the clients type sequence-numbered
  markers throughout; every VM checks each arrives exactly once, in order;
- `daemon`: CPU (cores and seconds over the storm), RSS before/after and peak (VmHWM);
- `generator`: the load generator's own CPU, per worker, and its ceiling.

Method.  vspcd runs as a subprocess (`daemon_bench.Daemon`: 127.0.0.1, a `-r`
range below the ephemeral range, RLIMIT_NOFILE raised for it and us).  The VMs are
`vspc-sim`'s (`vspc.vspctui.sim.fleet.Fleet`, the sans-IO `EsxiSession` per
connection), split over `--workers` processes that each own a slice of the VMs,
their vMotions and their typing clients, so the generator is not one busy event
loop.  The parent only coordinates: it looks up the typed VMs' ports once through
the admin socket, then gives every worker one start time on CLOCK_MONOTONIC
(`time.perf_counter`, shared by all processes).  Workers and parent talk JSON over
pipes.

Every figure depends on the machine: the line carries `calibration_ms` (see
daemon_bench.calibration_ms) and the CPU used by everything else (`cpu_cores.other`).
A descriptor ceiling (the hard RLIMIT_NOFILE, which a process without
CAP_SYS_RESOURCE cannot raise) can be below what the daemon needs (a VM connection
and a listening port per VM, plus one per destination and client, under 90% of the
limit where vspcd starts reclaiming): then the VM count is reduced to fit, and
`vms_requested`/`limited_by` say so.  `--quick` runs a toy size (CI smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from daemon_bench import HOST, CpuMeter, calibration_ms, proc_cpu_seconds, running_daemon, settle

from vspc.vspctui.sim.fleet import Fleet
from vspc.vspctui.sim.identity import generate
from vspc.vspctui.sim.report import merge, percentiles
from vspc.vspctui.sim.vm import Kind, Target

BUDGET_MS = 5000.0  # VMware's default serialN.vmotionLimit (docs/protocol.md §4.6)
TAG = 0x570F  # generated UUIDs of this benchmark: 5eed0000570f...
FULL = {"vms": 10_000, "migrating": 2_000, "typing": 200, "workers": 4, "type_rate": 20.0}
QUICK = {"vms": 120, "migrating": 40, "typing": 8, "workers": 2, "type_rate": 20.0}
SPARE_FDS = 200  # the daemon's own: admin socket, log, listeners, stdio
# vspcd starts expiring idle consoles on every accept above 90% of its descriptor
# limit (vspcd/service/server.py `_relieve_fd_pressure`): a run must stay below that, or it
# measures the reclaim path.
FD_PRESSURE = 0.9


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the daemon and workers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fit(vms: int, migrating: int, typing: int, limit: int) -> int:
    """The most VMs (<= vms) whose descriptors, at the storm's peak (a connection and
    a port per VM, plus a destination per vMotion and a client per typist), stay
    below vspcd's fd-pressure threshold for `limit`."""
    return min(vms, (int(limit * FD_PRESSURE) - SPARE_FDS - migrating - typing) // 2)


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


class Sampler:
    """A thread sampling the daemon's CPU seconds and RSS every `period` s, so the
    figures cover exactly the storm (go .. last COMPLETE), known only afterwards."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float, int]] = []  # (perf_counter, cpu s, RSS KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            cpu = proc_cpu_seconds(self.pid)
            self.samples.append((time.perf_counter(), cpu, vm_status(self.pid)["VmRSS"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> dict[str, float | int | None]:
        """Daemon CPU (seconds, cores) and peak RSS between the samples around
        `start` and `end`."""
        inside = [s for s in self.samples if start - self.period <= s[0] <= end + self.period]
        if len(inside) < 2:
            return {"cpu_s": None, "cpu_cores": None, "rss_kib_max": None}
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return {
            "cpu_s": round(c1 - c0, 3),
            "cpu_cores": round((c1 - c0) / (t1 - t0), 2),
            "rss_kib_max": max(s[2] for s in inside),
        }


# -- a worker process ---------------------------------------------------------------


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


async def _recv(conn: Connection, wait: float = 600.0) -> dict[str, Any]:
    if not await asyncio.to_thread(conn.poll, wait):
        raise TimeoutError("no message from the other side")
    message: dict[str, Any] = json.loads(conn.recv_bytes())
    return message


def worker_main(port: int, start: int, count: int, migrating: int, conn: Connection) -> None:
    """Child process: VMs `start`..`start+count-1`; the first `migrating` of them move."""
    asyncio.run(_worker(port, start, count, migrating, conn))


async def _worker(port: int, start: int, count: int, migrating: int, conn: Connection) -> None:
    identities = generate(count, prefix="storm", tag=TAG, start=start)
    fleet = Fleet(identities, Target(HOST, port, timeout=60.0))
    began = time.perf_counter()
    await fleet.connect(concurrency=64)
    _send(
        conn,
        {
            "connected": len(fleet.connected),
            "seconds": time.perf_counter() - began,
            "keys": [vm.identity.uuid for vm in fleet.vms[:migrating]],
        },
    )
    order = await _recv(conn)
    await fleet.attach(HOST, order["ports"])
    fleet.start_typing(order["type_rate"])
    _send(conn, {"clients": len(fleet.clients)})
    order = await _recv(conn)
    cpu_before = time.process_time()
    await asyncio.sleep(max(0.0, order["go"] - time.perf_counter()))
    outcomes = await fleet.vmotion(Kind.SUCCESS, fleet.vms[:migrating])
    ended = time.perf_counter()
    cpu = time.process_time() - cpu_before
    await fleet.settle(wait=30.0)
    report = fleet.report()
    fleet.close()
    _send(
        conn,
        {
            "ended": ended,
            "cpu_s": cpu,
            "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
            "stats": {**fleet.stats.to_raw(), "counts": report["counts"]},
        },
    )


# -- the parent ---------------------------------------------------------------------


def _slices(total: int, parts: int) -> list[tuple[int, int]]:
    """(start, count) of `parts` near-equal slices of range(total)."""
    size, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        count = size + (1 if i < extra else 0)
        out.append((start, count))
        start += count
    return out


async def storm(
    *, vms: int, migrating: int, typing: int, workers: int, type_rate: float
) -> dict[str, Any]:
    limit = raise_nofile()
    requested = vms
    vms = fit(vms, migrating, typing, limit)
    context = multiprocessing.get_context("spawn")
    # Every fake host is 127.0.0.1 here: lift the per-address caps on unidentified
    # connections that real hosts, spread over many addresses, never meet.
    extra = ["--unidentified-per-host", "0", "--unidentified-limit", "0"]
    with running_daemon(vm_ports=True, port_count=vms + 100, extra_args=extra) as daemon:
        pipes, procs = [], []
        slices = _slices(vms, workers)
        moving = _slices(migrating, workers)
        typed = _slices(typing, workers)
        for (start, count), (_, moves) in zip(slices, moving, strict=True):
            parent, child = context.Pipe()
            proc = context.Process(
                target=worker_main, args=(daemon.proxy_port, start, count, moves, child)
            )
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        try:
            began = time.perf_counter()
            hellos = [await _recv(p) for p in pipes]
            connect_s = time.perf_counter() - began
            # Quiet before the clients start typing (they never stop till the end).
            settle(daemon)
            ports = {row["key"]: row["port"] for row in daemon.consoles()}
            for pipe, hello, (_, clients) in zip(pipes, hellos, typed, strict=True):
                keys = hello["keys"][:clients]
                _send(pipe, {"ports": [ports[k] for k in keys], "type_rate": type_rate})
            attached = [await _recv(p) for p in pipes]
            before = vm_status(daemon.pid)
            meter = CpuMeter(daemon.pid, [p.pid or 0 for p in procs])
            sampler = Sampler(daemon.pid)
            go = time.perf_counter() + 0.5
            for pipe in pipes:
                _send(pipe, {"go": go})
            results = [await _recv(p) for p in pipes]
            cpu = meter.stop()
            sampler.stop()
            after = vm_status(daemon.pid)
            rows = daemon.consoles()
        finally:
            for proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    drain = max(r["ended"] for r in results) - go
    window = sampler.window(go, go + drain)
    stats = merge(r["stats"] for r in results)
    counts = stats.counts
    failed = migrating - sum(r["outcomes"].get("ok", 0) for r in results)
    begin = percentiles(stats.samples["begin_answer"])
    gen_cpu = [round(r["cpu_s"] / drain, 2) if drain > 0 else None for r in results]
    total_gen_cpu = sum(r["cpu_s"] for r in results)
    result: dict[str, Any] = {
        "vms": vms,
        "vms_requested": requested,
        "limited_by": None if vms == requested else f"RLIMIT_NOFILE hard limit {limit}",
        "vms_connected": sum(h["connected"] for h in hellos),
        "consoles_listed": len(rows),
        "consoles_with_port": sum(1 for r in rows if r["port"] is not None),
        "connect_s": round(connect_s, 3),
        "migrating": migrating,
        "typing_clients": sum(a["clients"] for a in attached),
        "type_rate_per_client": type_rate,
        "workers": workers,
        "drain_s": round(drain, 3),
        "vmotions_per_s": round(migrating / drain, 1) if drain > 0 else None,
        "begin_goahead_ms": begin,
        "budget_ms": BUDGET_MS,
        "within_budget": bool(begin) and begin["max"] <= BUDGET_MS,
        "vmotion_ms": percentiles(stats.samples["vmotion"]),
        "typed_ms": percentiles(stats.samples["typed"]),
        "vmotions_failed": failed,
        "failures": stats.failures[:5],
        "typed_markers": counts["typed_markers"],
        "bytes_lost": counts["lost_bytes"],
        "bytes_repeated": counts["repeated_bytes"],
        # Daemon CPU over the storm itself (go .. last COMPLETE), from the sampler.
        "daemon": {
            **window,
            "rss_kib_before": before.get("VmRSS"),
            "rss_kib_after": after.get("VmRSS"),
            "rss_kib_peak": after.get("VmHWM"),
        },
        # CPU over the whole exchange (go, storm, settling, reports): "other" well
        # above 0 means the machine was busy with something else.
        "cpu_cores": cpu,
        # The generator's ceiling: CPU per vMotion in the workers (both ends of every
        # vMotion, plus typing and checking) says how many vMotions/s one core of
        # generator can drive; a worker near 1.0 core would have been the bottleneck.
        "generator": {
            "worker_cpu_cores": gen_cpu,
            "cpu_us_per_vmotion": round(total_gen_cpu / migrating * 1e6, 1) if migrating else None,
            "ceiling_vmotions_per_s_per_core": round(migrating / total_gen_cpu, 1)
            if total_gen_cpu
            else None,
        },
    }
    result["ok"] = (
        failed == 0
        and counts["lost_bytes"] == 0
        and counts["repeated_bytes"] == 0
        and result["vms_connected"] == vms
        and result["typing_clients"] == typing
    )
    result["met"] = result["ok"] and result["within_budget"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--small", action="store_true", help="toy size (smoke run)")
    for name, default in FULL.items():
        kind = float if isinstance(default, float) else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {default}")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds the run may take")
    args = parser.parse_args(argv)
    params = dict(QUICK if args.quick else FULL)
    for name in params:
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    if params["typing"] > params["migrating"] or params["migrating"] > params["vms"]:
        parser.error("need typing <= migrating <= vms")
    calibration = calibration_ms()
    began = time.perf_counter()

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.limit):
            return await storm(**params)

    try:
        result = asyncio.run(bounded())
    except Exception as exc:  # report, as daemon_bench does
        result = {"ok": False, "met": False, "error": f"{type(exc).__name__}: {exc}"}
    line = {
        "scenario": "storm",
        "quick": args.quick,
        "params": params,
        "calibration_ms": calibration,
        "wall_s": round(time.perf_counter() - began, 2),
        **result,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(line), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
