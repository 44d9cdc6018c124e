"""The TLS handshake stage is fair between addresses and hard on stalling.

docs/security.md, "Before identification": a TLS connection asks for a handshake
slot only once its whole ClientHello has arrived (vspcd/net/tls.py `client_hello`),
within `HELLO_GRACE` of its first byte; freed slots go to the waiting address
holding the fewest; a slot held `stall_grace` seconds while a quieter address waits
is taken back (vspcd/net/admission.py `Slots.wait_acquire`).  Through real sockets,
on the stdlib loop and uvloop.  Hostile peers come from 127.0.0.2, good ones from
127.0.0.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable

import pytest

from tests.vspcd.net.test_listeners import _loops, recorder_factory, server_tls
from vspc.vspcd.net.admission import Slots
from vspc.vspcd.net.listeners import start_proxy_listener
from vspc.vspcd.net.tls import MAX_HELLO, hello_size

__all__ = ["server_tls"]  # a fixture shared with test_listeners

HOSTILE = "127.0.0.2"
GOOD = "127.0.0.3"
WAIT = 10.0  # the identification deadline in these tests
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _client() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_hostname="localhost"), incoming, outgoing


def client_hello_bytes() -> bytes:
    """A real ClientHello, as a TLS client sends it first."""
    tls, _incoming, outgoing = _client()
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def tls_client(port: int, local: str, *, pieces: int = 1, gap: float = 0.0) -> socket.socket:
    """A TLS client on a raw socket: its ClientHello in `pieces`, `gap` s apart, then
    the rest of the handshake.  Raises on a close before the end."""
    loop = asyncio.get_running_loop()
    tls, incoming, outgoing = _client()
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        sock.bind((local, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        step = -(-len(hello) // pieces)
        for at in range(0, len(hello), step):
            if at:
                await asyncio.sleep(gap)
            await loop.sock_sendall(sock, hello[at : at + step])
        while True:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionResetError("closed by the server during the handshake")
            incoming.write(data)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                await loop.sock_sendall(sock, outgoing.read())
                return sock
            if out := outgoing.read():
                await loop.sock_sendall(sock, out)
    except BaseException:
        sock.close()
        raise


async def raw(port: int, local: str, payload: bytes, drip: float = 0.0) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((local, 0))
    await loop.sock_connect(sock, ("127.0.0.1", port))
    if not drip:
        await loop.sock_sendall(sock, payload)
        return sock

    async def dripping() -> None:
        with contextlib.suppress(OSError):
            for byte in payload:
                await loop.sock_sendall(sock, bytes([byte]))
                await asyncio.sleep(drip)

    task = asyncio.ensure_future(dripping())
    task.add_done_callback(lambda _: None)
    return sock


# -- parsing the ClientHello's size ---------------------------------------------------


def test_hello_size_finds_the_end_of_a_real_client_hello() -> None:
    hello = client_hello_bytes()
    assert hello_size(hello) == len(hello)
    assert hello_size(hello + b"more") == len(hello)
    assert hello_size(hello[:3]) == 5  # a record header first
    assert hello_size(hello[:7]) == 9  # then the handshake header
    assert hello_size(hello[:100]) == len(hello)  # then the whole record


def test_hello_size_follows_a_hello_across_records() -> None:
    body = b"\x01\x00\x00\x0a" + bytes(10)  # client_hello, 10 bytes of body
    first, second = body[:6], body[6:]
    records = b"\x16\x03\x01\x00\x06" + first + b"\x16\x03\x01\x00\x08" + second
    assert hello_size(records[:11]) == 16  # the next record's header
    assert hello_size(records[:16]) == len(records)
    assert hello_size(records) == len(records)


@pytest.mark.parametrize(
    "head",
    [
        b"\x16\x03\x01\x00\x05hello",  # a handshake record that is not a ClientHello
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x50\x00" + b"\x01",  # longer than a record may be
        b"\x16\x03\x01\x00\x02\x01\x00",  # too short for a handshake header
    ],
)
def test_hello_size_leaves_what_is_no_client_hello_to_the_tls_library(head: bytes) -> None:
    assert hello_size(head) == 0


def test_hello_size_names_an_oversized_hello() -> None:
    # 5 records of 16 KiB announced: more than MAX_HELLO, which the listener drops.
    head = b"\x16\x03\x01\x40\x00\x01\x01\x40\x00"
    assert hello_size(head) > len(head)
    assert hello_size(head + bytes(0x4000 - 4) + b"\x16\x03\x01\x40\x00") > 0x4000
    assert MAX_HELLO < (0x0140_00 + 4)


# -- the waiting line: fewest-held first, stalled holders taken back -------------------


def test_a_freed_handshake_slot_goes_to_the_quietest_waiting_address() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slots = Slots(2, 0, lifetime=WAIT, clock=loop.time, stall_grace=60.0)
        held = [await slots.wait_acquire("busy", 1.0) for _ in range(2)]
        busy = asyncio.ensure_future(slots.wait_acquire("busy", 5.0))
        await asyncio.sleep(0)
        quiet = asyncio.ensure_future(slots.wait_acquire("quiet", 5.0))
        await asyncio.sleep(0)
        assert slots.waiting == 2
        first = held[0]
        assert first is not None
        first.release()  # "busy" queued first, but holds one: "quiet" holds none
        got = await asyncio.wait_for(quiet, 1.0)
        assert got is not None and got.key == "quiet" and not busy.done()
        second = held[1]
        assert second is not None
        second.release()
        assert (await asyncio.wait_for(busy, 1.0)) is not None

    asyncio.run(main())


def test_a_stalled_holder_yields_only_to_a_quieter_address() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slots = Slots(2, 0, lifetime=WAIT, clock=loop.time, stall_grace=0.2)
        evicted: list[str] = []
        held = [await slots.wait_acquire("busy", 1.0) for _ in range(2)]
        for slot in held:
            assert slot is not None
            slot.evict = lambda: evicted.append("busy")
        # The same address waiting: its own stalled holders are not taken back.
        assert await slots.wait_acquire("busy", 0.6) is None
        assert evicted == [] and slots.stalled == 0
        # A quieter address waiting: the busiest's oldest stalled holder goes.
        began = loop.time()
        got = await slots.wait_acquire("quiet", 2.0)
        assert got is not None and evicted == ["busy"] and slots.stalled == 1
        assert loop.time() - began < 1.0
        assert held[0] is not None and not held[0].held

    asyncio.run(main())


# -- through real sockets, on every loop ----------------------------------------------


@pytest.mark.parametrize("loop_factory", _loops())
def test_tls_vms_from_a_quiet_address_get_in_past_stalling_holders(
    loop_factory: LoopFactory,
    server_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 hostile TLS connections (a record header then nothing, a ClientHello dripped,
    a whole ClientHello then silence) against 4 handshake slots: 5 good TLS VMs
    from another address are all through in a few seconds, far before the holders'
    identification deadline."""
    caplog.set_level(logging.INFO, logger="vspc")
    monkeypatch.setattr("vspc.vspcd.net.tls.HELLO_GRACE", 1.0)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        handshakes = Slots(4, 4, lifetime=WAIT, clock=loop.time, stall_grace=0.5)
        unidentified = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = await start_proxy_listener(
            "127.0.0.1",
            0,
            server_tls,
            factory,
            handshake_timeout=WAIT,
            unidentified=unidentified,
            handshakes=handshakes,
        )
        port = listener.port
        hostile: list[socket.socket] = []
        try:
            hello = client_hello_bytes()
            for i in range(20):
                if i % 3 == 0:
                    hostile.append(await raw(port, HOSTILE, hello))  # whole, then silence
                elif i % 3 == 1:
                    hostile.append(await raw(port, HOSTILE, hello[:11]))  # stalled mid-way
                else:
                    hostile.append(await raw(port, HOSTILE, hello, drip=0.2))
            async with asyncio.timeout(WAIT):
                while len(handshakes) < 4:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # no event to wait on inside the listener
            assert {slot for slot in handshakes._held} == {HOSTILE}
            began = time.monotonic()
            good = await asyncio.gather(*(tls_client(port, GOOD) for _ in range(5)))
            for _ in good:
                await asyncio.wait_for(seen.get(), WAIT)
            took = time.monotonic() - began
            assert took < 3.0, took  # stall grace 0.5 s; the holders' deadline is 10 s
            assert handshakes.stalled >= 1
            for sock in good:
                sock.close()
            # Those that never finished their ClientHello go at its grace (1 s here).
            unfinished = [sock for i, sock in enumerate(hostile) if i % 3 == 1]
            async with asyncio.timeout(3.0):
                for sock in unfinished:
                    with contextlib.suppress(ConnectionError):
                        while await loop.sock_recv(sock, 65536):
                            pass
        finally:
            for sock in hostile:
                sock.close()
            listener.close()
            await listener.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())
    logged = [r.getMessage() for r in caplog.records]  # aggregated: the first of a burst
    assert any("TLS handshake stalled; its slot went to another address" in m for m in logged)


