"""Daemon CPU per vMotion, with a typing client on every VM, against vspcd or another vSPC.

N fake VMs (vspc-sim's `Fleet`, docs/vspc-sim.md: one sans-IO `EsxiSession` per
connection) connect; a typing client sits on every VM's console; then every VM runs K
`success` vMotions back to back (BEGIN -> GOAHEAD -> a new connection with PEER ->
PEER-OK -> COMPLETE -> the source closes, docs/protocol.md §4.2), all VMs at once.
The figure is the concentrator's CPU (utime + stime from /proc/PID/stat) from "go"
to the last COMPLETE, divided by the vMotions done.  The clients type throughout,
and vspc-sim's checker says whether every marker reached the VM once and in order
(`bytes_lost`, `bytes_repeated`).  Printed: one JSON line per run, then a summary
line (median over `--repeat` runs).

Targets (`--target`):

- `ours`: vspcd as a subprocess (daemon_bench's `Daemon`: 127.0.0.1, a console
  port per VM, `--event-loop` passed through); the clients are raw telnet clients
  on each console's port (from the admin socket's `list`).
- `vmware`: the command line `--vmware-cmd` (run in a scratch directory, its
  stdout to a file there), expected to listen for VMs on 127.0.0.1:`--vmware-port`
  and for its admin clients on `--vmware-admin-port`.  vmware/vspc has no console
  ports: a client asks for a VM's serial port with its telnet admin option (code
  0xe9, subcommand VM_PORT_SET_CONNECTION with the VM's UUID as 32 upper-case hex
  digits), after which telnet data flows both ways.  docs/benchmarks.md says how
  it was run; nothing of it is in this repository.

Also reported: `typing_only_ms_per_s`, the concentrator's CPU per second of typing
alone (measured for `--idle` s before "go"), so the clients' share of the vMotion
figure can be told apart, and the generator's own CPU per vMotion (its ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from daemon_bench import HOST, calibration_ms, proc_cpu_seconds, running_daemon, settle
from storm_bench import _recv, _send, _slices, raise_nofile

from vspc.vspctui.sim.client import TypingClient
from vspc.vspctui.sim.fleet import Fleet
from vspc.vspctui.sim.identity import generate
from vspc.vspctui.sim.report import merge, percentiles
from vspc.vspctui.sim.vm import Kind, SimVm, Target

TAG = 0xC0B0  # generated UUIDs of this benchmark: 5eed0000c0b0...
IAC, SB, SE, DO = 0xFF, 0xFA, 0xF0, 0xFD
ADMIN_OPTION = 0xE9  # vmware/vspc's VMWARE-VSPC-ADMIN telnet option
SET_CONNECTION, READWRITE = 0x20, 0x00


class AdminTypingClient(TypingClient):
    """A `TypingClient` that first asks a vmware/vspc admin port for one VM's port."""

    def __init__(self, port_id: str, *args: Any) -> None:
        super().__init__(*args)
        self.port_id = port_id

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        request = bytes((SET_CONNECTION, READWRITE)) + self.port_id.encode()
        transport.write(
            bytes((IAC, DO, ADMIN_OPTION, IAC, SB, ADMIN_OPTION)) + request + bytes((IAC, SE))
        )


# -- a worker process ---------------------------------------------------------------


def worker_main(args: dict[str, Any], conn: Connection) -> None:
    factory = None
    if args["gen_loop"] == "uvloop" and importlib.util.find_spec("uvloop") is not None:
        import uvloop  # the generator only; the concentrator picks its own loop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_worker(args, conn))


async def _attach_admin(fleet: Fleet, port: int) -> None:
    loop = asyncio.get_running_loop()
    for number, vm in enumerate(fleet.vms, fleet_first(fleet)):
        name = f"c{number}"
        args = (vm.identity.uuid.upper(), name, fleet.stats, fleet.typed_at)
        _, client = await loop.create_connection(lambda a=args: AdminTypingClient(*a), HOST, port)
        fleet.clients.append(client)
        fleet.stats.count("clients")


def fleet_first(fleet: Fleet) -> int:
    return int(fleet.vms[0].identity.name.rsplit("-", 1)[1]) if fleet.vms else 0


async def _chain(vm: SimVm, count: int) -> list[str]:
    return [await vm.vmotion(Kind.SUCCESS) for _ in range(count)]


