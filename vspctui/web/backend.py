"""vspc-web's side of vspcd: admin connections that act for a browser user, and the
byte streams of the consoles they watch (docs/vspc-web.md, "How it talks to vspcd").

Boundary: speaks docs/admin-protocol.md only.  When vspc-web authenticated the
browser user itself (PAM, password file, proxy header) every connection it opens for
that user starts with `hello` carrying `as_user` (docs/admin-protocol.md "hello"), so
vspcd judges it with that user's levels; with the loopback token the user *is* the
one running vspc-web and no `as_user` is sent.

Read-only viewers of one console by one user share one read-only attach (`Feed`): its
output fans out to every viewer's bounded queue (`Viewer`), and a ring of the latest
bytes replays the scrollback to a viewer that joins later.  A viewer that takes write
or a lock gets a private attach of its own (`open_attach_as`).  A viewer whose queue
passes its limit is dropped, never the feed (docs/admin-protocol.md "The attach
channel" rule 7 is the same policy one level down).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vspc.common.admin import (
    AdminError,
    AttachGrant,
    LockMode,
    decode_message,
    encode_message,
    is_reply,
    raise_for_reply,
)
from vspc.vspctui.client import (
    AdminAddress,
    AdminClient,
    AttachSession,
    ProtocolError,
    attach_request,
    open_connection,
    parse_reply,
)

__all__ = [
    "CLIENT_NAME",
    "Feed",
    "Feeds",
    "Viewer",
    "connect_as",
    "open_attach_as",
    "recent_alerts",
]

CLIENT_NAME = "vspc-web"
REPLAY = 64 * 1024  # scrollback replayed to a new viewer
CHUNK = 64 * 1024


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: dict[str, Any]
) -> dict[str, Any]:
    """Send one request on a fresh connection and read its reply (no events yet)."""
    writer.write(encode_message(message))
    await writer.drain()
    line = await reader.readline()
    if not line.endswith(b"\n"):
        raise ProtocolError("connection closed by vspcd before the reply")
    try:
        reply = decode_message(line[:-1])
    except AdminError as exc:
        raise ProtocolError(f"vspcd sent a malformed message: {exc.message}") from None
    if not is_reply(reply):
        raise ProtocolError("vspcd sent an event before the reply")
    raise_for_reply(reply)
    return reply


async def connect_as(address: AdminAddress, user: str | None) -> tuple[AdminClient, dict[str, Any]]:
    """A JSON admin connection acting for `user` (None: as vspc-web's own user), and
    its `hello` reply (capabilities, identity, default level).

    Raises:
        ConnectError, ProtocolError, AdminError (permission_denied: vspc-web's user is
        not one of vspcd's `delegates`).
    """
    client = await AdminClient.connect(address)
    try:
        hello = await client.request("hello", client=CLIENT_NAME, as_user=user)
    except BaseException:
        await client.close()
        raise
    return client, hello


async def open_attach_as(
    address: AdminAddress,
    user: str | None,
    vm: str,
    *,
    lock: LockMode | None = None,
    readonly: bool = False,
    replay: int = 0,
) -> AttachSession:
    """`hello` (with `as_user` when acting for someone), then `attach`: the console's
    raw byte stream on this connection (docs/admin-protocol.md "The attach channel").

    Raises:
        ConnectError, ProtocolError, AdminError (the daemon's refusal).
    """
    reader, writer = await open_connection(address)
    try:
        if user is not None:
            await _request(reader, writer, {"cmd": "hello", "id": 1, "as_user": user})
        request = attach_request(2, vm, lock=lock, readonly=readonly, replay=replay)
        grant = parse_reply(AttachGrant.from_json, await _request(reader, writer, request))
    except OSError as exc:
        writer.close()
        raise ProtocolError(f"connection to vspcd failed: {exc}") from exc
    except BaseException:
        writer.close()
        raise
    return AttachSession(grant, reader, writer)


async def recent_alerts(client: AdminClient, key: str, limit: int) -> list[dict[str, Any]]:
    """The console's newest alerts, newest first, as the console page shows them
    (docs/operations.md "Console alerts"); none when vspcd refuses.

    The line and its context come from the VM: the page sets them as text only.
    """
    try:
        reply = await client.request("alerts", vm=key, limit=limit)
    except AdminError:
        return []
    rows = reply.get("alerts")
    shown = []
    for row in reversed(rows if isinstance(rows, list) else []):
        if not isinstance(row, dict):
            continue
        context = row.get("context")
        shown.append(
            {
                "rule": row.get("alert"),
                "severity": row.get("severity"),
                "time": row.get("time"),
                "line": row.get("line"),
                "context": [c for c in context if isinstance(c, str)]
                if isinstance(context, list)
                else [],
            }
        )
    return shown


class Viewer:
    """One browser socket's bounded queue of console bytes.

    `push` never blocks: past `limit` queued bytes the viewer is `dropped` (its
    socket is closed by the app) so one slow browser cannot hold up the others.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self.dropped = False
        self.ended: str | None = None  # why the stream ended, once it has
        self._chunks: deque[bytes] = deque()
        self._ready = asyncio.Event()

    def push(self, data: bytes) -> None:
        if self.dropped or self.ended is not None:
            return
        if self.queued + len(data) > self.limit:
            self.dropped = True
            self._chunks.clear()
            self.queued = 0
        else:
            self._chunks.append(data)
            self.queued += len(data)
        self._ready.set()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._ready.set()

    async def get(self) -> bytes | None:
        """The queued bytes joined (at most a few chunks), or None once dropped or
        ended with nothing left."""
        while not self._chunks:
            if self.dropped or self.ended is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            return None
        parts = []
        size = 0
        while self._chunks and size < CHUNK:
            part = self._chunks.popleft()
            parts.append(part)
            size += len(part)
        self.queued -= size
        return b"".join(parts)


class Feed:
    """One read-only attach shared by one user's viewers of one console."""

    def __init__(self, session: AttachSession, on_empty: Callable[[Feed], None]) -> None:
        self.session = session
        self.grant = session.grant
        self.viewers: set[Viewer] = set()
        self._ring = bytearray()
        self._on_empty = on_empty
        self._task = asyncio.get_running_loop().create_task(self._pump(), name="vspc-web-feed")
        self.ended: str | None = None

    def join(self, viewer: Viewer) -> None:
        if self._ring:
            viewer.push(bytes(self._ring))
        if self.ended is not None:
            viewer.end(self.ended)
        self.viewers.add(viewer)

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers:
            self._on_empty(self)
            self._task.cancel()

    async def _pump(self) -> None:
        reader = self.session.reader
        reason = "vspcd closed the session"
        try:
            while data := await reader.read(CHUNK):
                self._ring += data
                if len(self._ring) > REPLAY:
                    del self._ring[: len(self._ring) - REPLAY]
                for viewer in tuple(self.viewers):
                    viewer.push(data)
        except OSError as exc:
            reason = f"connection to vspcd failed: {exc}"
        finally:
            self.ended = reason
            for viewer in tuple(self.viewers):
                viewer.end(reason)
            self._on_empty(self)
            await self.session.close()


@dataclass(frozen=True, slots=True)
class _FeedKey:
    user: str | None
    vm: str


class Feeds:
    """The shared read-only feeds, one per (user, console)."""

    def __init__(self, address: AdminAddress) -> None:
        self.address = address
        self._feeds: dict[_FeedKey, Feed] = {}
        self._opening: dict[_FeedKey, asyncio.Future[Feed]] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    async def watch(self, user: str | None, vm: str, viewer: Viewer) -> Feed:
        """Join (or open) `user`'s read-only feed of `vm`.

        Raises:
            ConnectError, ProtocolError, AdminError (vm_not_found, ...).
        """
        key = _FeedKey(user, vm)
        feed = self._feeds.get(key)
        if feed is None or feed.ended is not None:
            opening = self._opening.get(key)
            if opening is None:
                opening = asyncio.get_running_loop().create_future()
                self._opening[key] = opening
                try:
                    session = await open_attach_as(
                        self.address, user, vm, readonly=True, replay=REPLAY
                    )
                except BaseException as exc:
                    opening.set_exception(exc)
                    opening.exception()  # retrieved: waiters re-raise it
                    raise
                finally:
                    self._opening.pop(key, None)
                feed = Feed(session, functools.partial(self._forget, key))
                self._feeds[key] = feed
                opening.set_result(feed)
            else:
                feed = await asyncio.shield(opening)
        feed.join(viewer)
        return feed

    def _forget(self, key: _FeedKey, feed: Feed) -> None:
        if self._feeds.get(key) is feed:
            del self._feeds[key]

    async def close(self) -> None:
        for feed in list(self._feeds.values()):
            feed._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed._task
        self._feeds.clear()
