"""Asyncio admin connection to vspcd, shared by `vspc`, its shell and the TUI.

Boundary: one `AdminClient` per JSON connection (Unix socket or TCP): it sends
requests with fresh ids, matches replies by id, and queues pushed events for an
async iterator.  `open_attach()` opens a *separate* connection for the attach channel,
because after its reply that connection stops carrying JSON (docs/admin-protocol.md,
"The attach channel"); that is the only way to attach, so `AdminClient` has no
attach method.  The wire format lives in `vspc.common.admin`; nothing here
touches the terminal.

Spec: docs/admin-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from vspc.common.admin import (
    AdminError,
    AttachGrant,
    ConsoleInfo,
    Event,
    Hello,
    LockMode,
    TailChunk,
    decode_message,
    encode_message,
    is_reply,
    raise_for_reply,
)

__all__ = [
    "REPLY_LIMIT",
    "AdminAddress",
    "AdminClient",
    "AttachSession",
    "ClientError",
    "ConnectError",
    "ProtocolError",
    "attach_request",
    "consoles_of",
    "open_attach",
    "open_connection",
    "parse_reply",
]

# Replies are not bound by the 1 MiB request limit: a `list` of thousands of consoles
# or a 1 MiB tail in base64 is bigger.  Past this, the daemon is misbehaving.
REPLY_LIMIT = 64 << 20


class ClientError(Exception):
    """Base of the client's own failures (the daemon's refusals are `AdminError`)."""


class ConnectError(ClientError):
    """The daemon cannot be reached (no socket, refused, permission denied)."""


class ProtocolError(ClientError):
    """The daemon broke the protocol or dropped the connection mid-conversation."""


@dataclass(frozen=True, slots=True)
class AdminAddress:
    """Where vspcd listens: a Unix socket `path`, or TCP `host`:`port`."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def tcp(cls, text: str) -> AdminAddress:
        """Parse `HOST:PORT` (`[v6addr]:PORT` for IPv6).

        Raises:
            ValueError: not HOST:PORT with a port in 1..65535.
        """
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


