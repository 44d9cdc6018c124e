"""Daemon benchmark: the real vspcd under load over loopback (docs/benchmarks.md).

Every scenario starts `python -m vspc.vspcd` as a subprocess (127.0.0.1 only; the
proxy port found by binding port 0, the per-VM range below the ephemeral range;
ready once the proxy port and the admin socket answer) and drives it from this
process with asyncio.  Where one loop would disturb the measurement, a helper process
does part of the work: the 1,000 chattering VMs of `keystroke`, the telnet readers of
`stream` and `fanout`.  Fake VMs speak just enough of docs/protocol.md §3/§4:
identification is one precomputed write (`IAC WILL 232` + KNOWN-SUBOPTIONS-1 +
DO-PROXY + VM-VC-UUID + VM-NAME, built with `vspc.common.vmware.encode`, a unique UUID
per VM) and is done when WILL-PROXY (`ff fa e8 47 ff f0`) comes back; counts are then
checked through the admin socket (`list`, `show`).

Scenarios (`--only a,b`; each prints ONE JSON line, then a summary line follows):

- `connect`: N VMs connect + identify with --no-vm-ports, C at a time; VMs/s, the
  identification latency, daemon CPU per VM, RSS per idle VM.
- `connect_ports`: the same with a telnet port bound per console.
- `scale`: 16,000 identified VMs in one daemon (--no-vm-ports).
- `vmotion`: M consoles each run K vMotions back to back (BEGIN -> GOAHEAD cookie ->
  new connection with KS-1 + PEER(cookie) -> PEER-OK -> VM-VC-UUID, VM-NAME,
  COMPLETE; the source closes), all M at once, from W generator processes;
  vMotions/s, daemon and generator CPU per vMotion.  With `type_rate` > 0 a telnet
  client on every console types numbered markers meanwhile, each checked to reach
  the VM exactly once and in order.
- `stream`: one VM sends S MiB of console text to one raw telnet client on the
  console's port, for several S; MB/s (linear cost means flat MB/s).  With
  `--set stream.log_flush=SECONDS` the daemon also writes console logs (`--log-dir`
  in its scratch directory, that `--log-flush`): the cost of the flush policy.
- `fanout`: one VM, several clients on its console; aggregate MB/s.
- `keystroke`: a client types one byte, the VM receives it and echoes it, the client
  receives the echo; percentiles idle and while 1,000 other VMs each write a short
  line every 100 ms.

`--set SCENARIO.PARAM=JSON` changes a size; `--quick` runs every scenario at toy sizes
(tests/test_bench_smoke.py checks the JSON shape of that run, never a figure).
`--event-loop asyncio|uvloop` picks the daemon's loop (without it the daemon's
`auto` picks uvloop wherever it is installed).
Diagnosis: VSPC_BENCH_PROFILE=FILE runs the daemon under cProfile (CPU time),
VSPC_BENCH_WRAP="strace -f -c -o FILE" under a wrapper.  Not a test: figures depend
on the machine, so each line carries `calibration_ms` (a fixed pure-Python loop).
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
import random
import re
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vspc.common import vmware as vm
from vspc.common.esxi import ESXI_KNOWN_CODES
from vspc.vspctui.sim.report import percentiles  # shared with vspc-sim

HOST = "127.0.0.1"
MIB = 1 << 20
# Bytes the stream writer may be ahead of its slowest reader: below vspcd's default
# --client-queue (1 MiB), so a reader that lags never loses output (see `_send`).
STREAM_WINDOW = 768 * 1024

# Goals (docs/benchmarks.md; it also says what the public vSPCs reach).
GOALS = {
    "connect_vms_per_s": 3000.0,
    "vmotions_per_s": 5000.0,
    "vmotions_typing_per_s": 4000.0,  # a typing client on every VM
    "stream_mb_per_s": 100.0,
    "keystroke_p99_ms": 2.0,
    "idle_kib_per_vm": 16.0,
    "scale_vms": 16000,
}

# -- wire bytes (docs/protocol.md §2, §3) -------------------------------------------------

IAC, SB, SE, EXT = 0xFF, 0xFA, 0xF0, 0xE8
WILL_EXT = bytes((IAC, 0xFB, EXT))
WILL_COMPORT = bytes((IAC, 0xFB, 0x2C))
KS1 = vm.encode(vm.KnownSuboptions1(ESXI_KNOWN_CODES))
DO_PROXY = vm.encode(vm.DoProxy("S", "vSPC.py"))
LINE = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"  # no 0xe8/0xf0/0xff


# Extra vspcd arguments for every scenario (`--daemon-arg`, e.g. --event-loop=uvloop).
DAEMON_ARGS: list[str] = []


def vm_key(tag: int, index: int) -> str:
    """A unique canonical UUID (32 hex digits) per scenario `tag` and VM `index`."""
    return f"{tag:08x}{index:024x}"


def ident_tail(key: str, name: str) -> bytes:
    """VM-VC-UUID + VM-NAME, as a VM answers the proxy's GETs."""
    return vm.encode(vm.VmVcUuid(vm.wire_uuid(key))) + vm.encode(vm.VmName(name))


def hello(key: str, name: str) -> bytes:
    """Everything a fresh VM says, in one write: WILL 232, KS-1, DO-PROXY, UUID, name."""
    return WILL_EXT + KS1 + DO_PROXY + ident_tail(key, name)


def find_frame(buf: bytearray, code: int) -> tuple[bytes, int] | None:
    """The first complete `IAC SB 232 <code> ... IAC SE` in `buf`: (body, end) or None.

    The body is unescaped (`ff ff` -> `ff`); `end` is the index just past `IAC SE`.
    """
    prefix = bytes((IAC, SB, EXT, code))
    start = buf.find(prefix)
    while start >= 0:
        pos = start + 4
        while True:
            iac = buf.find(b"\xff", pos)
            if iac < 0 or iac + 1 >= len(buf):
                return None  # incomplete: wait for more bytes
            if buf[iac + 1] == IAC:
                pos = iac + 2
                continue
            if buf[iac + 1] == SE:
                return bytes(buf[start + 4 : iac]).replace(b"\xff\xff", b"\xff"), iac + 2
            break  # not a frame end; look for the next prefix
        start = buf.find(prefix, start + 1)
    return None


