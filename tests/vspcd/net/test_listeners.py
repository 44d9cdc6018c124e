"""vspcd/net/listeners.py end to end on 127.0.0.1 port 0 (docs/development.md "Tests").

Proxy port: plain and TLS on one port, however late the first byte, silence closed,
keepalive, EMFILE back-off; PortBinder: lowest free port, skipping occupied ones; admin Unix socket:
mode, group, stale and live sockets.  Every wait has a timeout; none is a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import random
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from vspc.vspcd.net.admission import Slots
from vspc.vspcd.net.listeners import (
    AdminSocketError,
    Listener,
    PortBinder,
    bind_tcp,
    has_keepalive,
    make_ssl_context,
    peer_credentials,
    start_admin_socket,
    start_proxy_listener,
    uid_in_group,
)

HOST = "127.0.0.1"
WAIT = 5.0  # upper bound for anything that should happen "at once"


class Recorder(asyncio.Protocol):
    """Echoes data back and reports what the listener handed it."""

    def __init__(self, seen: asyncio.Queue[Recorder]) -> None:
        self._seen = seen
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self.keepalive = 0
        self.received = bytearray()
        self.got_data = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None
        sock = transport.get_extra_info("socket")
        self.keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        self._seen.put_nowait(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.write(data)
        if not self.got_data.done():
            self.got_data.set_result(None)


def recorder_factory() -> tuple[asyncio.Queue[Recorder], Callable[[], Recorder]]:
    seen: asyncio.Queue[Recorder] = asyncio.Queue()
    return seen, lambda: Recorder(seen)


@pytest.fixture
def server_tls(cert_pair: tuple[Path, Path]) -> ssl.SSLContext:
    return make_ssl_context(*cert_pair)


@pytest.fixture
def client_tls(cert_pair: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_pair[0]))


async def roundtrip(
    port: int, payload: bytes, client_ssl: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            HOST, port, ssl=client_ssl, server_hostname="localhost" if client_ssl else None
        ),
        WAIT,
    )
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), WAIT) == payload
    return reader, writer


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # the server hung up first
        await asyncio.wait_for(writer.wait_closed(), WAIT)


async def close_all(seen: asyncio.Queue[Recorder], *recorders: Recorder) -> None:
    for recorder in recorders:
        assert recorder.transport is not None
        recorder.transport.close()
    await asyncio.sleep(0)  # let connection_lost callbacks run before the loop closes


async def assert_still_serving(port: int, seen: asyncio.Queue[Recorder], payload: bytes) -> None:
    """A fresh connection after a failure still gets through to the factory."""
    _, writer = await roundtrip(port, payload)
    link = await asyncio.wait_for(seen.get(), WAIT)
    await close_writer(writer)
    await close_all(seen, link)


# -- proxy listener ------------------------------------------------------------------


def test_make_ssl_context_is_a_modern_server_context(cert_pair: tuple[Path, Path]) -> None:
    context = make_ssl_context(*cert_pair)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.protocol is ssl.PROTOCOL_TLS_SERVER
    assert context.verify_mode is ssl.CERT_NONE  # ESXi presents no client certificate


def test_make_ssl_context_rejects_a_cert_without_its_key(cert_pair: tuple[Path, Path]) -> None:
    with pytest.raises(ssl.SSLError):
        make_ssl_context(cert_pair[0])


def test_plain_client_gets_plain_protocol_on_a_tls_port(server_tls: ssl.SSLContext) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        try:
            # ESXi's first bytes on telnet:// (docs/protocol.md §3.1): IAC WILL AUTH
            _, writer = await roundtrip(listener.port, b"\xff\xfb\x25")
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert not link.tls
            assert bytes(link.received) == b"\xff\xfb\x25"  # the peeked byte is not lost
            assert link.keepalive
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_tls_client_gets_tls_on_the_same_port(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        try:
            _, tls_writer = await roundtrip(listener.port, b"\xff\xfb\x25secure", client_tls)
            tls_link = await asyncio.wait_for(seen.get(), WAIT)
            assert tls_link.tls and tls_link.keepalive
            _, plain_writer = await roundtrip(listener.port, b"plain")
            plain_link = await asyncio.wait_for(seen.get(), WAIT)
            assert not plain_link.tls
            await close_writer(tls_writer)
            await close_writer(plain_writer)
            await close_all(seen, tls_link, plain_link)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_silent_client_is_closed_at_the_first_byte_deadline(server_tls: ssl.SSLContext) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=0.1)
        try:
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            # ESXi always speaks first: silence is not taken for plain telnet
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            assert seen.empty()
            writer.close()
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_a_late_client_hello_is_still_tls(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        # No fixed short peek: the first byte decides whenever it comes.
        listener = await start_proxy_listener(HOST, 0, server_tls, factory)
        try:
            raw = socket.create_connection((HOST, listener.port))
            raw.setblocking(False)
            await asyncio.sleep(1.2)  # past the old fixed 1 s sniffing timeout
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(sock=raw, ssl=client_tls, server_hostname="localhost"),
                WAIT,
            )
            writer.write(b"late")
            assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"late"
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert link.tls
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_without_tls_nothing_is_peeked(server_tls: ssl.SSLContext) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        # A peek would hold a silent client for 60 s; without TLS it is handed over now.
        listener = await start_proxy_listener(HOST, 0, None, factory, peek_timeout=60)
        try:
            _, writer = await asyncio.open_connection(HOST, listener.port)
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert not link.tls and link.keepalive
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_client_leaving_before_a_byte_gets_no_protocol(server_tls: ssl.SSLContext) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        try:
            _, writer = await asyncio.open_connection(HOST, listener.port)
            await close_writer(writer)
            _, writer = await roundtrip(listener.port, b"next")
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert bytes(link.received) == b"next"
            assert seen.empty()  # the first connection never reached the factory
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_failed_tls_handshake_is_logged_and_listener_continues(
    server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        try:
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            writer.write(b"\x16\x03\x01\x00\x05hello")  # a handshake record that is not one
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), WAIT) == b""  # server hung up
            await close_writer(writer)
            await assert_still_serving(listener.port, seen, b"ok")
        finally:
            listener.close()
            await listener.wait_closed()

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.net"):
        asyncio.run(body())
    assert any("connection setup failed" in r.getMessage() for r in caplog.records)


def test_a_handshake_cut_short_is_logged_with_a_reason(
    server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    # The exception asyncio raises here has no text: the log names its type instead
    # of ending in "connection setup failed: ".
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        try:
            _, writer = await asyncio.open_connection(HOST, listener.port)
            writer.write(b"\x16\x03\x01")  # the start of a TLS record, then goodbye
            await writer.drain()
            await close_writer(writer)
            await assert_still_serving(listener.port, seen, b"ok")  # still serving
        finally:
            listener.close()
            await listener.wait_closed()

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.net"):
        asyncio.run(body())
    failed = [m for r in caplog.records if "connection setup failed" in (m := r.getMessage())]
    assert failed and all(not m.endswith("connection setup failed: ") for m in failed), failed


def test_close_stops_accepting_and_is_idempotent() -> None:
    async def body() -> None:
        _, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, None, factory)
        port = listener.port
        listener.close()
        listener.close()
        await listener.wait_closed()
        assert listener.closed
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)

    asyncio.run(body())


def test_close_drops_connections_still_being_sniffed(server_tls: ssl.SSLContext) -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=60)
        accepted = asyncio.Event()
        real_accept = listener._accept

        def accept() -> tuple[socket.socket, object]:
            conn = real_accept()
            accepted.set()
            return conn

        listener._accept = accept
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        await asyncio.wait_for(accepted.wait(), WAIT)  # accepted, now being sniffed
        await asyncio.sleep(0)  # let the sniffing task start
        assert listener._pending
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), WAIT)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert seen.empty()
        await close_writer(writer)

    asyncio.run(body())


def test_emfile_backs_off_instead_of_spinning(caplog: pytest.LogCaptureFixture) -> None:
    failures = 2  # two EMFILEs in a row: still one warning

    async def body() -> list[float]:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, None, factory, backoff=0.1)
        loop = asyncio.get_running_loop()
        real_accept = listener._accept
        calls: list[float] = []

        def accept() -> tuple[socket.socket, object]:
            calls.append(loop.time())
            if len(calls) <= failures:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_accept()

        listener._accept = accept
        try:
            _, writer = await asyncio.open_connection(HOST, listener.port)
            link = await asyncio.wait_for(seen.get(), WAIT)
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()
        return calls

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.net"):
        calls = asyncio.run(body())
    # EMFILE, EMFILE, accept, EAGAIN: a spinning loop would have made thousands of calls
    assert len(calls) <= failures + 2
    assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.09
    messages = [r.getMessage() for r in caplog.records]
    assert sum("pausing accepts" in m for m in messages) == 1
    assert any("accepting again" in m for m in messages)


def test_proxy_listener_bind_failure_raises() -> None:
    async def body() -> None:
        _, factory = recorder_factory()
        taken = await start_proxy_listener(HOST, 0, None, factory)
        try:
            with pytest.raises(OSError) as exc:
                await start_proxy_listener(HOST, taken.port, None, factory)
            assert exc.value.errno == errno.EADDRINUSE
        finally:
            taken.close()

    asyncio.run(body())


# -- PortBinder ----------------------------------------------------------------------


def occupy(port: int = 0, *, listen: bool = True) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((HOST, port))
        if listen:
            sock.listen()
    except OSError:
        sock.close()  # a port taken by another test's connection: no leaked socket
        raise
    return sock


def bindable(port: int) -> bool:
    try:
        occupy(port, listen=False).close()
    except OSError:
        return False
    return True


def test_port_binder_skips_an_occupied_port_and_takes_the_lowest_free() -> None:
    async def body() -> None:
        blocker = occupy()  # the OS picks a free port p; we keep it busy
        start = blocker.getsockname()[1]
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        try:
            bound = binder.bind(recorder_factory()[1])
            assert bound is not None
            port, handle = bound
            assert port > start and handle.port == port
            assert not any(bindable(p) for p in range(start + 1, port))  # nothing lower was free
        finally:
            binder.close_all()
            blocker.close()

    asyncio.run(body())


def test_port_binder_skips_a_bound_but_not_listening_socket() -> None:
    async def body() -> None:
        blocker = occupy(listen=False)
        start = blocker.getsockname()[1]
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        try:
            bound = binder.bind(recorder_factory()[1])
            assert bound is not None and bound[0] != start
        finally:
            binder.close_all()
            blocker.close()

    asyncio.run(body())


def test_port_binder_lowest_first_and_release_makes_a_port_reusable() -> None:
    async def body() -> None:
        probe = occupy()
        start = probe.getsockname()[1]
        probe.close()
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        factory = recorder_factory()[1]
        try:
            first = binder.bind(factory)
            second = binder.bind(factory)
            assert first is not None and second is not None
            assert first[0] < second[0]
            assert binder.ports == {first[0], second[0]}
            binder.release(first[0])
            binder.release(first[0])  # idempotent
            assert first[1].closed
            again = binder.bind(factory)
            assert again is not None and again[0] == first[0]
        finally:
            binder.close_all()
        assert binder.ports == frozenset()

    asyncio.run(body())


def test_port_binder_retries_a_foreign_port_below_its_own_once_it_is_free() -> None:
    # Binding skips the ports it holds without trying them, but a port someone else
    # held is tried again (with retry=0: on every bind), so it is handed out once freed.
    async def body() -> None:
        blocker = occupy()
        start = blocker.getsockname()[1]
        binder = PortBinder(HOST, start, asyncio.get_running_loop(), retry=0.0)
        factory = recorder_factory()[1]
        try:
            first = binder.bind(factory)
            second = binder.bind(factory)
            assert first is not None and second is not None
            assert start < first[0] < second[0]
            blocker.close()
            again = binder.bind(factory)
            assert again is not None and again[0] == start
            binder.release(first[0])
            lowest = binder.bind(factory)
            assert lowest is not None and lowest[0] == first[0]
        finally:
            binder.close_all()
            blocker.close()

    asyncio.run(body())


def test_port_binder_listener_accepts_through_asyncio() -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        probe = occupy()
        start = probe.getsockname()[1]
        probe.close()
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        try:
            bound = binder.bind(factory)
            assert bound is not None
            _, writer = await roundtrip(bound[0], b"operator")
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert not link.tls
            await close_writer(writer)
            await close_all(seen, link)
            binder.release(bound[0])
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, bound[0])
        finally:
            binder.close_all()

    asyncio.run(body())


def test_port_binder_gives_up_at_65535() -> None:
    async def body() -> None:
        binder = PortBinder(HOST, 65535, asyncio.get_running_loop())
        factory = recorder_factory()[1]
        try:
            first = binder.bind(factory)
            assert first is None or first[0] == 65535
            assert binder.bind(factory) is None
        finally:
            binder.close_all()

    asyncio.run(body())


def test_port_binder_stops_scanning_on_an_address_error(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        # 192.0.2.1 (TEST-NET-1) is not ours: bind fails with EADDRNOTAVAIL for every
        # port, so scanning on would only burn time.  No packet is sent.
        binder = PortBinder("192.0.2.1", 1024, asyncio.get_running_loop())
        assert binder.bind(recorder_factory()[1]) is None

    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.net"):
        asyncio.run(body())
    assert "cannot bind telnet ports" in caplog.text


@pytest.mark.parametrize("start", [0, 65536, -1])
def test_port_binder_range_is_validated(start: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            PortBinder(HOST, start, loop)
    finally:
        loop.close()


# -- admin socket --------------------------------------------------------------------


def test_admin_socket_mode_group_credentials_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "run" / "vspcd.sock"
    group = grp.getgrgid(os.getgid()).gr_name

    async def body() -> None:
        seen, factory = recorder_factory()
        admin = await start_admin_socket(path, factory, mode=0o640, group=group)
        try:
            info = path.lstat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o640
            assert info.st_gid == os.getgid()
            reader, writer = await asyncio.open_unix_connection(str(path))
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert link.transport is not None
            creds = peer_credentials(link.transport.get_extra_info("socket"))
            assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.geteuid(), os.getegid())
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            admin.close()
            await admin.wait_closed()
        assert not path.exists()

    asyncio.run(body())


def test_admin_socket_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that died

    async def body() -> None:
        seen, factory = recorder_factory()
        admin = await start_admin_socket(path, factory)
        try:
            # The stale file was replaced by a listening socket: a client gets through.
            assert stat.S_ISSOCK(path.stat().st_mode)
            _, writer = await asyncio.open_unix_connection(str(path))
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert link.transport is not None
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            admin.close()
            await admin.wait_closed()

    asyncio.run(body())


def test_admin_socket_refuses_when_a_daemon_is_listening(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.sock"

    async def body() -> None:
        first = await start_admin_socket(path, recorder_factory()[1])
        try:
            with pytest.raises(AdminSocketError, match="another daemon"):
                await start_admin_socket(path, recorder_factory()[1])
            assert path.exists()  # the live daemon's socket is untouched
        finally:
            first.close()
            await first.wait_closed()

    asyncio.run(body())


def test_admin_socket_refuses_a_non_socket_in_the_way(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.sock"
    path.write_text("precious")

    async def body() -> None:
        with pytest.raises(AdminSocketError, match="not a socket"):
            await start_admin_socket(path, recorder_factory()[1])

    asyncio.run(body())
    assert path.read_text() == "precious"


def test_admin_socket_refuses_a_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    async def body() -> None:
        with pytest.raises(AdminSocketError, match="world-writable"):
            await start_admin_socket(shared / "vspcd.sock", recorder_factory()[1])

    asyncio.run(body())


def test_uid_in_group() -> None:
    me = grp.getgrgid(os.getgid()).gr_name
    assert uid_in_group(os.getuid(), os.getgid(), me)
    assert not uid_in_group(os.getuid(), os.getgid(), "no-such-group-xyz")


# -- PortBinder.bind_port (consoles restored from --persist-file) -----------------------


def test_port_binder_bind_port_takes_the_exact_port_and_keeps_the_scan_right() -> None:
    async def body() -> None:
        # Three free ports in a row, below Linux's ephemeral range (32768+), where a
        # busy machine's outgoing connections would leave gaps.
        for _ in range(50):
            start = random.randrange(20000, 32000)
            if all(bindable(p) for p in range(start, start + 3)):
                break
        else:
            pytest.skip("no three consecutive free ports found")
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        factory = recorder_factory()[1]
        try:
            wanted = start + 2
            exact = binder.bind_port(wanted, factory)
            assert exact is not None and exact[0] == wanted and exact[1].port == wanted
            lower = [binder.bind(factory), binder.bind(factory)]
            assert [b[0] for b in lower if b is not None] == [start, start + 1]
            after = binder.bind(factory)  # skips the restored port
            assert after is not None and after[0] > wanted
        finally:
            binder.close_all()

    asyncio.run(body())


def test_port_binder_bind_port_falls_back_when_taken_held_or_out_of_range() -> None:
    async def body() -> None:
        blocker = occupy()
        start = blocker.getsockname()[1]
        binder = PortBinder(HOST, start, asyncio.get_running_loop())
        factory = recorder_factory()[1]
        try:
            taken = binder.bind_port(start, factory)  # someone else holds it
            assert taken is not None and taken[0] > start
            held = binder.bind_port(taken[0], factory)  # we hold it already
            assert held is not None and held[0] not in (start, taken[0])
            below = binder.bind_port(start - 1, factory)  # below --port-range-start
            assert below is not None and below[0] > start
            assert len(binder.ports) == 3
        finally:
            binder.close_all()
            blocker.close()

    asyncio.run(body())


# -- public asyncio API only: the same behaviour on the stdlib loop and uvloop --------


def _loops() -> list[Any]:
    """Loop factories to run a body on: the stdlib loop, and uvloop where installed."""
    params = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        params.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("no uvloop")))
    else:
        params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


def _keepalive_of(transport: asyncio.BaseTransport) -> bool:
    # asyncio's TransportSocket and uvloop's pseudo-socket both have getsockopt.
    return has_keepalive(cast(socket.socket, transport.get_extra_info("socket")))


@pytest.mark.parametrize("loop_factory", _loops())
def test_plain_connections_are_handed_over_on_every_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """`connect_accepted_socket` gives the protocol the peer's address, keepalive with
    our timing, data both ways, and the unidentified slot held until it closes."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        slots = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = Listener(bind_tcp(HOST, 0), factory, loop, unidentified=slots)
        listener.start()
        try:
            reader, writer = await roundtrip(listener.port, b"\xff\xfb\x25")
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert link.transport is not None
            assert link.transport.get_extra_info("peername") == writer.get_extra_info("sockname")
            assert _keepalive_of(link.transport)
            assert len(slots) == 1  # Recorder adopts no slot: held until it closes
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            listener.close()
            await listener.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())


