"""Per-console memory and memory that comes back (docs/benchmarks.md, docs/reliability.md).

No RSS figure is asserted here (those are in docs/benchmarks.md and
docs/reliability.md); these tests pin the behaviour the figures rely on: per
connection objects carry no `__dict__`, buffers exist only once something is in
them, and the heap trim is plumbed to the end of a flood and feature-detected.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from tests.vspcd.net.test_tls_fairness import client_hello_bytes
from vspc.common.session import ProxySession
from vspc.common.telnet import Opt, TelnetCodec
from vspc.vspcd.hub.console import Bounded, Scrollback
from vspc.vspcd.net.admission import Slots
from vspc.vspcd.net.flow import ClientOutput
from vspc.vspcd.net.links import TelnetClientLink, VmLink
from vspc.vspcd.net.listeners import Listener
from vspc.vspcd.service import heap
from vspc.vspcd.service.heap import HeapTrimmer, find_malloc_trim


def test_per_connection_objects_have_no_instance_dict(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.hub is not None
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            console = next(iter(daemon.hub.consoles()))
            assert console.vm is not None
            link = console.vm.channel
            client = console.clients[0].channel
            assert isinstance(link, VmLink) and isinstance(client, TelnetClientLink)
            binder = daemon._binder
            assert binder is not None
            port_listener = binder._held[console_port(daemon, UUID_A)]
            for obj in (link, link._session, link._session._telnet, client, port_listener):
                assert not hasattr(obj, "__dict__"), type(obj).__name__
            for cls in (Listener, ClientOutput, Bounded, Scrollback, TelnetCodec):
                assert "__slots__" in vars(cls), cls.__name__
            await op.close()
            await vm.close()

    asyncio.run(main())


def test_quiet_console_allocates_no_buffers_until_used(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.hub is not None
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            console = next(iter(daemon.hub.consoles()))
            assert console.vm is not None
            # Identified, never printed, nobody typed: no scrollback, no hold queue,
            # no pre-identification buffer, no queued output in the codec/session.
            assert not console.scrollback.allocated
            assert not console.hold.allocated
            assert not console.vm.early.allocated
            session = console.vm.channel._session  # type: ignore[attr-defined]
            assert session._out is None and session._telnet._out is None
            assert session._owed is None and session._disabled is None
            assert session._telnet._sb is None
            # The first output allocates the scrollback, and an operator reads it.
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            vm.send(b"hello\r\n")
            await op.output.expect(b"hello\r\n")
            assert console.scrollback.allocated
            assert console.scrollback.last(7) == b"hello\r\n"
            # Typing with a VM that reads goes straight through: still no hold queue.
            op.type(b"x")
            await vm.input.expect(b"x")
            assert not console.hold.allocated
            await op.close()
            await vm.close()

    asyncio.run(main())


def test_lazy_buffers_behave_like_empty_ones() -> None:
    scrollback = Scrollback(8)
    assert scrollback.last(4) == b"" and not scrollback.allocated
    scrollback.append(b"")
    assert not scrollback.allocated  # nothing kept, nothing allocated
    scrollback.append(b"0123456789")
    assert scrollback.last(100) == b"23456789" and scrollback.total == 10

    hold = Bounded(4)
    assert len(hold) == 0 and hold.take() == b"" and not hold.allocated
    assert hold.append(b"abcdef") == 2 and hold.dropped == 2
    assert hold.take() == b"cdef"
    assert not hold.allocated  # handed back with its bytes

    codec = TelnetCodec(local_ok=(Opt.SGA,))
    assert codec.data_to_send() == b""
    codec.receive_data(bytes((255, 253, Opt.SGA)))  # DO SGA -> WILL SGA
    assert codec.data_to_send() == bytes((255, 251, Opt.SGA))
    assert codec._out is None and codec.local_enabled(Opt.SGA)
    # A subnegotiation split across reads keeps its bytes, and frees them at SE.
    events = codec.receive_data(bytes((255, 250, 24)) + b"ab")
    assert not events and codec._sb is not None
    events = codec.receive_data(b"c\xff\xff\xff\xf0")
    assert [e.payload for e in events] == [b"abc\xff"]  # type: ignore[attr-defined]
    assert codec._sb is None

    session = ProxySession()
    session.initiate()
    assert session.data_to_send() and session._out is None


class FakeTimers:
    """`call_later`/clock stand-ins: the test fires the timers itself."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimers:
        self.pending.append((self.now + delay, callback))
        return self

    def cancel(self) -> None:
        self.pending.clear()

    def fire(self) -> float:
        at, callback = self.pending.pop(0)
        self.now = at
        callback()
        return at


def test_trimmer_runs_once_per_burst_and_is_rate_limited() -> None:
    timers = FakeTimers()
    calls: list[float] = []

    def trim() -> int:
        calls.append(timers.now)
        return 1

    trimmer = HeapTrimmer(
        trim, call_later=timers.call_later, clock=timers.clock, burst=3, delay=0.5, interval=5
    )
    trimmer.quiet(2)  # a trickle: below the burst size
    assert not timers.pending
    trimmer.quiet(3)
    trimmer.quiet(3)  # already scheduled: one timer
    assert len(timers.pending) == 1
    assert timers.fire() == 100.5 and calls == [100.5] and trimmer.trims == 1
    trimmer.quiet(3)  # nothing new since the trim
    assert not timers.pending
    trimmer.quiet(7)  # a second burst right away waits for the interval
    assert timers.fire() == 105.5 and calls == [100.5, 105.5]