# -- the daemon under test --------------------------------------------------------


def free_port() -> int:
    """A free TCP port on HOST, found by binding port 0."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_range_start(count: int) -> int:
    """Start of `count` per-VM telnet ports, below the ephemeral range.

    Not a port from binding 0: that lies inside the ephemeral range, where this
    process's own thousands of outgoing connections hold ports on 127.0.0.1.  The
    daemon skips a busy port with one failed bind(2) per new console, so the figure
    would measure our port usage (operations advice: keep -r outside that range).
    The first port is checked free by binding it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = max(1024, low - count - 1000)
    for candidate in range(start, 1024, -997):
        with socket.socket() as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                continue
        return candidate
    return start


def proc_cpu_seconds(pid: int, *, kernel_only: bool = False) -> float:
    """User + system (or only system) CPU a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) if kernel_only else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time every process on the machine has used (/proc/stat, all CPUs)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def calibration_ms() -> float:
    """Best of 3 timings of a fixed pure-Python workload (no vspc code).

    The development VM's speed drifts by tens of percent over minutes; printed next
    to every scenario, this tells a slow phase of the machine from a slower daemon.
    """
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        table: dict[int, int] = {}
        for i in range(200_000):
            table[i & 1023] = table.get(i & 1023, 0) + i * 3
        best = min(best, time.perf_counter() - began)
    return round(best * 1e3, 2)


class CpuMeter:
    """CPU used during a measurement, in cores: the daemon, this generator process
    (plus helper processes in `pids`), and everything else on the machine.  "other"
    well above 0 means the figure was taken on a busy machine."""

    def __init__(self, daemon_pid: int, pids: Sequence[int] = ()) -> None:
        self.daemon_pid, self.pids = daemon_pid, list(pids)
        self.began = time.perf_counter()
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        generator = time.process_time() + sum(proc_cpu_seconds(p) for p in self.pids)
        return (
            proc_cpu_seconds(self.daemon_pid),
            proc_cpu_seconds(self.daemon_pid, kernel_only=True),
            generator,
            busy_cpu_seconds(),
        )

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.began
        end = self._sample()
        daemon, kernel, generator, busy = (b - a for a, b in zip(self.start, end, strict=True))
        return {
            "daemon": round(daemon / elapsed, 2),
            "daemon_kernel": round(kernel / elapsed, 2),  # the part spent in syscalls
            "generator": round(generator / elapsed, 2),
            "other": round(max(0.0, busy - daemon - generator) / elapsed, 2),
        }


# `python -c PROFILED OUT ARGS...`: vspcd under cProfile, timed in CPU seconds (not
# wall time, which a busy machine would smear over whatever happened to be running).
PROFILED = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], ["vspcd", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, "vspc.vspcd", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profile.dump_stats(out)
"""


class Daemon:
    """vspcd in a subprocess: start, readiness, RSS/CPU from /proc, admin, stop."""

    def __init__(
        self,
        workdir: Path,
        *,
        vm_ports: bool,
        port_count: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.proxy_port = free_port()
        profile = os.environ.get("VSPC_BENCH_PROFILE")  # cProfile output file, if set
        # A command the daemon runs under, e.g. "strace -c -o /tmp/sys.txt" (diagnosis
        # only: RSS and CPU figures then describe the wrapper, not vspcd).
        wrap = shlex.split(os.environ.get("VSPC_BENCH_WRAP", ""))
        self.range_start = port_range_start(port_count) if vm_ports else 0
        self.admin_path = workdir / "admin.sock"
        self.log_path = workdir / "vspcd.log"
        self.args = [
            *wrap,
            sys.executable,
            *(["-c", PROFILED, profile] if profile else ["-m", "vspc.vspcd"]),
            "--proxy-iface",
            HOST,
            "--proxy-port",
            str(self.proxy_port),
            "-i",
            HOST,
            "--admin-socket",
            str(self.admin_path),
        ]
        if vm_ports:
            self.args += ["-r", str(self.range_start)]
        else:
            self.args += ["--no-vm-ports"]
        self.args += [arg.replace("{workdir}", str(workdir)) for arg in extra_args]
        if os.geteuid() == 0:  # a throwaway loopback daemon (vspcd refuses root otherwise)
            self.args += ["--allow-root"]
        self.args += DAEMON_ARGS
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapped = bool(wrap)

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until both the proxy port and the admin socket answer."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vspcd exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.proxy_port), timeout=0.5):
                    pass
                self.admin({"cmd": "hello", "client": "daemon_bench"})
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"vspcd not ready after {timeout} s: {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """VmRSS of the daemon, KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon has used so far."""
        return proc_cpu_seconds(self.pid)

    def admin(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """One admin-protocol request on a fresh Unix-socket connection; the reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.admin_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = bytearray()
            while b"\n" not in buf:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise OSError("admin connection closed")
                buf += chunk
        reply: dict[str, Any] = json.loads(buf[: buf.index(b"\n")])
        if not reply.get("ok"):
            raise RuntimeError(f"admin {request}: {reply}")
        return reply

    def consoles(self) -> list[dict[str, Any]]:
        reply = self.admin({"cmd": "list"})
        # docs/admin-protocol.md names the list "consoles"; the daemon says "vms".
        return list(reply["consoles"] if "consoles" in reply else reply["vms"])

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.wrapped:  # signal vspcd itself, so the wrapper can finish its report
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), signal.SIGTERM)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def running_daemon(
    *, vm_ports: bool, port_count: int = 0, extra_args: Sequence[str] = ()
) -> Iterator[Daemon]:
    workdir = Path(tempfile.mkdtemp(prefix="vspc-bench-"))
    daemon = Daemon(workdir, vm_ports=vm_ports, port_count=port_count, extra_args=extra_args)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- load generator: fake VMs and telnet clients -------------------------------------