@pytest.mark.parametrize("loop_factory", _loops())
def test_a_tls_burst_from_one_address_is_never_reclaimed(
    loop_factory: LoopFactory, server_tls: ssl.SSLContext
) -> None:
    """One host's 40 TLS VMs at once through 4 slots (2 per address): all get in, none
    is taken back (only a quieter address could take a slot back)."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        handshakes = Slots(4, 2, lifetime=WAIT, clock=loop.time, stall_grace=0.05)
        unidentified = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = await start_proxy_listener(
            "127.0.0.1",
            0,
            server_tls,
            factory,
            handshake_timeout=WAIT,
            unidentified=unidentified,
            handshakes=handshakes,
        )
        try:
            socks = await asyncio.gather(*(tls_client(listener.port, GOOD) for _ in range(40)))
            for _ in socks:
                await asyncio.wait_for(seen.get(), WAIT)
            assert handshakes.stalled == 0 and handshakes.evicted == 0
            for sock in socks:
                sock.close()
        finally:
            listener.close()
            await listener.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())


@pytest.mark.parametrize("loop_factory", _loops())
def test_a_client_hello_in_pieces_gets_in_within_the_grace_and_not_after(
    loop_factory: LoopFactory, server_tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vspc.vspcd.net.tls.HELLO_GRACE", 1.0)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        handshakes = Slots(4, 2, lifetime=WAIT, clock=loop.time)
        unidentified = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = await start_proxy_listener(
            "127.0.0.1",
            0,
            server_tls,
            factory,
            handshake_timeout=WAIT,
            unidentified=unidentified,
            handshakes=handshakes,
        )
        try:
            sock = await tls_client(listener.port, GOOD, pieces=4, gap=0.1)
            await asyncio.wait_for(seen.get(), WAIT)
            sock.close()
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(tls_client(listener.port, GOOD, pieces=4, gap=0.6), WAIT)
            assert seen.empty() and handshakes.admitted == 1
        finally:
            listener.close()
            await listener.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())