def test_trimmer_collects_cycles_before_trimming() -> None:
    """A burst's closed connections may be reference cycles (the stdlib loop's
    transport holds a bound method of itself): they are freed before the trim."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self.callback

        def callback(self) -> None:
            pass

    timers = FakeTimers()
    alive: list[bool] = []
    probe = Cycle()
    ref = weakref.ref(probe)
    del probe
    enabled = gc.isenabled()
    gc.disable()
    try:
        trimmer = HeapTrimmer(
            lambda: alive.append(ref() is not None) or 1,
            call_later=timers.call_later,
            clock=timers.clock,
            burst=1,
        )
        trimmer.quiet(1)
        timers.fire()
    finally:
        if enabled:
            gc.enable()
    assert alive == [False]


def test_trimmer_without_malloc_trim_does_nothing() -> None:
    timers = FakeTimers()
    trimmer = HeapTrimmer(None, call_later=timers.call_later, clock=timers.clock, burst=1)
    trimmer.quiet(10)
    assert not trimmer.available and not timers.pending


def test_slots_report_when_the_last_one_goes() -> None:
    seen: list[int] = []
    slots = Slots(0, 0, lifetime=1.0, clock=lambda: 0.0, on_empty=seen.append)
    first, second = slots.acquire("a"), slots.acquire("b")
    assert first is not None and second is not None
    first.release()
    assert seen == []
    second.release()
    second.release()  # idempotent: reported once
    assert seen == [2] and slots.admitted == 2


def test_malloc_trim_is_feature_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    trim = find_malloc_trim()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert trim is not None
        assert trim() in (0, 1)
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert find_malloc_trim() is None


def test_a_flood_ending_triggers_a_trim(tmp_path: Path) -> None:
    """Through the real proxy port: unidentified connections come and go, the
    daemon's trimmer is told, and (where glibc has malloc_trim) it trims."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, _events):
            trimmer = daemon.trimmer
            assert trimmer is not None
            trimmer.burst, trimmer.delay = 4, 0.0
            done = asyncio.get_running_loop().create_future()
            reported: list[int] = []
            real_quiet = trimmer.quiet

            def quiet(admitted: int) -> None:
                reported.append(admitted)
                real_quiet(admitted)
                if admitted >= 4 and not done.done():
                    done.set_result(None)

            daemon._proxy._unidentified._on_empty = quiet
            trimmed = asyncio.get_running_loop().create_future()
            real_trim = trimmer._trim
            if real_trim is not None:

                def trim() -> int:
                    assert real_trim is not None
                    result = real_trim()
                    if not trimmed.done():
                        trimmed.set_result(result)
                    return result

                trimmer._trim = trim
            writers = []
            for _ in range(4):
                _reader, writer = await asyncio.open_connection("127.0.0.1", daemon.proxy_port)
                writers.append(writer)
            for writer in writers:
                writer.close()
            async with asyncio.timeout(5):
                await done
                if real_trim is not None:
                    assert await trimmed in (0, 1)
            assert reported[-1] >= 4

    asyncio.run(main())


def _alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


async def _until_none_alive(kind: type) -> int:
    """Wait (bounded) until no `kind` object is alive; return how many still are.

    With the cyclic GC off, an object in a reference cycle stays forever: only
    reference counting can free it, which is what these tests are about.
    """
    try:
        async with asyncio.timeout(3):
            while _alive(kind):  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # teardown runs in later loop callbacks
    except TimeoutError:
        pass
    return _alive(kind)


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_cyclic_gc")
def test_a_failed_tls_handshake_leaves_no_cycle_holding_its_tls_state(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    """Each failed handshake's exception kept asyncio's frame, and with it the
    SSLObject, BIOs and read buffer, until a full collection."""
    cert, key = cert_pair

    async def main() -> None:
        async with running(tmp_path, "--ssl", "--cert", str(cert), "--key", str(key)) as (
            daemon,
            _events,
        ):
            proxy = daemon._proxy
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", daemon.proxy_port)
                # A whole ClientHello (a handshake slot only then), then nothing.
                writer.write(client_hello_bytes())
                async with asyncio.timeout(5):
                    while not len(proxy._handshakes):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)  # the handshake has started
                writer.transport.abort()  # the handshake fails: connection reset
                async with asyncio.timeout(5):
                    while len(proxy._handshakes):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            assert proxy.setup_failed.total == 3
            assert await _until_none_alive(ssl.SSLObject) == 0

    asyncio.run(main())


@pytest.mark.usefixtures("no_cyclic_gc")
def test_a_closed_vm_connection_is_freed_without_the_cyclic_gc(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            assert _alive(VmLink) == 1 and _alive(TelnetClientLink) == 1
            await op.close()
            await events.wait("client_detached")
            await vm.close()
            await events.wait("vm_disconnected")
            assert await _until_none_alive(VmLink) == 0
            assert await _until_none_alive(TelnetClientLink) == 0

    asyncio.run(main())


def test_idle_vm_connections_hold_no_unused_records(tmp_path: Path) -> None:
    """An idle console builds no hold queue and no early buffer; its VM's protocol has
    no `__dict__` on whichever loop runs the daemon."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.hub is not None
            vms = [
                await FakeEsxi.connect(daemon.proxy_port, f"{n:032x}", f"vm-{n}") for n in range(3)
            ]
            for n in range(3):
                await identified(events, f"{n:032x}")
            for console in daemon.hub.consoles():
                assert console.vm is not None
                assert not hasattr(console.vm.channel, "__dict__")
                assert console._hold is None and console.held == 0
                assert console.hold_dropped == 0
                assert console.vm._early is None and console.vm.take_early() == b""
            for vm in vms:
                await vm.close()

    asyncio.run(main())