@pytest.mark.parametrize("loop_factory", _loops())
def test_every_kind_of_listener_serves_on_every_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """Proxy port (plain and TLS), a console port and the admin Unix socket on one loop."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        proxy = await start_proxy_listener(HOST, 0, server_tls, factory, peek_timeout=WAIT)
        binder = PortBinder(HOST, 40000 + random.randrange(10000), loop)
        bound = binder.bind(factory)
        assert bound is not None
        admin = await start_admin_socket(tmp_path / "run" / "admin.sock", factory)
        try:
            _, plain = await roundtrip(proxy.port, b"\xff\xfb\x25")
            plain_link = await asyncio.wait_for(seen.get(), WAIT)
            assert not plain_link.tls and plain_link.keepalive
            _, secure = await roundtrip(proxy.port, b"secure", client_tls)
            tls_link = await asyncio.wait_for(seen.get(), WAIT)
            assert tls_link.tls and tls_link.keepalive
            _, console = await roundtrip(bound[0], b"operator")
            console_link = await asyncio.wait_for(seen.get(), WAIT)
            reader, unix = await asyncio.wait_for(
                asyncio.open_unix_connection(str(admin.path)), WAIT
            )
            unix.write(b"admin")
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"admin"
            admin_link = await asyncio.wait_for(seen.get(), WAIT)
            assert admin_link.transport is not None
            creds = peer_credentials(admin_link.transport.get_extra_info("socket"))
            assert creds.pid == os.getpid() and creds.uid == os.getuid()
            for writer in (plain, secure, console, unix):
                await close_writer(writer)
            await close_all(seen, plain_link, tls_link, console_link, admin_link)
        finally:
            proxy.close()
            binder.close_all()
            admin.close()
            await proxy.wait_closed()
            await admin.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())


def test_a_crashing_protocol_factory_costs_one_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, good = recorder_factory()
        calls = 0

        def factory() -> Recorder:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("factory bug")
            return good()

        slots = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = Listener(bind_tcp(HOST, 0), factory, loop, unidentified=slots)
        listener.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, listener.port)
            # The crashed connection is closed: EOF, and its slot is back.
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            assert len(slots) == 0
            await close_writer(writer)
            await assert_still_serving(listener.port, seen, b"still accepting")
        finally:
            listener.close()
            await listener.wait_closed()

    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.net"):
        asyncio.run(body())
    assert any("connection setup crashed" in r.getMessage() for r in caplog.records)


def test_plain_byte_already_there_is_sorted_without_waiting_on_a_tls_port(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """On a TLS-enabled port a connection whose first byte has arrived by accept time
    is sorted at once (no peek timeout): plain is handed over, TLS still handshakes."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        sock = bind_tcp(HOST, 0)
        # A peek timeout far beyond the wait below: only the byte can sort it in time.
        listener = Listener(sock, factory, loop, ssl_context=server_tls, peek_timeout=60.0)
        # Not accepting yet: connect and send first, so the byte waits in the kernel.
        plain = socket.create_connection(listener.sockname, timeout=WAIT)
        plain.sendall(b"\xff\xfb\x25")
        await asyncio.sleep(0.05)  # loopback delivery
        listener.start()
        try:
            link = await asyncio.wait_for(seen.get(), WAIT)
            assert not link.tls
            await asyncio.wait_for(link.got_data, WAIT)
            assert bytes(link.received) == b"\xff\xfb\x25"
            _, tls_writer = await roundtrip(listener.port, b"secure", client_tls)
            tls_link = await asyncio.wait_for(seen.get(), WAIT)
            assert tls_link.tls and tls_link.keepalive
            await close_writer(tls_writer)
            await close_all(seen, link, tls_link)
        finally:
            plain.close()
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())


def test_proxy_sockets_inherit_keepalive_from_the_listening_socket() -> None:
    async def body() -> None:
        seen, factory = recorder_factory()
        listener = await start_proxy_listener(HOST, 0, None, factory)
        try:
            links, writers = [], []
            for _ in range(3):  # the first accept checks, the others rely on it
                _, writer = await roundtrip(listener.port, b"x")
                writers.append(writer)
                links.append(await asyncio.wait_for(seen.get(), WAIT))
            for link in links:
                assert link.transport is not None
                assert _keepalive_of(link.transport)
            for writer in writers:
                await close_writer(writer)
            await close_all(seen, *links)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(body())