async def _worker(args: dict[str, Any], conn: Connection) -> None:
    identities = generate(args["count"], prefix="cpu", tag=TAG, start=args["start"])
    fleet = Fleet(identities, Target(HOST, args["port"], timeout=60.0))
    await fleet.connect(concurrency=64)
    _send(conn, {"connected": len(fleet.connected), "keys": [i.uuid for i in identities]})
    order = await _recv(conn)
    if order.get("admin_port"):
        await _attach_admin(fleet, order["admin_port"])
    else:
        await fleet.attach(HOST, order["ports"], first=args["start"])
    await asyncio.sleep(0.3)  # let every attach finish before anything is typed
    fleet.start_typing(args["type_rate"])
    _send(conn, {"clients": len(fleet.clients)})
    order = await _recv(conn)
    cpu_before = time.process_time()
    await asyncio.sleep(max(0.0, order["go"] - time.perf_counter()))
    chains = await asyncio.gather(*(_chain(vm, args["per_vm"]) for vm in fleet.vms))
    ended = time.perf_counter()
    cpu = time.process_time() - cpu_before
    _send(conn, {"ended": ended, "cpu_s": cpu})  # the parent reads the CPU now
    outcomes = [o for chain in chains for o in chain]
    await fleet.settle(wait=30.0)
    report = fleet.report()
    fleet.close()
    _send(
        conn,
        {
            "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
            "stats": {**fleet.stats.to_raw(), "counts": report["counts"]},
        },
    )