async def open_connection(
    address: AdminAddress,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to vspcd's admin channel, reading replies up to `REPLY_LIMIT`.

    Raises:
        ConnectError: the daemon cannot be reached.
    """
    try:
        if address.path is not None:
            return await asyncio.open_unix_connection(address.path, limit=REPLY_LIMIT)
        return await asyncio.open_connection(address.host, address.port, limit=REPLY_LIMIT)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot connect to vspcd at {address}: {reason}") from exc


async def _read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean EOF between messages."""
    try:
        line = await reader.readline()
    except ValueError as exc:  # over REPLY_LIMIT (asyncio wraps LimitOverrunError)
        raise ProtocolError(f"reply line too long: {exc}") from None
    except OSError as exc:
        raise ProtocolError(f"connection to vspcd failed: {exc}") from exc
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ProtocolError("connection closed by vspcd in the middle of a message")
    try:
        return decode_message(line[:-1])
    except AdminError as exc:
        raise ProtocolError(f"vspcd sent a malformed message: {exc.message}") from None


class AdminClient:
    """One JSON admin connection.  Build it with `await AdminClient.connect(...)`.

    Requests may be issued concurrently from several tasks; each gets its own id.
    A background task reads every message: replies resolve their request, events go
    to `events()`.  Use as an async context manager, or call `close()`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: AdminAddress,
    ) -> None:
        self.address = address
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._lost: Exception | None = None  # why the connection ended, if not by us
        self._closing = False
        self._read_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, address: AdminAddress | str) -> AdminClient:
        """Open a connection (`str` means a Unix socket path).

        Raises:
            ConnectError: the daemon cannot be reached.
        """
        if isinstance(address, str):
            address = AdminAddress(path=address)
        reader, writer = await open_connection(address)
        client = cls(reader, writer, address)
        client._read_task = asyncio.create_task(client._read_loop(), name="vspc-admin-reader")
        return client

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def lost(self) -> bool:
        """The connection has ended (closed by either side); requests would fail."""
        return self._lost is not None or self._closing

    async def close(self) -> None:
        """Close the connection; pending requests fail with ProtocolError."""
        self._closing = True
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        self._finish(ProtocolError("connection closed"))

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        lost: Exception = ProtocolError("connection closed by vspcd")
        try:
            while (message := await _read_message(self._reader)) is not None:
                self._dispatch(message)
        except ProtocolError as exc:
            lost = exc
        if self._lost is not None:  # a connection-level error reply said why
            lost = self._lost
        self._finish(lost)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if is_reply(message):
            rid = message.get("id")
            future = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if future is not None:
                if not future.done():
                    future.set_result(message)
                return
            # A reply to no request of ours: a connection-level error (flood, timeout,
            # overrun, shutting_down) sent just before the daemon closes.
            try:
                raise_for_reply(message)
            except AdminError as exc:
                self._lost = exc
            return
        # Neither reply nor well-formed event: a newer daemon's kind of message; skip it.
        with contextlib.suppress(AdminError):
            self._events.put_nowait(Event.from_json(message))

    def _finish(self, reason: Exception) -> None:
        if self._lost is None and not self._closing:
            self._lost = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._lost or reason)
        self._pending.clear()
        self._events.put_nowait(None)

    # -- requests ----------------------------------------------------------------------

    async def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply.  `None`-valued fields are left out.

        Returns:
            The reply object (`"ok": true` and the command's fields).

        Raises:
            AdminError: the daemon refused (`.code` says why).
            ProtocolError: the connection is gone or the reply was malformed.
        """
        if isinstance(self._lost, AdminError):  # e.g. flood, overrun: say so again
            raise AdminError(self._lost.code, self._lost.message)
        if self._lost is not None or self._closing:
            raise ProtocolError(f"not connected: {self._lost or 'closed'}")
        rid = next(self._ids)
        message = {"cmd": cmd, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._writer.write(encode_message(message))
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(rid, None)
            raise ProtocolError(f"connection to vspcd failed: {exc}") from exc
        try:
            reply = await future
        finally:
            self._pending.pop(rid, None)
        raise_for_reply(reply)
        return reply

    async def events(self) -> AsyncIterator[Event]:
        """Pushed events, in arrival order, until the connection ends.

        Raises:
            AdminError: the daemon closed with an error (e.g. `overrun`).
            ProtocolError: the connection was lost.
        """
        while (event := await self._events.get()) is not None:
            yield event
        self._events.put_nowait(None)  # later iterators end at once, too
        if self._lost is not None and not self._closing:
            raise self._lost

    # -- typed helpers -----------------------------------------------------------------

    async def hello(self, client: str | None = None) -> Hello:
        return Hello.from_json(await self.request("hello", client=client))

    async def list_consoles(self) -> list[ConsoleInfo]:
        return consoles_of(await self.request("list"))

    async def show(self, vm: str) -> ConsoleInfo:
        reply = await self.request("show", vm=vm)
        return parse_reply(ConsoleInfo.from_json, reply.get("console"))

    async def subscribe(self) -> list[ConsoleInfo]:
        """Start events; returns the snapshot taken at the same moment."""
        return consoles_of(await self.request("subscribe"))

    async def tail(self, vm: str, nbytes: int | None = None, follow: bool = False) -> TailChunk:
        reply = await self.request("tail", vm=vm, bytes=nbytes, follow=follow or None)
        return parse_reply(TailChunk.from_json, reply)


_T = TypeVar("_T")


def parse_reply(build: Callable[[dict[str, Any]], _T], obj: object) -> _T:
    """`build(obj)` (a typed `from_json`); a malformed object is the daemon's fault.

    Raises:
        ProtocolError: `obj` is not an object, or `build` refused it.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"vspcd sent {type(obj).__name__} where an object belongs")
    try:
        return build(obj)
    except AdminError as exc:
        raise ProtocolError(f"vspcd sent a malformed reply: {exc.message}") from None


def consoles_of(reply: dict[str, Any]) -> list[ConsoleInfo]:
    """The typed `consoles` list of a `list` or `subscribe` reply.

    Raises:
        ProtocolError: it is missing or malformed.
    """
    rows = reply.get("vms")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ProtocolError("reply without a 'consoles' list")
    return [parse_reply(ConsoleInfo.from_json, row) for row in rows]


@dataclass(slots=True)
class AttachSession:
    """A granted attach: the grant, and the connection now carrying raw bytes."""

    grant: AttachGrant
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def attach_request(
    request_id: int,
    vm: str,
    *,
    lock: LockMode | None = None,
    readonly: bool = False,
    replay: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """The `attach` request (docs/admin-protocol.md "The attach channel"), naming only
    the options that differ from the daemon's defaults."""
    request: dict[str, Any] = {"cmd": "attach", "id": request_id, "vm": vm}
    if lock is not None:
        request["lock"] = lock.value
    if readonly:
        request["readonly"] = True
    if replay:
        request["replay"] = replay
    if quiet:
        request["quiet"] = True
    return request


async def open_attach(
    address: AdminAddress | str,
    vm: str,
    *,
    lock: LockMode | None = None,
    readonly: bool = False,
    replay: int = 0,
    quiet: bool = False,
) -> AttachSession:
    """Open a connection, send `attach`, and hand back the raw byte stream.

    Nothing is sent after the attach line until its reply is read, and the reply is
    read with `readline()`, so any console bytes that arrived with it stay in the
    returned reader.

    Raises:
        ConnectError: the daemon cannot be reached.
        AdminError: refused (`lock_failed`, `vm_not_found`, `client_limit`, ...).
        ProtocolError: the daemon broke the protocol.
    """
    if isinstance(address, str):
        address = AdminAddress(path=address)
    reader, writer = await open_connection(address)
    request = attach_request(1, vm, lock=lock, readonly=readonly, replay=replay, quiet=quiet)
    try:
        try:
            writer.write(encode_message(request))
            await writer.drain()
        except OSError as exc:
            raise ProtocolError(f"connection to vspcd failed: {exc}") from exc
        reply = await _read_message(reader)
        if reply is None:
            raise ProtocolError("connection closed by vspcd before the attach reply")
        if not is_reply(reply):
            raise ProtocolError("vspcd sent an event before the attach reply")
        raise_for_reply(reply)
        grant = parse_reply(AttachGrant.from_json, reply)
    except BaseException:
        writer.close()  # refused or broken: this connection is of no further use
        raise
    return AttachSession(grant, reader, writer)
