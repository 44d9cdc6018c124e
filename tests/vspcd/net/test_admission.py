"""Admission by harm (docs/security.md, "Unidentified connections"), through real sockets.

A crowd from one address is admitted, never refused: past the unidentified cap the
listener stops accepting and the kernel's accept queue holds the rest.  Idle holders
from other addresses give their slots to newcomers once silent for the grace, so
they cannot keep a real host out.  A second host on loopback is 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from tests.vspcd.harness import FakeEsxi, identified, running
from tests.vspcd.net.test_listeners import server_tls
from vspc.vspcd.net.admission import Slot, Slots
from vspc.vspcd.net.listeners import Listener, bind_tcp

__all__ = ["server_tls"]

WAIT = 5.0
HOSTILE = "127.0.0.2"


def uuid(i: int) -> str:
    return f"{i:032x}"


class Identifies(asyncio.Protocol):
    """Takes the slot and lets it go at its first byte, as a VmLink at VC-UUID."""

    def __init__(self, done: list[Identifies]) -> None:
        self._done = done
        self._slot: Slot | None = None
        self.transport: asyncio.Transport | None = None

    def adopt_slot(self, slot: Slot) -> None:
        self._slot = slot
        slot.evict = self.abort

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None
            self._done.append(self)
            assert self.transport is not None
            self.transport.write(b"ok")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot is not None:
            self._slot.release()


async def listen(slots: Slots) -> tuple[Listener, list[Identifies]]:
    done: list[Identifies] = []
    sock = bind_tcp("127.0.0.1", 0, backlog=1024)
    listener = Listener(
        sock, lambda: Identifies(done), asyncio.get_running_loop(), unidentified=slots
    )
    listener.start()
    return listener, done


async def identify(port: int, local: str = "127.0.0.1") -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        writer.write(b"\xff")
        return await reader.readexactly(2) == b"ok"
    finally:
        writer.close()


def test_a_burst_from_one_address_past_the_cap_is_queued_not_refused() -> None:
    async def main() -> None:
        slots = Slots(8, 0, lifetime=WAIT, clock=asyncio.get_running_loop().time)
        listener, done = await listen(slots)
        try:
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*(identify(listener.port) for _ in range(200)))
            assert all(results) and len(done) == 200
            assert slots.evicted == 0  # nobody made progress late enough to be idle
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(main())


def test_idle_holders_give_way_to_a_quiet_address() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slots = Slots(8, 0, lifetime=60.0, clock=loop.time, idle_grace=0.2)
        listener, done = await listen(slots)
        try:
            hostile = [
                await asyncio.open_connection("127.0.0.1", listener.port, local_addr=(HOSTILE, 0))
                for _ in range(8)
            ]
            async with asyncio.timeout(WAIT):
                while len(slots) < 8:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            started = loop.time()
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*(identify(listener.port) for _ in range(20)))
            assert all(results)
            assert loop.time() - started < 2.0  # a grace, not an identification timeout
            assert slots.evicted >= 1 and slots.count(HOSTILE) < 8
            for _reader, writer in hostile:
                writer.close()
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(main())


def test_a_progressing_holder_is_never_evicted() -> None:
    loop_time = [0.0]
    slots = Slots(2, 0, lifetime=60.0, clock=lambda: loop_time[0], idle_grace=5.0)
    first, second = slots.acquire("a"), slots.acquire("b")
    assert first is not None and second is not None
    first.evict = second.evict = lambda: None
    loop_time[0] = 4.0
    first.touch()
    assert slots.acquire("c") is None  # nothing silent for 5 s: the newcomer waits
    loop_time[0] = 6.0
    third = slots.acquire("c")  # "b" has been silent for 6 s: its slot goes
    assert third is not None and not second.held and first.held
    loop_time[0] = 20.0
    first.pinned = True  # waiting on us (a TLS handshake slot): never idle
    third.evict = None  # still being sorted out by the listener: not evictable yet
    assert slots.acquire("d") is None


def test_one_host_reconnecting_many_vms_at_default_flags_all_identify(tmp_path: Path) -> None:
    async def main() -> None:
        # The cap is small here so the burst overflows it; the kernel queue holds the rest.
        async with running(tmp_path, "--unidentified-limit", "16", "--no-vm-ports") as (
            daemon,
            events,
        ):
            assert daemon.proxy_port is not None
            port = daemon.proxy_port
            vms = await asyncio.gather(*(FakeEsxi.connect(port, uuid=uuid(i)) for i in range(120)))
            for i in range(120):
                await identified(events, uuid(i))
            for vm in vms:
                await vm.close()

    asyncio.run(main())


def test_idle_holders_on_the_proxy_port_do_not_keep_a_host_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vspc")
    monkeypatch.setattr("vspc.vspcd.net.admission.IDLE_GRACE", 0.3)

    async def main() -> None:
        async with running(tmp_path, "--unidentified-limit", "16", "--no-vm-ports") as (
            daemon,
            events,
        ):
            assert daemon.proxy_port is not None
            port = daemon.proxy_port
            holders = []
            for _ in range(16):  # fill every slot, and say nothing
                sock = socket.create_connection(("127.0.0.1", port), source_address=(HOSTILE, 0))
                holders.append(sock)
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            vms = await asyncio.gather(*(FakeEsxi.connect(port, uuid=uuid(i)) for i in range(10)))
            for i in range(10):
                await identified(events, uuid(i))
            assert loop.time() - started < 3.0
            for vm in vms:
                await vm.close()
            for sock in holders:
                sock.close()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "silent for" in r.getMessage()]
    assert 1 <= len(lines) <= 2  # aggregated: a line per period, then a count


def test_a_tls_crowd_from_one_address_all_identify(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    cert, key = cert_pair

    async def main() -> None:
        args = ("--ssl", "--cert", str(cert), "--key", str(key), "--no-vm-ports")
        async with running(tmp_path, *args) as (daemon, events):
            assert daemon.proxy_port is not None
            port = daemon.proxy_port
            vms = await asyncio.gather(
                *(FakeEsxi.connect(port, uuid=uuid(i), tls=True) for i in range(60))
            )
            for i in range(60):
                await identified(events, uuid(i))
            for vm in vms:
                await vm.close()

    asyncio.run(main())
