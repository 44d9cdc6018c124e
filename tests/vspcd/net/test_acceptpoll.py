"""Console ports behind one loop registration (vspcd/net/acceptpoll.py, issue #12 item 3).

Through real sockets: many `PortBinder` ports accept through the shared epoll set,
a closed port stops being watched, and the EMFILE back-off of the listener
discipline (issue #7) still holds one line per episode.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

import pytest

from tests.vspcd.harness import free_port
from tests.vspcd.net.test_listeners import HOST, WAIT, close_all, close_writer, recorder_factory
from vspc.vspcd.net import acceptpoll
from vspc.vspcd.net.listeners import PortBinder

pytestmark = pytest.mark.skipif(not acceptpoll.available(), reason="no epoll on this platform")


def test_console_ports_share_one_registration_and_all_accept() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        binder = PortBinder(HOST, free_port(), loop)
        try:
            bound = [binder.bind(factory) for _ in range(5)]
            ports = [b[0] for b in bound if b is not None]
            assert len(ports) == 5
            poller = binder._poller
            assert poller is not None and len(poller) == 5
            readers = len(loop._selector.get_map())  # type: ignore[attr-defined]
            binder.bind(factory)
            assert len(loop._selector.get_map()) == readers  # type: ignore[attr-defined]
            # Every port accepts, each on its own listener; data flows.
            for port in ports:
                reader, writer = await asyncio.open_connection(HOST, port)
                link = await asyncio.wait_for(seen.get(), WAIT)
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
                await close_writer(writer)
                await close_all(seen, link)
            # A released port is no longer watched, and refuses connections.
            binder.release(ports[0])
            assert len(poller) == 5
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(HOST, ports[0])
        finally:
            binder.close_all()
        assert binder._poller is None

    asyncio.run(body())


def test_a_console_port_backs_off_at_emfile_under_the_shared_poller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = 2

    async def body() -> list[float]:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        binder = PortBinder(HOST, free_port(), loop, backoff=0.1)
        bound = binder.bind(factory)
        assert bound is not None
        port, listener = bound
        poller = binder._poller
        assert poller is not None
        real_accept = listener._accept
        calls: list[float] = []
        counts: list[int] = []

        def accept() -> tuple[socket.socket, object]:
            calls.append(loop.time())
            counts.append(len(poller))
            if len(calls) <= failures:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_accept()

        listener._accept = accept
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            link = await asyncio.wait_for(seen.get(), WAIT)
            await close_writer(writer)
            await close_all(seen, link)
        finally:
            binder.close_all()
        # Watched again at every call after a back-off (the resume re-registered it).
        # While backing off it was not: level-triggered epoll would otherwise have
        # woken it on every loop iteration (the spacing of `calls` checks that).
        assert counts and all(count == 1 for count in counts)
        return calls

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.net.listeners"):
        calls = asyncio.run(body())
    assert len(calls) <= failures + 2  # not spinning while the fd ceiling lasts
    assert calls[1] - calls[0] >= 0.09 and calls[2] - calls[1] >= 0.09
    messages = [r.getMessage() for r in caplog.records]
    assert sum("pausing accepts" in m for m in messages) == 1
    assert any("accepting again" in m for m in messages)