# -- the concentrator ---------------------------------------------------------------


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the concentrator exited ({proc.returncode})")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def running_vmware(cmd: str, port: int, admin_port: int) -> Iterator[int]:
    """`cmd` in a scratch directory (its disk backend writes relative paths there)."""
    workdir = Path(tempfile.mkdtemp(prefix="vspc-bench-vmware-"))
    with open(workdir / "stdout.log", "wb") as log:
        proc = subprocess.Popen(shlex.split(cmd), cwd=workdir, stdout=log, stderr=log)
    try:
        _wait_port(port, proc)
        _wait_port(admin_port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def concentrator(args: argparse.Namespace, vms: int) -> Iterator[tuple[int, int, Any]]:
    """(pid, VM port, ports or admin port) of a freshly started concentrator."""
    if args.target == "vmware":
        with running_vmware(args.vmware_cmd, args.vmware_port, args.vmware_admin_port) as pid:
            yield pid, args.vmware_port, None
        return
    # Every fake host is 127.0.0.1: lift the per-address caps real hosts never meet.
    extra = ["--unidentified-per-host", "0", "--unidentified-limit", "0"]
    if args.event_loop:
        extra += ["--event-loop", args.event_loop]
    with running_daemon(vm_ports=True, port_count=vms + 100, extra_args=extra) as daemon:
        yield daemon.pid, daemon.proxy_port, daemon


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    context = multiprocessing.get_context("spawn")
    with concentrator(args, args.vms) as (pid, port, daemon):
        pipes, procs = [], []
        for start, count in _slices(args.vms, args.workers):
            parent, child = context.Pipe()
            work = {
                "port": port,
                "start": start,
                "count": count,
                "per_vm": args.per_vm,
                "type_rate": args.type_rate,
                "gen_loop": args.gen_loop,
            }
            proc = context.Process(target=worker_main, args=(work, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        try:
            hellos = [await _recv(p) for p in pipes]
            if daemon is not None:
                settle(daemon)
                ports = {row["uuid"].replace("-", ""): row["port"] for row in daemon.consoles()}
                for pipe, hello in zip(pipes, hellos, strict=True):
                    _send(pipe, {"ports": [ports[k] for k in hello["keys"]]})
            else:
                await asyncio.sleep(0.5)  # identification ends after WILL-PROXY there
                for pipe in pipes:
                    _send(pipe, {"admin_port": args.vmware_admin_port})
            attached = [await _recv(p) for p in pipes]
            await asyncio.sleep(0.5)
            idle0, t0 = proc_cpu_seconds(pid), time.perf_counter()
            await asyncio.sleep(args.idle)
            idle1, t1 = proc_cpu_seconds(pid), time.perf_counter()
            go = time.perf_counter() + 0.2
            for pipe in pipes:
                _send(pipe, {"go": go})
            await asyncio.sleep(max(0.0, go - time.perf_counter()))
            cpu0, sys0 = proc_cpu_seconds(pid), proc_cpu_seconds(pid, kernel_only=True)
            ends = [await _recv(p) for p in pipes]
            cpu1, sys1 = proc_cpu_seconds(pid), proc_cpu_seconds(pid, kernel_only=True)
            results = [await _recv(p, wait=120.0) for p in pipes]
        finally:
            for proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    drain = max(e["ended"] for e in ends) - go
    stats = merge(r["stats"] for r in results)
    counts = stats.counts
    planned = args.vms * args.per_vm
    done = sum(r["outcomes"].get("ok", 0) for r in results)
    gen_cpu = sum(e["cpu_s"] for e in ends)
    typing_rate = (idle1 - idle0) / (t1 - t0)
    result: dict[str, Any] = {
        "vms_connected": sum(h["connected"] for h in hellos),
        "clients": sum(a["clients"] for a in attached),
        "vmotions": planned,
        "vmotions_ok": done,
        "drain_s": round(drain, 3),
        "vmotions_per_s": round(done / drain, 1) if drain > 0 else None,
        "daemon_cpu_s": round(cpu1 - cpu0, 3),
        "daemon_cpu_ms_per_vmotion": round((cpu1 - cpu0) / done * 1e3, 4) if done else None,
        "daemon_kernel_ms_per_vmotion": round((sys1 - sys0) / done * 1e3, 4) if done else None,
        "daemon_cores": round((cpu1 - cpu0) / drain, 2) if drain > 0 else None,
        "typing_only_ms_per_s": round(typing_rate * 1e3, 2),
        "generator_cpu_ms_per_vmotion": round(gen_cpu / done * 1e3, 4) if done else None,
        "vmotion_ms": percentiles(stats.samples["vmotion"]),
        "typed_markers": counts["typed_markers"],
        "markers_received": counts["markers_received"],
        "bytes_lost": counts["lost_bytes"],
        "bytes_repeated": counts["repeated_bytes"],
        "failures": stats.failures[:5],
    }
    result["ok"] = (
        done == planned
        and counts["lost_bytes"] == 0
        and counts["repeated_bytes"] == 0
        and result["clients"] == args.vms
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("ours", "vmware"), default="ours")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), help="vspcd's loop")
    parser.add_argument("--vmware-cmd", help="the command line that starts VMware's vspc")
    parser.add_argument("--vmware-port", type=int, default=13370)
    parser.add_argument("--vmware-admin-port", type=int, default=13371)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--per-vm", type=int, default=20, help="vMotions per VM (20)")
    parser.add_argument("--type-rate", type=float, default=10.0, help="markers/s per client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gen-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--idle", type=float, default=1.0, help="seconds of typing alone")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds a run may take")
    args = parser.parse_args(argv)
    if args.target == "vmware" and not args.vmware_cmd:
        parser.error("--target vmware needs --vmware-cmd")
    label = args.target if args.target == "vmware" else f"ours/{args.event_loop or 'auto'}"
    runs = []
    for number in range(args.repeat):
        calibration = calibration_ms()
        began = time.perf_counter()

        async def bounded() -> dict[str, Any]:
            async with asyncio.timeout(args.limit):
                return await one_run(args)

        try:
            result = asyncio.run(bounded())
        except Exception as exc:  # report, as daemon_bench does
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        line = {
            "scenario": "vmotion_cpu",
            "target": label,
            "run": number + 1,
            "params": {k: getattr(args, k) for k in ("vms", "per_vm", "type_rate", "workers")},
            "calibration_ms": calibration,
            "wall_s": round(time.perf_counter() - began, 2),
            **result,
        }
        print(json.dumps(line), flush=True)
        runs.append(line)
    figures = [r["daemon_cpu_ms_per_vmotion"] for r in runs if r.get("daemon_cpu_ms_per_vmotion")]
    summary = {
        "scenario": "vmotion_cpu_summary",
        "target": label,
        "daemon_cpu_ms_per_vmotion": figures,
        "median": round(statistics.median(figures), 4) if figures else None,
        "bytes_lost": sum(r.get("bytes_lost", 0) for r in runs),
        "bytes_repeated": sum(r.get("bytes_repeated", 0) for r in runs),
        "all_ok": all(r.get("ok") for r in runs),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
