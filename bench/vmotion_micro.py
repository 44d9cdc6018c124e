"""Micro-benchmark: vspcd's own Python work per vMotion, without sockets or a loop.

One console migrates back and forth N times through the real `VmLink` + `ProxySession`
+ `Hub`, with in-memory transports: BEGIN on the source, GOAHEAD parsed, a destination
link sends ESXi's PEER segment, PEER-OK, identification + COMPLETE, the source closes.
What it leaves out (accept, syscalls, the event loop) is in bench/daemon_bench.py; what
it keeps is steady enough to compare two trees run back to back:

    .venv/bin/python bench/vmotion_micro.py            # one JSON line
    .venv/bin/python bench/vmotion_micro.py --quick    # toy size (tests/test_bench_smoke.py)

Prints µs per vMotion (best of several rounds) and a calibration time, like the daemon
benchmark, since this VM's speed drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
from typing import Any

from vspc.common import vmware as vm
from vspc.common.esxi import ESXI_KNOWN_CODES
from vspc.common.telnet import IAC, Opt, TelnetCodec
from vspc.vspcd.hub.hub import Hub, HubSettings
from vspc.vspcd.net.links import VmLink

UUID = "0123456789abcdeffedcba9800000000"
KS1 = vm.encode(vm.KnownSuboptions1(ESXI_KNOWN_CODES))
IDENT = vm.encode(vm.VmVcUuid(vm.wire_uuid(UUID))) + vm.encode(vm.VmName("vm-00000"))
WILL_EXT = bytes((IAC, 0xFB, Opt.VMWARE_EXT))
WILL_COMPORT = bytes((IAC, 0xFB, Opt.COM_PORT))


class MemoryTransport(asyncio.Transport):
    """Just enough of a transport for VmLink: records writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.1", 40000) if name == "peername" else default


def _goahead_cookie(wire: bytes) -> bytes:
    codec = TelnetCodec()
    for event in codec.receive_data(wire):
        payload = getattr(event, "payload", b"")
        if getattr(event, "option", None) == Opt.VMWARE_EXT and payload[:1] == b"\x29":
            return bytes(payload[1:])
    raise AssertionError("no GOAHEAD")


def run(n: int) -> float:
    """Seconds for n vMotions of one console."""
    hub = Hub(HubSettings(), clock=time.monotonic, call_later=lambda d, cb: _Never())
    source = VmLink(hub)
    transport = MemoryTransport()
    source.connection_made(transport)
    source.data_received(WILL_EXT + KS1 + vm.encode(vm.DoProxy("S", "vSPC.py")) + IDENT)
    started = time.perf_counter()
    for i in range(n):
        sequence = i.to_bytes(4, "big")
        transport.out.clear()
        source.data_received(vm.encode(vm.VMotionBegin(sequence)))
        cookie = _goahead_cookie(bytes(transport.out))
        dest, dest_transport = VmLink(hub), MemoryTransport()
        dest.connection_made(dest_transport)
        dest.data_received(WILL_EXT + KS1 + vm.encode(vm.VMotionPeer(cookie)) + WILL_COMPORT)
        dest.data_received(IDENT + vm.encode(vm.VMotionComplete(sequence)))
        source.connection_lost(None)
        source, transport = dest, dest_transport
    return time.perf_counter() - started


class _Never:
    def cancel(self) -> None:
        pass


def calibrate() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i & 7
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 vMotions, one round (smoke)")
    args = parser.parse_args(argv)
    # As in production: INFO records are formatted and written (here to /dev/null).
    sink = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    n, rounds = (200, 1) if args.quick else (5000, 5)
    best = min(run(n) for _ in range(rounds))
    print(json.dumps({
        "benchmark": "vmotion_micro",
        "us_per_vmotion": round(best / n * 1e6, 1),
        "vmotions": n,
        "rounds": rounds,
        "calibration_ms": round(calibrate(), 1),
        "python": platform.python_version(),
        "_note": "in-process: no accept, no syscalls, no event loop",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
