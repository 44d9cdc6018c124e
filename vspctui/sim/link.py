"""One connection from a fake VM to the proxy: an asyncio Protocol around EsxiSession.

Plumbing only (docs/development.md §2): `data_received` feeds `vspc.common.esxi.EsxiSession`,
hands `ConsoleInput` to the owner's `on_input`, resolves the one waiter for a
vMotion answer (`Goahead`/`NotNow`/`PeerOk`) or for `ProxyAnswer`, and writes what
the session queued.  A peer that breaks telnet framing closes the link; nothing it
sends raises out of here.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from vspc.common.esxi import (
    ConsoleInput,
    EsxiEvent,
    EsxiSession,
    Goahead,
    Notice,
    NotNow,
    PeerOk,
    ProxyAnswer,
    TelnetProtocolError,
)
from vspc.vspctui.sim.identity import Identity

__all__ = ["Link", "open_link"]

Answer = Goahead | NotNow | PeerOk | ProxyAnswer


class Link(asyncio.Protocol):
    """ESXi's side of one TCP connection.  `open_link()` makes and connects one."""

    def __init__(self, session: EsxiSession, on_input: Callable[[bytes], None]) -> None:
        self.session = session
        self.on_input = on_input
        self.on_notice: Callable[[str], None] = lambda _message: None
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.proxy_answer: asyncio.Future[bool] = loop.create_future()
        self.announced: asyncio.Future[None] = loop.create_future()  # KS-1 sent
        self._waiter: asyncio.Future[Answer] | None = None
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive_data(data)
        except TelnetProtocolError as exc:
            self.on_notice(f"proxy broke telnet framing: {exc}")
            self.close()
            return
        self._flush()
        if self.session.announced and not self.announced.done():
            self.announced.set_result(None)
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: EsxiEvent) -> None:
        match event:
            case ConsoleInput(payload):
                self.on_input(payload)
            case ProxyAnswer(accepted):
                if not self.proxy_answer.done():
                    self.proxy_answer.set_result(accepted)
            case Goahead() | NotNow() | PeerOk():
                waiter, self._waiter = self._waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
            case Notice(message):
                self.on_notice(message)
            case _:
                pass  # KS-2 and RCVD-2 need no answer from a VM

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        gone = ConnectionError("connection to the proxy lost")
        waiters: tuple[asyncio.Future[Any] | None, ...] = (
            self._waiter,
            self.proxy_answer,
            self.announced,
        )
        for future in waiters:
            if future is not None and not future.done():
                future.set_exception(gone)
                future.exception()  # retrieved: a link may die with nobody waiting

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- the owner's actions ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.lost.done()

    def expect(self) -> asyncio.Future[Answer]:
        """A future for the next GOAHEAD, NOTNOW or PEER-OK on this link."""
        self._waiter = asyncio.get_running_loop().create_future()
        if self.closed:
            self._waiter.set_exception(ConnectionError("connection to the proxy lost"))
        return self._waiter

    def send(self, payload: bytes) -> None:
        """Console output from the guest (0xff is doubled by the session)."""
        self.session.send_data(payload)
        self._flush()

    async def drained(self) -> None:
        """Return once the transport's buffer is below its high-water mark."""
        if self._writable is not None:
            await self._writable

    def flush(self) -> None:
        """Write whatever the session queued (after begin/complete/abort)."""
        self._flush()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_link(
    host: str,
    port: int,
    identity: Identity,
    on_input: Callable[[bytes], None],
    *,
    cookie: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> Link:
    """Connect as a fresh VM (a source), or as a vMotion destination presenting `cookie`.

    Raises:
        OSError: the proxy cannot be reached.
    """
    session = EsxiSession(identity.uuid, identity.name, identity.service_uri)
    if cookie is None:
        session.connect_source()
    else:
        session.connect_destination(cookie)
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(
        lambda: Link(session, on_input), host, port, ssl=tls, server_hostname=host if tls else None
    )
    return link