class FakeVm(asyncio.Protocol):
    """One scripted ESXi connection.

    Writes `greeting` on connect and buffers what the proxy says until `idle()`, so
    `expect(code)` can wait for one option-232 frame.  `on_data`, if set, gets every
    later chunk instead (the keystroke probe).
    """

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.keep = True
        self.code = -1
        self.waiter: asyncio.Future[bytes] | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.resumed: asyncio.Future[None] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
        elif self.keep:
            self.buf += data
            if self.waiter is not None:
                self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def expect(self, code: int) -> asyncio.Future[bytes]:
        """A future for the body of the next `IAC SB 232 <code> ... IAC SE`."""
        self.code = code
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self._check()  # may resolve it at once (and clear self.waiter)
        return waiter

    def _check(self) -> None:
        found = find_frame(self.buf, self.code)
        if found is not None and self.waiter is not None:
            body, end = found
            del self.buf[:end]
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_result(body)

    def idle(self) -> None:
        """Identified: drop what is buffered and ignore further input."""
        self.keep = False
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client(asyncio.Protocol):
    """A raw telnet client (never negotiates) for the keystroke probe: after the
    proxy's option offers, every chunk goes to `on_data`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_data: Callable[[bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.first.done():
            self.first.set_result(None)  # the proxy's option offers
        elif self.on_data is not None:
            self.on_data(data)


WILL_PROXY = vm.Code.WILL_PROXY
GOAHEAD = vm.Code.VMOTION_GOAHEAD
PEER_OK = vm.Code.VMOTION_PEER_OK


async def connect_vms(
    port: int, greetings: Sequence[bytes], concurrency: int
) -> tuple[list[FakeVm], float, list[float]]:
    """Connect and identify one VM per greeting, `concurrency` in flight at a time.

    Returns the protocols, the wall time from the first connect to the last
    WILL-PROXY, and each VM's connect-to-WILL-PROXY latency.
    """
    loop = asyncio.get_running_loop()
    vms: list[FakeVm | None] = [None] * len(greetings)
    latencies: list[float] = []
    todo = iter(range(len(greetings)))

    async def worker() -> None:
        for index in todo:
            greeting = greetings[index]
            began = time.perf_counter()
            _, proto = await loop.create_connection(lambda g=greeting: FakeVm(g), HOST, port)
            await proto.expect(WILL_PROXY)
            latencies.append(time.perf_counter() - began)
            proto.idle()
            vms[index] = proto

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(greetings)))))
    elapsed = time.perf_counter() - began
    return [v for v in vms if v is not None], elapsed, latencies


async def close_all(vms: Sequence[FakeVm]) -> None:
    """Close every connection and wait (up to 10 s) until each is gone."""
    for proto in vms:
        proto.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(*(p.lost for p in vms))


def settle(daemon: Daemon, quiet: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until the daemon has used no CPU for `quiet` seconds (bounded)."""
    deadline = time.monotonic() + timeout
    last = daemon.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = daemon.cpu_seconds()
        if now - last < 0.02:
            return
        last = now


# -- scenarios ----------------------------------------------------------------------


async def scenario_connect(
    name: str, *, vms: int, concurrency: int, vm_ports: bool, warmup: int
) -> dict[str, Any]:
    """N VMs connect + identify; rate, latency, RSS per idle VM, console count."""
    tag = {"connect": 1, "connect_ports": 2, "scale": 3}[name]
    greetings = [hello(vm_key(tag, i), f"bench-{tag}-{i}") for i in range(warmup + vms)]
    with running_daemon(vm_ports=vm_ports, port_count=warmup + vms) as daemon:
        # A few VMs first, so one-time costs (imports, first allocations) stay out
        # of both the rate and the per-VM memory figure.
        warm, _, _ = await connect_vms(daemon.proxy_port, greetings[:warmup], 8)
        settle(daemon)
        rss_before = daemon.rss_kib()
        meter = CpuMeter(daemon.pid)
        protos, elapsed, latencies = await connect_vms(
            daemon.proxy_port, greetings[warmup:], concurrency
        )
        cpu = meter.stop()
        settle(daemon)
        rss_after = daemon.rss_kib()
        rows = daemon.consoles()
        await close_all(warm + protos)
    listed = sum(1 for r in rows if r["connected"])
    with_port = sum(1 for r in rows if r["port"] is not None)
    rate = vms / elapsed
    per_vm = (rss_after - rss_before) / vms
    result = {
        "vms": vms,
        "concurrency": concurrency,
        "vm_ports": vm_ports,
        "seconds": round(elapsed, 3),
        "vms_per_s": round(rate, 1),
        "identify_ms": percentiles(latencies),
        "cpu_cores": cpu,
        # Daemon CPU per VM: what one core allows (1e6 / it VMs/s), even on a busy box.
        "daemon_cpu_us_per_vm": round(cpu["daemon"] * elapsed / vms * 1e6, 1),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_per_vm": round(per_vm, 2),
        "consoles_connected": listed,
        "consoles_with_port": with_port,
        "ok": listed == vms + warmup and (not vm_ports or with_port == listed),
    }
    if name == "scale":
        result["goal"] = {"vms": GOALS["scale_vms"], "idle_kib_per_vm": GOALS["idle_kib_per_vm"]}
        result["met"] = listed >= GOALS["scale_vms"] and per_vm <= GOALS["idle_kib_per_vm"]
    else:
        result["goal"] = {
            "vms_per_s": GOALS["connect_vms_per_s"],
            "idle_kib_per_vm": GOALS["idle_kib_per_vm"],
        }
        result["met"] = rate >= GOALS["connect_vms_per_s"] and per_vm <= GOALS["idle_kib_per_vm"]
    return result


# -- vmotion: chains of vMotions from worker processes --------------------------------
#
# The generator needs about as much CPU per vMotion as the daemon (both ends of a TCP
# connection, the parsing of GOAHEAD and PEER-OK), so one generator process on the
# second core capped the figure before the daemon did.  The VMs are therefore split
# over `workers` spawned processes, each on uvloop when it is installed (the
# generator is not the thing measured), writing precomputed bytes and looking only for
# the two frames it waits for.  `generator_cpu_us_per_vmotion` is the generator's own
# ceiling: 10^6 / it vMotions/s per core it gets.

