"""The lean VM transport (vspcd/net/leantransport.py, issue #12 item 3).

Over real loopback TCP connections, against what asyncio's selector transport does:
callback order, EOF and half-close, write buffering with pause/resume at the limits,
close that flushes, abort that does not, errors from the peer and from the protocol,
extra info, read pausing, the fallback to `add_reader` without epoll, the shared
epoll set given back when empty, and the proxy listener handing plain connections
(and only plain ones on the selector loop) to it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.vspcd.net.test_listeners import HOST, WAIT, recorder_factory
from vspc.vspcd.net import acceptpoll, leantransport
from vspc.vspcd.net.leantransport import LeanTransport
from vspc.vspcd.net.listeners import start_proxy_listener


class Probe(asyncio.Protocol):
    """Records every callback in order; `data` holds what arrived."""

    def __init__(self, *, keep_open: bool = False) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.made = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()
        self.eof = asyncio.Event()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.transport: LeanTransport | None = None
        self.raise_on_data: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, LeanTransport)
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        self.data += data
        self.arrived.set()
        if self.raise_on_data is not None:
            raise self.raise_on_data

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set()
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")
        self.paused.set()

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


@asynccontextmanager
async def pair(**probe: Any) -> AsyncIterator[tuple[LeanTransport, Probe, socket.socket]]:
    """A LeanTransport on one end of a loopback TCP connection, a blocking peer socket."""
    loop = asyncio.get_running_loop()
    with socket.create_server((HOST, 0)) as server:
        peer = socket.create_connection(server.getsockname())
        conn, address = server.accept()
    conn.setblocking(False)
    proto = Probe(**probe)
    transport = LeanTransport(loop, conn, proto, address)
    try:
        await asyncio.wait_for(proto.made, WAIT)
        yield transport, proto, peer
    finally:
        transport.abort()
        peer.close()
        await asyncio.wait_for(asyncio.shield(proto.lost), WAIT)


async def recv_all(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    peer.setblocking(False)
    got = bytearray()
    while len(got) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), WAIT)
        assert chunk, "peer saw EOF early"
        got += chunk
    return bytes(got)


def run(body: Callable[[], Any]) -> None:
    asyncio.run(body())


def test_data_then_eof_closes_and_reports_a_clean_loss() -> None:
    async def body() -> None:
        async with pair() as (transport, proto, peer):
            assert proto.events == ["made"] and transport.is_reading()
            peer.sendall(b"hello")
            await asyncio.wait_for(proto.arrived.wait(), WAIT)
            peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(asyncio.shield(proto.lost), WAIT) is None
            assert proto.data == b"hello"
            assert proto.events[0] == "made" and proto.events[-2:] == ["eof", "lost"]
            assert transport.is_closing() and transport.get_extra_info("socket") is None
            assert peer.recv(10) == b""  # our side closed too

    run(body)


def test_eof_received_true_keeps_the_write_side_open() -> None:
    async def body() -> None:
        async with pair(keep_open=True) as (transport, proto, peer):
            peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(proto.eof.wait(), WAIT)
            assert not transport.is_closing() and not transport.is_reading()
            transport.write(b"still here")
            assert await recv_all(peer, 10) == b"still here"

    run(body)


def test_big_write_buffers_pauses_resumes_and_arrives_in_order() -> None:
    async def body() -> None:
        async with pair() as (transport, proto, peer):
            transport.set_write_buffer_limits(high=4096)
            assert transport.get_write_buffer_limits() == (1024, 4096)
            payload = bytes(range(256)) * 16384  # 4 MiB: more than the kernel takes
            transport.write(payload[:1])
            transport.write(payload[1:])
            assert transport.get_write_buffer_size() > 4096
            assert proto.events[-1] == "pause"
            transport.write(b"!")  # a write while paused is buffered, not refused
            assert await recv_all(peer, len(payload) + 1) == payload + b"!"
            await asyncio.wait_for(proto.resumed.wait(), WAIT)
            assert transport.get_write_buffer_size() == 0
            assert proto.events.count("pause") == 1 and proto.events.count("resume") == 1

    run(body)


def test_close_flushes_the_buffer_first_and_abort_does_not() -> None:
    async def body() -> None:
        payload = b"x" * (4 << 20)
        async with pair() as (transport, proto, peer):
            transport.write(payload)
            assert transport.get_write_buffer_size() > 0
            transport.close()
            transport.close()  # idempotent
            assert not proto.lost.done()
            assert await recv_all(peer, len(payload)) == payload
            assert await asyncio.wait_for(asyncio.shield(proto.lost), WAIT) is None
        async with pair() as (transport, proto, peer):
            transport.write(payload)
            transport.abort()
            assert transport.get_write_buffer_size() == 0
            assert await asyncio.wait_for(asyncio.shield(proto.lost), WAIT) is None
            assert proto.events.count("lost") == 1

    run(body)


def test_a_reset_from_the_peer_reports_the_error() -> None:
    async def body() -> None:
        async with pair() as (_transport, proto, peer):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # RST
            exc = await asyncio.wait_for(asyncio.shield(proto.lost), WAIT)
            assert isinstance(exc, ConnectionResetError)

    run(body)


def test_a_protocol_exception_goes_to_the_loop_handler_and_closes() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        async with pair() as (transport, proto, peer):
            proto.raise_on_data = ValueError("bug")
            peer.sendall(b"boom")
            exc = await asyncio.wait_for(asyncio.shield(proto.lost), WAIT)
            assert isinstance(exc, ValueError)
            assert reported and reported[0]["exception"] is exc
            assert "data_received" in reported[0]["message"]
            assert reported[0]["transport"] is transport

    run(body)


def test_writes_after_the_loss_are_dropped_and_write_eof_rules() -> None:
    async def body() -> None:
        async with pair() as (transport, proto, peer):
            transport.write(b"bye")
            transport.write_eof()
            assert transport.can_write_eof()
            with pytest.raises(RuntimeError):
                transport.write(b"more")
            assert await recv_all(peer, 3) == b"bye"
            assert peer.recv(10) == b""  # our write side is shut
            with pytest.raises(TypeError):
                transport.write("text")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                transport.set_write_buffer_limits(high=1, low=2)
        async with pair() as (transport, proto, _peer):
            pass
        assert proto.lost.done()
        for _ in range(8):
            transport.write(b"late")  # dropped: no exception after connection_lost

    run(body)


def test_extra_info_and_read_pausing() -> None:
    async def body() -> None:
        async with pair() as (transport, proto, peer):
            assert transport.get_extra_info("peername") == peer.getsockname()
            assert transport.get_extra_info("sockname") == peer.getpeername()
            assert transport.get_extra_info("socket").fileno() >= 0
            assert transport.get_extra_info("nonsense", 7) == 7
            assert transport.get_protocol() is proto
            transport.pause_reading()
            assert not transport.is_reading()
            peer.sendall(b"later")
            await asyncio.sleep(0.05)  # nothing to wait on: nothing must happen
            assert proto.data == b""
            transport.resume_reading()
            await asyncio.wait_for(proto.arrived.wait(), WAIT)
            assert proto.data == b"later"

    run(body)


def test_without_epoll_each_transport_uses_add_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceptpoll, "available", lambda: False)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with pair() as (transport, proto, peer):
            assert transport._poller is None
            assert loop._selector.get_key(transport.get_extra_info("socket").fileno()) is not None  # type: ignore[attr-defined]
            peer.sendall(b"ok")
            await asyncio.wait_for(proto.arrived.wait(), WAIT)
            transport.write(b"back")
            assert await recv_all(peer, 4) == b"back"

    run(body)


@pytest.mark.skipif(not acceptpoll.available(), reason="no epoll on this platform")
def test_the_shared_epoll_set_is_given_back_when_the_last_transport_goes() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        readers = len(loop._selector.get_map())  # type: ignore[attr-defined]
        async with pair() as (first, _p1, _s1), pair() as (second, _p2, _s2):
            poller = leantransport.readiness_poller(loop)
            assert poller is first._poller is second._poller and len(poller) == 2
            assert len(loop._selector.get_map()) == readers + 1  # type: ignore[attr-defined]
        assert poller is not None and len(poller) == 0 and poller._epoll is None
        assert len(loop._selector.get_map()) == readers  # type: ignore[attr-defined]

    run(body)


@pytest.mark.parametrize("lean", [True, False])
def test_the_proxy_listener_hands_plain_connections_to_it(lean: bool) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, None, factory, lean=lean)
        try:
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert isinstance(link.transport, LeanTransport) is lean
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
            writer.close()
            await writer.wait_closed()
        finally:
            listener.close()

    run(body)
