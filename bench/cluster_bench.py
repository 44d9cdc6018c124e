"""Cluster benchmark (docs/cluster.md, docs/benchmarks.md "Cluster"): real redis-server + vspcd
nodes on loopback, driven from this process with asyncio.

Scenarios (`--only a,b`; each prints ONE JSON line):

- `vmotion`: M consoles, all served by node a, each run K vMotions back to back,
  all M at once; the destination connection goes to node a (`same_node`) or to
  node b (`cross_node`, relayed to a over the inter-node link).  Reports vMotions/s
  and the percentiles of BEGIN -> GOAHEAD and PEER -> PEER-OK as the fake VM sees
  them (the relay adds a hop to PEER -> PEER-OK; BEGIN -> GOAHEAD never leaves a).
- `reuse_port`: N nodes on one host share one ESXi port (--reuse-port); V VMs
  connect through it, C at a time; VMs/s (to WILL-PROXY), seconds until `list` shows
  all of them (each node claims its consoles in the registry), and how the kernel
  spread them (from the `node` field of `list`).

Fake VMs use `vspc.common.esxi.EsxiSession` (the VM side of docs/protocol.md §3/§4).
`--quick` runs toy sizes.  Not a test: figures depend on the machine; each line
carries `calibration_ms` (a fixed pure-Python loop) to compare machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from vspc.common import esxi

LEASE = "2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def calibration_ms() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i % 7
    return round((time.perf_counter() - start) * 1000, 1)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}


class PortTaken(Exception):
    """A port picked as free was taken before a node bound it (another process on a
    busy machine): the scenario starts over with new ports."""


def run_scenario(make: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    for _ in range(3):
        try:
            return asyncio.run(make())
        except PortTaken:
            continue
    raise SystemExit("ports kept being taken; is the machine out of ports?")


class Cluster:
    """redis-server + vspcd nodes in a temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis_port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        secret = tmp / "secret"
        secret.write_bytes(os.urandom(24).hex().encode())
        self.secret = secret

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("cluster_bench needs redis-server (apt-get install redis-server)")
        self.procs.append(
            subprocess.Popen(
                [
                    redis,
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp),
                ],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        )

    def start_node(self, name: str, proxy_port: int, *extra: str) -> None:
        sock = self.tmp / f"{name}.sock"
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vspc.vspcd",
                    "--cluster",
                    f"redis://127.0.0.1:{self.redis_port}/0",
                    "--node-id",
                    name,
                    "--node-address",
                    f"127.0.0.1:{_free_port()}",
                    "--cluster-secret-file",
                    str(self.secret),
                    "--cluster-lease",
                    LEASE,
                    "--proxy-iface",
                    "127.0.0.1",
                    "--proxy-port",
                    str(proxy_port),
                    "--no-vm-ports",
                    "--admin-socket",
                    str(sock),
                    "--no-notices",
                    *extra,
                ],
                stderr=log,
            )  # fmt: skip
        )
        self.nodes[name] = {"proxy": proxy_port, "sock": sock, "log": self.tmp / f"{name}.log"}

    async def ready(self) -> None:
        deadline = time.monotonic() + 20
        for name, node in self.nodes.items():
            while f"cluster node {name}: registry reconciled" not in node["log"].read_text():
                text = node["log"].read_text()
                if os.strerror(errno.EADDRINUSE).lower() in text.lower():  # any spelling
                    raise PortTaken(name)
                if time.monotonic() > deadline:
                    raise SystemExit(f"node {name} did not start:\n{text}")
                await asyncio.sleep(0.05)

    async def list(self, name: str) -> list[dict[str, Any]]:
        reader, writer = await asyncio.open_unix_connection(
            str(self.nodes[name]["sock"]), limit=1 << 26
        )
        writer.write(b'{"cmd":"list","id":1}\n')
        reply = json.loads(await reader.readline())
        writer.close()
        rows: list[dict[str, Any]] = reply["vms"]
        return rows

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Vm:
    """A fake ESXi connection (source or destination) with timestamps."""

    def __init__(self, session: esxi.EsxiSession) -> None:
        self.session = session
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: asyncio.Queue[esxi.EsxiEvent] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, uuid: str, cookie: bytes | None = None) -> Vm:
        vm = cls(esxi.EsxiSession(uuid, f"vm-{uuid[:6]}"))
        vm.reader, vm.writer = await asyncio.open_connection("127.0.0.1", port)
        if cookie is None:
            vm.session.connect_source()
        else:
            vm.session.connect_destination(cookie)
        vm.flush()
        vm.task = asyncio.create_task(vm.pump())
        return vm

    def flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.writer is not None:
            self.writer.write(out)

    async def pump(self) -> None:
        assert self.reader is not None
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.reader.read(65536):
                for event in self.session.receive_data(data):
                    self.events.put_nowait(event)
                self.flush()

    async def wait(self, *kinds: type[Any]) -> Any:
        async with asyncio.timeout(10):
            while True:
                event = await self.events.get()
                if isinstance(event, kinds):
                    return event

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def _migrate(
    vm: Vm, n: int, rounds: int, port: int, goahead: list[float], peer_ok: list[float]
) -> None:
    """`rounds` vMotions of one console, the destination always on `port`."""
    for r in range(rounds):
        seq = (n * 1000 + r).to_bytes(4, "big")
        t0 = time.perf_counter()
        vm.session.begin(seq)
        vm.flush()
        await vm.wait(esxi.Goahead)
        goahead.append(time.perf_counter() - t0)
        assert vm.session.cookie is not None
        dst = await Vm.connect(port, vm.session.uuid, vm.session.cookie)
        t1 = time.perf_counter()
        await dst.wait(esxi.PeerOk)
        peer_ok.append(time.perf_counter() - t1)
        dst.session.complete(seq)
        dst.flush()
        await vm.close()
        vm = dst
    await vm.close()