MARKER = re.compile(rb"<m(\d{8})>")  # a typed marker: no IAC, unlikely inside a frame


class ChainVm(FakeVm):
    """A FakeVm that also collects the typed markers it receives for its console."""

    def __init__(self, greeting: bytes, markers: list[int] | None) -> None:
        super().__init__(greeting)
        self.markers = markers  # the console's received markers, shared by its VMs
        self.carry = b""

    def data_received(self, data: bytes) -> None:
        if self.markers is not None and b"<m" in self.carry + data:
            text = self.carry + data
            end = 0
            for match in MARKER.finditer(text):
                self.markers.append(int(match.group(1)))
                end = match.end()
            rest = text[end:]
            cut = rest.rfind(b"<m")
            self.carry = rest[cut:][:11] if cut >= 0 else b""
        elif self.markers is not None:
            self.carry = b""
        super().data_received(data)


async def _chain(
    port: int, source: FakeVm, index: int, count: int, tail: bytes, state: dict[str, Any]
) -> None:
    """`count` vMotions of one console back to back; the final connection in state."""
    loop = asyncio.get_running_loop()
    markers = state["markers"][index]
    for k in range(count):
        began = time.perf_counter()
        sequence = struct.pack(">HH", index & 0xFFFF, k & 0xFFFF)
        goahead = source.expect(GOAHEAD)
        source.write(vm.encode(vm.VMotionBegin(sequence)))
        cookie = await goahead
        greeting = WILL_EXT + KS1 + vm.encode(vm.VMotionPeer(cookie)) + WILL_COMPORT
        _, dest = await loop.create_connection(lambda g=greeting: ChainVm(g, markers), HOST, port)
        await dest.expect(PEER_OK)
        dest.write(tail + vm.encode(vm.VMotionComplete(sequence)))
        source.close()  # ESXi's source FIN; either order with COMPLETE is normal (§4.2)
        source = dest
        state["samples"].append(time.perf_counter() - began)
    state["finals"][index] = source


def _vmotion_worker_main(args: dict[str, Any], control: Connection) -> None:
    factory = None
    if args["gen_loop"] != "asyncio" and importlib.util.find_spec("uvloop") is not None:
        import uvloop  # the generator only; vspcd chooses its own loop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_vmotion_worker(args, control))
    except Exception as exc:  # tell the parent at once instead of letting it time out
        control.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


async def _vmotion_worker(args: dict[str, Any], control: Connection) -> None:
    """One slice of the consoles: identify, attach typists, run the chains on "go"."""
    loop = asyncio.get_running_loop()
    port, indices, per_console = args["port"], args["indices"], args["per_console"]
    typing = args["type_rate"] > 0
    keys = [vm_key(4, i) for i in indices]
    tails = [ident_tail(k, f"bench-4-{i}") for k, i in zip(keys, indices, strict=True)]
    state: dict[str, Any] = {
        "markers": [[] if typing else None for _ in indices],
        "samples": [],
        "finals": [None] * len(indices),
    }
    vms: list[FakeVm] = []
    for n, tail in enumerate(tails):
        _, proto = await loop.create_connection(
            lambda g=WILL_EXT + KS1 + DO_PROXY + tail, m=state["markers"][n]: ChainVm(g, m),
            HOST,
            port,
        )
        await proto.expect(WILL_PROXY)
        vms.append(proto)
    control.send(("identified", keys))
    ports: dict[str, int] = await asyncio.to_thread(control.recv)
    clients: list[asyncio.Transport] = []
    for key in keys if typing else []:
        transport, client = await loop.create_connection(Client, HOST, ports[key])
        await client.first  # the offers: written in the callback that attaches it
        clients.append(transport)  # type: ignore[arg-type]
    control.send(("ready", os.getpid()))
    if await asyncio.to_thread(control.recv) != "go":
        return
    typed = [0] * len(clients)
    stop = asyncio.Event()
    began = time.perf_counter()
    if typing:
        # Every client types one marker per 1/type_rate s, spread over 5 ms ticks.
        period = 1.0 / args["type_rate"]
        slots = max(1, round(period / 0.005))

        def tick(n: int) -> None:
            if stop.is_set():
                return
            for c in range(n % slots, len(clients), slots):
                clients[c].write(b"<m%08d>" % typed[c])
                typed[c] += 1
            loop.call_at(began + (n + 1) * period / slots, tick, n + 1)

        tick(0)
    await asyncio.gather(
        *(_chain(port, p, n, per_console, tails[n], state) for n, p in enumerate(vms))
    )
    ended = time.perf_counter()
    stop.set()
    control.send(("done", began, ended))
    # Markers still in flight (held by vspcd during a vMotion, then delivered to the
    # destination) are waited for, up to 10 s; then each console's are checked.
    deadline = time.monotonic() + 10
    while typing and time.monotonic() < deadline:  # noqa: ASYNC110  (a bounded poll)
        if all(len(m) >= t for m, t in zip(state["markers"], typed, strict=True)):
            break
        await asyncio.sleep(0.01)
    lost = repeated = disordered = 0
    for got, count in zip(state["markers"] if typing else [], typed, strict=True):
        distinct = set(got)
        lost += count - len(distinct & set(range(count)))
        repeated += len(got) - len(distinct)
        disordered += int(got != sorted(got))
    control.send(
        (
            "report",
            {
                "samples": state["samples"],
                "typed": sum(typed),
                "lost": lost,
                "repeated": repeated,
                "disordered_consoles": disordered,
            },
        )
    )
    # Connected until the parent has checked the console list.
    await asyncio.to_thread(control.poll, 60)
    for transport in clients:
        transport.close()
    for final in state["finals"]:
        if final is not None:
            final.close()
    await asyncio.sleep(0.05)


async def scenario_vmotion(
    *, consoles: int, per_console: int, workers: int, type_rate: float, gen_loop: str
) -> dict[str, Any]:
    """`consoles` chains of `per_console` vMotions, all at once, from `workers`
    processes; with `type_rate` > 0 a raw telnet client on every console types
    that many markers per second, and every marker must reach the VM exactly once,
    in order, across every vMotion."""
    typing = type_rate > 0
    # Every fake host is 127.0.0.1 here, so the per-address cap on unidentified
    # connections (256 by default, docs/security.md) would refuse the destinations of a
    # 500-console storm that real hosts spread over many addresses.
    extra = ["--unidentified-per-host", "0"]
    context = multiprocessing.get_context("spawn")
    slices = [list(range(consoles))[w::workers] for w in range(workers)]
    with running_daemon(vm_ports=typing, port_count=consoles, extra_args=extra) as daemon:
        pipes, procs = [], []
        for indices in slices:
            parent, child = context.Pipe()
            args = {
                "port": daemon.proxy_port,
                "indices": indices,
                "per_console": per_console,
                "type_rate": type_rate,
                "gen_loop": gen_loop,
            }
            proc = context.Process(target=_vmotion_worker_main, args=(args, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        try:

            async def recv(pipe: Connection, within: float = 120.0) -> Any:
                if not await asyncio.to_thread(pipe.poll, within):
                    raise RuntimeError("a generator worker did not answer")
                message = pipe.recv()
                if isinstance(message, tuple) and message[0] == "error":
                    raise RuntimeError(f"generator worker: {message[1]}")
                return message

            for pipe in pipes:
                await recv(pipe)  # ("identified", keys)
            ports = {}
            if typing:
                ports = {r["key"]: r["port"] for r in daemon.consoles()}
            for pipe in pipes:
                pipe.send(ports)
            for pipe in pipes:
                await recv(pipe)  # ("ready", pid)
            settle(daemon)
            meter = CpuMeter(daemon.pid, [p.pid or 0 for p in procs])
            for pipe in pipes:
                pipe.send("go")
            done = [await recv(pipe, 300) for pipe in pipes]
            cpu = meter.stop()
            reports = [(await recv(pipe, 60))[1] for pipe in pipes]
            settle(daemon)
            keys = [vm_key(4, i) for i in range(consoles)]
            checked = [daemon.admin({"cmd": "show", "vm": k})["console"] for k in keys[:3]]
            rows = daemon.consoles()
            for pipe in pipes:
                pipe.send("close")
        finally:
            for proc in procs:
                proc.join(15)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    total = consoles * per_console
    elapsed = max(d[2] for d in done) - min(d[1] for d in done)
    rate = total / elapsed
    samples = [s for r in reports for s in r["samples"]]
    lost = sum(r["lost"] for r in reports)
    repeated = sum(r["repeated"] for r in reports)
    disordered = sum(r["disordered_consoles"] for r in reports)
    ok = all(c["counters"]["vmotions"] == per_console for c in checked) and all(
        r["connected"] and r["vmotion"] == "normal" for r in rows
    )
    generator_us = cpu["generator"] * elapsed / total * 1e6
    goal = GOALS["vmotions_typing_per_s" if typing else "vmotions_per_s"]
    return {
        "consoles": consoles,
        "vmotions_per_console": per_console,
        "vmotions": total,
        "workers": workers,
        "typing_clients": consoles if typing else 0,
        "type_rate_per_client": type_rate,
        "seconds": round(elapsed, 3),
        "vmotions_per_s": round(rate, 1),
        "vmotion_ms": percentiles(samples),
        "cpu_cores": cpu,
        "daemon_cpu_us_per_vmotion": round(cpu["daemon"] * elapsed / total * 1e6, 1),
        # 10^6 / daemon µs: what one daemon core allows, whatever the generator does.
        "daemon_capacity_per_s": round(1e6 / max(1e-9, cpu["daemon"] * elapsed / total * 1e6)),
        "generator_cpu_us_per_vmotion": round(generator_us, 1),
        "typed_markers": sum(r["typed"] for r in reports),
        "bytes_lost": lost,  # markers, each one typed write
        "bytes_repeated": repeated,
        "consoles_out_of_order": disordered,
        "ok": ok and len(rows) == consoles and lost == repeated == disordered == 0,
        "goal": {"vmotions_per_s": goal},
        "met": rate >= goal,
    }


async def _attached(daemon: Daemon, key: str, count: int) -> None:
    """Wait (up to 10 s) until `list` shows `count` clients on console `key`."""
    deadline = time.monotonic() + 10
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = next(r for r in daemon.consoles() if r["key"] == key)
        if row["clients"] == count:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{count} clients not attached: {row}")


async def _attach_clients(daemon: Daemon, key: str, count: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    row = next(r for r in daemon.consoles() if r["key"] == key)
    clients = []
    for _ in range(count):
        _, client = await loop.create_connection(Client, HOST, row["port"])
        await client.first  # the proxy's option offers
        clients.append(client)
    await _attached(daemon, key, count)
    return clients


def _reader_main(port: int, count: int, size: int, control: Connection, progress: Any) -> None:
    """Child process: `count` raw telnet clients on `port`, each reading `size` bytes.

    Blocking `recv_into` on a selector and nothing else.  `progress` (shared memory)
    holds the bytes the slowest client has received, so the VM writer can stay a
    window ahead (see `_send`).  Sends back each client's byte count, finish time
    (`time.perf_counter`, CLOCK_MONOTONIC, the same clock as the parent's) and last
    bytes; gives up after 3 s without data.
    """
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(count)]
    for sock in socks:
        sock.recv(256)  # the proxy's option offers, sent on connect: not console output
    control.send("ready")
    if not control.poll(60) or control.recv() != "go":
        return
    counts, ends, tails = [0] * count, [0.0] * count, [b""] * count
    buf = bytearray(1 << 20)
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while selector.get_map():
            ready = selector.select(timeout=3.0)
            if not ready:
                break  # stalled: output was dropped, or the stream ended early
            for key, _ in ready:
                index, sock = key.data, key.fileobj
                assert isinstance(sock, socket.socket)
                got = sock.recv_into(buf)
                counts[index] += got
                ends[index] = time.perf_counter()  # last data seen (or the end)
                if got:
                    tails[index] = bytes(buf[max(0, got - 64) : got])
                if not got or counts[index] >= size:
                    selector.unregister(sock)
            progress.value = min(counts)
    control.send((counts, ends, tails))
    for sock in socks:
        sock.close()


async def _send(source: FakeVm, chunk: bytes, total: int, received: Any = None) -> None:
    """Write `total` bytes of `chunk` repeats, honouring the transport's flow control.

    With `received` (shared counter of bytes the slowest client has), stay at most
    STREAM_WINDOW ahead of it.  vspcd never slows a VM for a client: a client more
    than --client-queue behind loses output by design.  On two cores shared by the
    daemon, this writer and the reader, the reader may briefly fall that far behind
    when the daemon outpaces it, and the run would measure dropping, not streaming.
    """
    sent = 0
    while sent < total:
        piece = chunk if total - sent >= len(chunk) else chunk[: total - sent]
        source.write(piece)
        sent += len(piece)
        if source.resumed is not None:
            await source.resumed
        # A counter in shared memory has no event to wait on: poll it, briefly.
        while received is not None and sent - received.value > STREAM_WINDOW:  # noqa: ASYNC110
            await asyncio.sleep(0.0002)


async def one_stream(daemon: Daemon, tag: int, size: int, clients: int) -> dict[str, Any]:
    """One VM -> `clients` telnet clients (in a reader process), `size` bytes each."""
    key = vm_key(tag, size)
    protos, _, _ = await connect_vms(daemon.proxy_port, [hello(key, f"stream-{size}")], 1)
    source = protos[0]
    source.idle()
    assert source.transport is not None
    source.transport.set_write_buffer_limits(high=4 * MIB)
    port = next(r for r in daemon.consoles() if r["key"] == key)["port"]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    received = context.RawValue("q", 0)
    reader = context.Process(target=_reader_main, args=(port, clients, size, child, received))
    reader.start()
    try:
        if not await asyncio.to_thread(parent.poll, 60) or parent.recv() != "ready":
            raise RuntimeError("reader process not ready")
        await _attached(daemon, key, clients)
        parent.send("go")
        chunk = LINE * (64 * 1024 // len(LINE))
        meter = CpuMeter(daemon.pid, [reader.pid or 0])
        began = time.perf_counter()
        await _send(source, chunk, size, received)
        if not await asyncio.to_thread(parent.poll, max(60.0, size / (5 * MIB))):
            raise RuntimeError("reader process did not report")
        counts, ends, tails = parent.recv()
        cpu = meter.stop()
    finally:
        reader.join(10)
        if reader.is_alive():
            reader.kill()
            reader.join(5)
    await close_all([source])
    elapsed = max(ends) - began
    return {
        "mib": size / MIB,
        "clients": clients,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "aggregate_mb_per_s": round(sum(counts) / elapsed / 1e6, 1),
        "cpu_cores": cpu,
        # Every client got exactly the stream: nothing dropped (a slow client loses
        # output, then reads a "[vspcd: N bytes ... dropped]" line).
        "exact": all(c == size and b"[vspcd:" not in t for c, t in zip(counts, tails, strict=True)),
        "bytes_short": size * clients - sum(counts),
    }


# Twenty [[alert]] rules of the kind operators write (docs/operations.md "Console
# alerts"), for `--set stream.alerts=custom20` / `keystroke.alerts=custom20`.
CUSTOM_ALERTS = (
    "EXT4-fs error",
    "I/O error, dev \\w+",
    "Call Trace:",
    "segfault at [0-9a-f]+",
    "nfs: server \\S+ not responding",
    "Failed to start .+\\.service",
    "watchdog timeout",
    "mce: \\[Hardware Error\\]",
    "Buffer I/O error on dev",
    "XFS \\(\\w+\\): Corruption",
    "rcu: INFO: rcu_sched self-detected stall",
    "NETDEV WATCHDOG",
    "Tainted: [A-Z]",
    "systemd-coredump\\[\\d+\\]",
    "Journal has been aborted",
    "Remounting filesystem read-only",
    "ata\\d+: hard resetting link",
    "blk_update_request: I/O error",
    "sd \\d+:\\d+:\\d+:\\d+: \\[sd\\w+\\] tag#",
    "ACPI Error: ",
)


def alert_args(mode: str) -> list[str]:
    """Daemon arguments for an alerts mode: `off` (--no-builtin-alerts), `builtin`
    (the daemon's default), `custom20` (the built-ins and CUSTOM_ALERTS)."""
    if mode == "off":
        return ["--no-builtin-alerts"]
    if mode == "builtin":
        return []
    if mode != "custom20":
        raise ValueError(f"alerts: off, builtin or custom20, not {mode!r}")
    path = Path(tempfile.mkdtemp(prefix="vspcd-bench-alerts-")) / "alerts.toml"
    path.write_text(
        "".join(
            f"[[alert]]\nname = 'custom{i}'\nregex = '{regex}'\n\n"
            for i, regex in enumerate(CUSTOM_ALERTS)
        )
    )
    return ["--config", str(path)]


async def scenario_stream(
    *, sizes_mib: Sequence[float], log_flush: float | None = None, alerts: str = "builtin"
) -> dict[str, Any]:
    # log_flush: None streams without console logs; a number runs
    # the daemon with --log-dir (in its scratch directory) and that --log-flush.
    # alerts: off, builtin or custom20 (`alert_args`).
    extra: list[str] = alert_args(alerts)
    if log_flush is not None:
        extra += ["--log-dir", "{workdir}/logs", "--log-flush", str(log_flush)]
    runs = []
    with running_daemon(vm_ports=True, port_count=len(sizes_mib) + 5, extra_args=extra) as daemon:
        for size in sizes_mib:
            runs.append(await one_stream(daemon, 5, int(size * MIB), 1))
    rates = [r["mb_per_s"] for r in runs]
    slowest = min(rates)
    return {
        "runs": runs,
        # Linear cost means flat MB/s across sizes: the largest size's rate over the
        # smallest's stays near 1 (quadratic work would make it fall with size).
        "large_over_small": round(rates[-1] / rates[0], 2) if rates[0] else None,
        "ok": all(r["exact"] for r in runs),
        "goal": {"mb_per_s": GOALS["stream_mb_per_s"], "large_over_small_min": 0.7},
        "met": slowest >= GOALS["stream_mb_per_s"] and rates[-1] >= 0.7 * rates[0],
    }


async def scenario_fanout(*, size_mib: float, clients: int) -> dict[str, Any]:
    with running_daemon(vm_ports=True, port_count=5) as daemon:
        run = await one_stream(daemon, 6, int(size_mib * MIB), clients)
    return {**run, "ok": run["exact"]}


# -- keystroke latency: chatter in a second process -----------------------------------


def _chatter_main(port: int, count: int, period: float, control: Connection) -> None:
    """Child process: `count` identified VMs, each writing LINE every `period` s
    once told "go", until told "stop" (or 120 s).  Reports lines written."""
    asyncio.run(_chatter(port, count, period, control))


async def _chatter(port: int, count: int, period: float, control: Connection) -> None:
    loop = asyncio.get_running_loop()
    greetings = [hello(vm_key(7, i), f"chatter-{i}") for i in range(count)]
    protos, _, _ = await connect_vms(port, greetings, 64)
    control.send("ready")
    command: asyncio.Future[str] = loop.create_future()

    def on_control() -> None:
        message = control.recv()
        if message == "stop" or not command.done():
            if command.done():
                return
            command.set_result(message)

    loop.add_reader(control.fileno(), on_control)
    async with asyncio.timeout(120):
        await command
    stopped = asyncio.Event()
    command = loop.create_future()
    # Every VM writes once per `period`; spreading them over 1 ms ticks keeps the
    # arrival rate even instead of 1,000 lines in one burst.
    slots = max(1, int(period / 0.001))
    tick = period / slots
    lines = 0
    transports = [p.transport for p in protos]
    began = loop.time()

    def on_tick(n: int) -> None:
        nonlocal lines
        if command.done() or loop.time() - began > 120:
            stopped.set()
            return
        for transport in transports[n % slots :: slots]:
            assert transport is not None
            transport.write(LINE)
            lines += 1
        loop.call_at(began + (n + 1) * tick, on_tick, n + 1)

    on_tick(0)
    await stopped.wait()
    loop.remove_reader(control.fileno())
    control.send(lines)
    for proto in protos:
        proto.close()
    await asyncio.sleep(0.1)


async def keystroke_samples(vm_end: FakeVm, client: Client, count: int) -> dict[str, Any]:
    """Type one byte at a time; time client->VM, VM echo->client, and the round trip."""
    loop = asyncio.get_running_loop()
    up: list[float] = []
    down: list[float] = []
    state: dict[str, Any] = {}

    def vm_got(data: bytes) -> None:
        now = time.perf_counter()
        waiter = state.get("vm")
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
            vm_end.write(data)  # the guest echoes what was typed

    def client_got(data: bytes) -> None:
        now = time.perf_counter()
        waiter = state.get("client")
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    vm_end.on_data, client.on_data = vm_got, client_got
    assert client.transport is not None
    rng = random.Random(3)
    for i in range(count):
        state["vm"], state["client"] = loop.create_future(), loop.create_future()
        key = bytes((0x41 + i % 26,))
        sent = time.perf_counter()
        client.transport.write(key)
        async with asyncio.timeout(5):
            at_vm = await state["vm"]
            at_client = await state["client"]
        up.append(at_vm - sent)
        down.append(at_client - at_vm)
        # Random gaps, so samples are not phase-locked to the chatter ticks.
        await asyncio.sleep(rng.uniform(0.001, 0.006))
    round_trip = [u + d for u, d in zip(up, down, strict=True)]
    return {
        "client_to_vm_ms": percentiles(up),
        "vm_to_client_ms": percentiles(down),
        "round_trip_ms": percentiles(round_trip),
    }


async def scenario_keystroke(
    *, chatter_vms: int, samples: int, period: float, alerts: str = "builtin"
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    extra = alert_args(alerts)
    with running_daemon(vm_ports=True, port_count=chatter_vms + 10, extra_args=extra) as daemon:
        parent, child = context.Pipe()
        chatter = context.Process(
            target=_chatter_main, args=(daemon.proxy_port, chatter_vms, period, child)
        )
        chatter.start()
        try:
            if not await asyncio.to_thread(parent.poll, 120) or parent.recv() != "ready":
                raise RuntimeError("chatter process not ready")
            key = vm_key(8, 0)
            protos, _, _ = await connect_vms(daemon.proxy_port, [hello(key, "probe")], 1)
            probe = protos[0]
            client = (await _attach_clients(daemon, key, 1))[0]
            idle = await keystroke_samples(probe, client, max(20, samples // 4))
            meter = CpuMeter(daemon.pid, [chatter.pid or 0])
            began = time.perf_counter()
            parent.send("go")
            await asyncio.sleep(0.5)  # chatter at full rate before sampling
            busy = await keystroke_samples(probe, client, samples)
            elapsed = time.perf_counter() - began
            cpu = meter.stop()
            parent.send("stop")
            if not await asyncio.to_thread(parent.poll, 10):
                raise RuntimeError("chatter process did not report")
            lines = parent.recv()
            assert client.transport is not None
            client.transport.close()
            await close_all([probe])
        finally:
            chatter.join(15)
            if chatter.is_alive():
                chatter.kill()
                chatter.join(5)
    p99 = busy["round_trip_ms"]["p99"]
    return {
        "chatter_vms": chatter_vms,
        "chatter_period_s": period,
        "chatter_lines_per_s": round(lines / elapsed, 1),
        "cpu_cores": cpu,
        "idle": idle,
        "chatter": busy,
        "ok": lines > 0,
        "goal": {"round_trip_p99_ms": GOALS["keystroke_p99_ms"]},
        "met": p99 <= GOALS["keystroke_p99_ms"],
    }


# -- driver --------------------------------------------------------------------------

FULL: dict[str, dict[str, Any]] = {
    "connect": {"vms": 5000, "concurrency": 256, "warmup": 50},
    "connect_ports": {"vms": 5000, "concurrency": 256, "warmup": 50},
    "scale": {"vms": 16000, "concurrency": 256, "warmup": 50},
    "vmotion": {
        "consoles": 500,
        "per_console": 40,
        "workers": 2,
        "type_rate": 0.0,
        "gen_loop": "auto",
    },
    "stream": {"sizes_mib": [16, 64, 256], "log_flush": None, "alerts": "builtin"},
    "fanout": {"size_mib": 64, "clients": 10},
    "keystroke": {"chatter_vms": 1000, "samples": 2000, "period": 0.1, "alerts": "builtin"},
}
QUICK: dict[str, dict[str, Any]] = {
    "connect": {"vms": 60, "concurrency": 16, "warmup": 4},
    "connect_ports": {"vms": 30, "concurrency": 16, "warmup": 4},
    "scale": {"vms": 60, "concurrency": 16, "warmup": 4},
    "vmotion": {
        "consoles": 6,
        "per_console": 4,
        "workers": 2,
        "type_rate": 20.0,
        "gen_loop": "auto",
    },
    "stream": {"sizes_mib": [0.25, 1], "log_flush": None, "alerts": "builtin"},
    "fanout": {"size_mib": 0.5, "clients": 3},
    "keystroke": {"chatter_vms": 10, "samples": 20, "period": 0.1, "alerts": "builtin"},
}


async def run_scenario(name: str, params: dict[str, Any], limit: float) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        return await _dispatch(name, params)


async def _dispatch(name: str, params: dict[str, Any]) -> dict[str, Any]:
    match name:
        case "connect":
            return await scenario_connect(name, vm_ports=False, **params)
        case "connect_ports":
            return await scenario_connect(name, vm_ports=True, **params)
        case "scale":
            return await scenario_connect(name, vm_ports=False, **params)
        case "vmotion":
            return await scenario_vmotion(**params)
        case "stream":
            return await scenario_stream(**params)
        case "fanout":
            return await scenario_fanout(**params)
        case "keystroke":
            return await scenario_keystroke(**params)
    raise ValueError(f"unknown scenario {name!r}")


def dig(value: Any, *path: str | int) -> Any:
    """`value[p0][p1]...`, or None where a scenario failed before producing it."""
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figure behind each issue-#3 goal, for the scenarios that ran."""
    figures = {
        "connect_vms_per_s": ("connect", "vms_per_s"),
        "connect_ports_vms_per_s": ("connect_ports", "vms_per_s"),
        "vmotions_per_s": ("vmotion", "vmotions_per_s"),
        "stream_large_over_small": ("stream", "large_over_small"),
        "fanout_aggregate_mb_per_s": ("fanout", "aggregate_mb_per_s"),
        "keystroke_round_trip_p99_ms": ("keystroke", "chatter", "round_trip_ms", "p99"),
        "keystroke_client_to_vm_p99_ms": ("keystroke", "chatter", "client_to_vm_ms", "p99"),
        "connect_rss_kib_per_vm": ("connect", "rss_kib_per_vm"),
        "connect_ports_rss_kib_per_vm": ("connect_ports", "rss_kib_per_vm"),
        "scale_rss_kib_per_vm": ("scale", "rss_kib_per_vm"),
        "scale_vms_connected": ("scale", "consoles_connected"),
    }
    summary = {
        figure: dig(results, *path) for figure, path in figures.items() if path[0] in results
    }
    if "stream" in results:
        rates = [dig(r, "mb_per_s") for r in dig(results, "stream", "runs") or []]
        summary["stream_mb_per_s_min"] = min((r for r in rates if r is not None), default=None)
    return {
        "summary": summary,
        "met": {name: r.get("met") for name, r in results.items()},
        "ok": {name: r.get("ok") for name, r in results.items()},
        "goals": GOALS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios (default: all of {', '.join(FULL)})"
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (smoke run)")
    parser.add_argument(
        "--limit", type=float, default=300.0, help="seconds one scenario may take (default 300)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SCENARIO.PARAM=JSON",
        help="override one parameter, e.g. connect.vms=2000 or stream.sizes_mib=[16]",
    )
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every vspcd started, e.g. --daemon-arg=--event-loop=uvloop",
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default=None,
        help="the daemon's --event-loop (default: its own, auto unless VSPCD_EVENT_LOOP)",
    )
    args = parser.parse_args(argv)
    DAEMON_ARGS[:] = args.daemon_arg
    if args.event_loop is not None:
        DAEMON_ARGS[:0] = ["--event-loop", args.event_loop]
    table = {name: dict(params) for name, params in (QUICK if args.quick else FULL).items()}
    for item in args.set:
        target, _, value = item.partition("=")
        scenario, _, param = target.partition(".")
        if scenario not in table or param not in table[scenario]:
            parser.error(f"--set {item}: no such parameter")
        table[scenario][param] = json.loads(value)
    names = [n for n in args.only.split(",") if n] or list(table)
    for name in names:
        if name not in table:
            parser.error(f"unknown scenario {name!r} (have: {', '.join(table)})")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        calibration = calibration_ms()
        began = time.perf_counter()
        try:
            result = asyncio.run(run_scenario(name, table[name], args.limit))
        except Exception as exc:  # report and go on with the next scenario
            result = {"ok": False, "met": False, "error": f"{type(exc).__name__}: {exc}"}
        results[name] = result
        line = {
            "scenario": name,
            "quick": args.quick,
            "params": table[name],
            "calibration_ms": calibration,
            "wall_s": round(time.perf_counter() - began, 2),
            **result,
        }
        print(json.dumps(line), flush=True)
    print(
        json.dumps(
            {
                "scenario": "summary",
                **summarize(results),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