async def scenario_vmotion(consoles: int, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"scenario": "vmotion", "consoles": consoles, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        cluster.start_redis()
        cluster.start_node("a", _free_port())
        cluster.start_node("b", _free_port())
        try:
            await cluster.ready()
            for mode, dest in (("same_node", "a"), ("cross_node", "b")):
                sources = [
                    await Vm.connect(
                        cluster.nodes["a"]["proxy"],
                        f"{'aa' if mode == 'same_node' else 'bb'}{i:030x}",
                    )
                    for i in range(consoles)
                ]
                for vm in sources:
                    await vm.wait(esxi.ProxyAnswer)
                goahead: list[float] = []
                peer_ok: list[float] = []
                port = cluster.nodes[dest]["proxy"]
                start = time.perf_counter()
                await asyncio.gather(
                    *(
                        _migrate(vm, n, rounds, port, goahead, peer_ok)
                        for n, vm in enumerate(sources)
                    )
                )
                elapsed = time.perf_counter() - start
                result[mode] = {
                    "vmotions_per_s": round(consoles * rounds / elapsed, 1),
                    "begin_to_goahead": percentiles(goahead),
                    "peer_to_peer_ok": percentiles(peer_ok),
                }
        finally:
            cluster.stop()
    return result


async def scenario_reuse_port(nodes: int, vms: int, concurrency: int) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": nodes}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        cluster.start_redis()
        shared = _free_port()
        for i in range(nodes):
            cluster.start_node(f"n{i}", shared, "--reuse-port")
        try:
            await cluster.ready()
            gate = asyncio.Semaphore(concurrency)
            conns: list[Vm] = []

            async def one(i: int) -> None:
                async with gate:
                    vm = await Vm.connect(shared, f"{i:032x}")
                    await vm.wait(esxi.ProxyAnswer)
                    conns.append(vm)

            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(vms)))
            elapsed = time.perf_counter() - start
            # WILL-PROXY precedes the registry claim: wait until every console is listed.
            rows = await cluster.list("n0")
            deadline = time.monotonic() + 10
            while len(rows) < vms and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                rows = await cluster.list("n0")
            listed_after = time.perf_counter() - start
            spread: dict[str, int] = {}
            for row in rows:
                spread[row.get("node", "?")] = spread.get(row.get("node", "?"), 0) + 1
            result.update(
                vms_per_s=round(vms / elapsed, 1),
                all_listed_s=round(listed_after, 3),
                listed=len(rows),
                spread=dict(sorted(spread.items())),
            )
            for vm in conns:
                await vm.close()
        finally:
            cluster.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenarios (vmotion, reuse_port)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke run)")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else {"vmotion", "reuse_port"}
    calibration = calibration_ms()
    if "vmotion" in wanted:
        sizes = (5, 2) if args.quick else (50, 10)
        line = run_scenario(lambda: scenario_vmotion(*sizes))
        print(json.dumps({**line, "calibration_ms": calibration}), flush=True)
    if "reuse_port" in wanted:
        # One node, then several sharing the port: what each extra node adds.
        counts, vms, concurrency = ((1, 2), 20, 10) if args.quick else ((1, 3), 1500, 50)
        runs = [
            run_scenario(functools.partial(scenario_reuse_port, n, vms, concurrency))
            for n in counts
        ]
        line = {"scenario": "reuse_port", "vms": vms, "runs": runs}
        print(json.dumps({**line, "calibration_ms": calibration}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
