"""The admin server: JSON-lines admin connections on the Unix socket (and optional TCP).

Boundary: asyncio plumbing between operator tools and the hub.  Framing, validation,
the closed sets and the command table's fields come from `vspc.common.admin`; console
state and policy (lookup, locks, clear, kick, scrollback) from `vspc.vspcd.hub.hub`.  This
module adds only what a connection knows: who the peer is (SO_PEERCRED -> access
level), the limits that stop one bad peer from costing anyone else anything, the
attach channel, and the fan-out of hub events to subscribers and tail followers.

Spec: docs/admin-protocol.md (the contract: commands, attach channel, lock modes,
events, access control, error codes, limits); issue #4.

Theory of operation
-------------------
One `AdminServer` per daemon owns the listeners, the set of open `AdminLink`s and one
hub observer that turns hub events into event lines and hands them to every link.

An `AdminLink` is one connection and moves through three modes:

    JSON --attach ok--> ATTACHED --EOF, clear, kick, shutdown--> CLOSING
    JSON --EOF, flood, timeout, overrun, shutdown--> CLOSING

In JSON mode bytes go through a `LineFramer`; each complete line is validated,
checked against the token bucket and the peer's access level, and executed through
`HANDLERS` (filled by `@handles`), strictly in order.  Events and `output` chunks are
written between replies.  Backpressure: while more than `Limits.reply_backlog` bytes
of replies are unread the link stops reading (asyncio's pause_writing ->
pause_reading), so a peer that pipelines without reading only stalls itself; pushed
events cannot be paused, so past `Limits.event_backlog` the peer gets `overrun` and is
closed.  A line left unfinished for `Limits.line_timeout` seconds (a `call_later`
timer, armed only while bytes of an unfinished line are waiting) gets `timeout`.

In ATTACHED mode the link is the hub's `ClientChannel` for one console: raw bytes
both ways, no JSON, no events.  A peer that stops reading loses output (counted and
reported with one marker line once it drains), like a slow telnet client; it never
stalls the VM.

Every close that follows an error line arms an abort timer, so a peer that never reads
cannot keep its socket and backlog alive forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol, cast

from vspc.common.admin import (
    COMMANDS,
    MAX_LINE,
    PROTOCOL_VERSION,
    Access,
    AdminError,
    AttachGrant,
    ErrorCode,
    EventName,
    Hello,
    LineFramer,
    Request,
    Stats,
    TailChunk,
    encode_bytes,
    encode_message,
    failed,
    ok,
    required_access,
    validate_request,
)
from vspc.common.display import safe
from vspc.vspcd import __version__
from vspc.vspcd.faces import render
from vspc.vspcd.hub.console import Client, Console, LockMode
from vspc.vspcd.hub.events import ConsoleExpired, HubEvent
from vspc.vspcd.hub.hub import Hub, HubError
from vspc.vspcd.hub.ratelog import throttled
from vspc.vspcd.net.flow import ClientOutput
from vspc.vspcd.net.links import peer_name
from vspc.vspcd.net.listeners import (
    AdminSocket,
    Listener,
    bind_tcp,
    peer_credentials,
    start_admin_socket,
    uid_in_group,
)
from vspc.vspcd.service.config import Config

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "HANDLERS",
    "AdminLink",
    "AdminServer",
    "Identity",
    "Limits",
    "TokenBucket",
    "access_level",
    "handles",
]

Reply = dict[str, Any]
Handler = Callable[["AdminLink", Request], Reply]


class RemoteRequests(Protocol):
    """Cluster mode (vspcd/cluster/forward.py): requests another node must answer.

    `takes` returns True if it will answer `request` itself, later, through
    `link.remote_done(reply)`; the link reads no further request until then, so
    replies stay in request order."""

    def takes(self, link: AdminLink, request: Request) -> bool: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits (docs/admin-protocol.md, "Limits and bad input")."""

    line: int = MAX_LINE  # bytes per request line
    line_timeout: float = 10.0  # seconds an unfinished line may wait for its b"\n"
    burst: int = 100  # token bucket size, in requests
    rate: float = 50.0  # token bucket refill, requests per second
    error_streak: int = 50  # consecutive error replies before `flood`
    reply_backlog: int = 1 << 20  # unread reply bytes above which reading stops
    event_backlog: int = 4 << 20  # unread bytes above which an event means `overrun`
    connections: int = 64  # open admin connections (Unix and TCP together)
    close_grace: float = 5.0  # seconds a closing peer has to read its last line
    # Fairness (issue #7, "Admin lockout"): one uid (Unix) or address (TCP) may hold
    # `per_peer` connections, and everyone but root and the daemon's own uid stops at
    # `connections - reserved`, so those two can always get in.
    per_peer: int = 16
    reserved: int = 8
    idle_timeout: float = 300.0  # JSON-mode peers not subscribed/tailing (0 = never)


# Read at construction time, not import time, so tests can shorten the limits of the
# AdminServer that `Daemon` builds (monkeypatch this name).
DEFAULT_LIMITS = Limits()

SHUTDOWN_GRACE = 2.0  # seconds stop() waits for closing connections before aborting


class Mode(Enum):
    """What an admin connection carries."""

    JSON = "json"  # requests, replies and events
    ATTACHED = "attached"  # one console's raw bytes
    CLOSING = "closing"  # nothing more is read or written (but the last line drains)
    SPLICED = "spliced"  # cluster mode: bytes relayed to the node serving the console


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is at the other end of an admin connection, and what they may do.

    `address` is "unix" for the admin socket and host:port for TCP; uid/gid come from
    SO_PEERCRED and are None for TCP peers.
    """

    address: str
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    access: Access = Access.FULL

    @property
    def who(self) -> str:
        """The name shown to disconnected clients: user, else uid, else address."""
        if self.user:
            return self.user
        if self.uid is not None:
            return f"uid {self.uid}"
        return self.address

    def __str__(self) -> str:
        if self.uid is not None:
            return f"uid={self.uid} gid={self.gid} user={self.user or '?'}"
        if self.address == "unix":
            return "unix peer (credentials unknown)"
        return f"{self.address} (TCP, unauthenticated)"


def access_level(uid: int, gid: int, readonly_group: str | None, own_uid: int) -> Access:
    """The access level of an admin-socket peer (docs: "Access control").

    Members of `readonly_group` (primary or supplementary) are read-only, except root
    and the daemon's own user, who could bypass the daemon anyway.
    """
    if readonly_group is None or uid in (0, own_uid):
        return Access.FULL
    return Access.READONLY if uid_in_group(uid, gid, readonly_group) else Access.FULL


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second.

    Computed from the clock when a request arrives; nothing runs in between.
    """

    def __init__(
        self, capacity: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = float(capacity)
        self._rate = rate
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) if the bucket is empty."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class _Reading:
    """Why a transport is not being read; it reads again once no reason is left.

    Two owners pause independently: our own reply backpressure and the hub (a
    congested VM, for an attached link).  One flag each, so neither resumes the
    other's pause.
    """

    def __init__(self) -> None:
        self._reasons: set[str] = set()
        self._transport: asyncio.Transport | None = None

    def bind(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def pause(self, reason: str) -> None:
        if not self._reasons and self._usable():
            cast(asyncio.Transport, self._transport).pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self._usable():
            cast(asyncio.Transport, self._transport).resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def _usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()


@dataclass(eq=False, slots=True)
class _Tail:
    """One console this connection follows (`tail` with `follow`)."""

    console: Console
    untap: Callable[[], None]


# ===================================================================== commands

HANDLERS: dict[str, Handler] = {}


def handles(cmd: str) -> Callable[[Handler], Handler]:
    """Register the handler of one command of `COMMANDS`.

    A handler gets the connection and the validated request and returns the reply's
    fields (without "ok" and "id"), or raises AdminError / HubError.
    """

    def register(handler: Handler) -> Handler:
        if cmd not in COMMANDS:
            raise ValueError(f"{cmd!r} is not in the protocol's command table")
        HANDLERS[cmd] = handler
        return handler

    return register


@handles("hello")
def _hello(link: AdminLink, request: Request) -> Reply:
    client = request.fields["client"]
    if client:
        log.info("admin %s: client %s", link.identity, safe(client))
    me = link.identity
    return Hello(
        PROTOCOL_VERSION, __version__, tuple(sorted(HANDLERS)), me.access, me.uid, me.user
    ).to_json()


@handles("list")
def _list(link: AdminLink, request: Request) -> Reply:
    return {"vms": link.server.console_rows()}


@handles("show")
def _show(link: AdminLink, request: Request) -> Reply:
    console = link.server.hub.find(request.fields["vm"])
    info = link.server.hub.console_info(console, detail=True)
    return {"console": render.show_row(info, link.server.epoch)}


@handles("stats")
def _stats(link: AdminLink, request: Request) -> Reply:
    stats = link.server.stats
    if stats is None:
        raise AdminError(ErrorCode.INTERNAL, "no metrics registry in this daemon")
    return stats().to_json()


@handles("attach")
def _attach(link: AdminLink, request: Request) -> Reply:
    return link.attach(request)


def _disconnect_text(identity: Identity, reason: str | None) -> str:
    # What the disconnected clients see inside "\r\n[vspcd: ...]\r\n".
    return f"disconnected by {identity.who}" + (f": {reason}" if reason else "")


@handles("clear")
def _clear(link: AdminLink, request: Request) -> Reply:
    hub = link.server.hub
    port, reason = request.fields["port"], request.fields["reason"]
    if port is not None:
        found = hub.console_by_port(port)
        if found is None:
            raise HubError(ErrorCode.VM_NOT_FOUND, f"no console has port {port}")
        console = found
    else:
        console = hub.find(request.fields["vm"])
    cleared = hub.clear(console, _disconnect_text(link.identity, reason))
    log.info(
        "admin %s cleared %s: %d client(s) disconnected (%s), key %s",
        link.identity,
        safe(console.display_name),
        cleared,
        safe(reason) if reason else "no reason given",
        console.key.uuid[:8],
    )
    return {"key": str(console.key), "name": console.display_name, "cleared": cleared}


@handles("kick")
def _kick(link: AdminLink, request: Request) -> Reply:
    reason = request.fields["reason"]
    client = link.server.hub.kick(request.fields["client"], _disconnect_text(link.identity, reason))
    console = client.console
    log.info(
        "admin %s kicked client %d (%s %s) from %s (%s)",
        link.identity,
        client.ident,
        client.kind,
        client.channel.peer,
        console.tag,
        safe(reason) if reason else "no reason given",
    )
    return {"key": str(console.key), "name": console.display_name, "client": client.ident}


@handles("subscribe")
def _subscribe(link: AdminLink, request: Request) -> Reply:
    link.subscribed = True
    return {"vms": link.server.console_rows()}  # same moment: nothing falls between


@handles("unsubscribe")
def _unsubscribe(link: AdminLink, request: Request) -> Reply:
    link.subscribed = False
    return {}


@handles("tail")
def _tail(link: AdminLink, request: Request) -> Reply:
    console = link.server.hub.find(request.fields["vm"])
    data = console.scrollback.last(request.fields["bytes"])
    if request.fields["follow"]:
        link.follow(console)  # in the same turn as the read: no byte lost or repeated
    return TailChunk(str(console.key), console.display_name, data).to_json()


@handles("untail")
def _untail(link: AdminLink, request: Request) -> Reply:
    console = link.server.hub.find(request.fields["vm"])
    link.unfollow(str(console.key))
    return {"key": str(console.key), "name": console.display_name}


# ===================================================================== connection


class AdminLink(asyncio.Protocol):
    """One admin connection (and, once attached, the hub's `ClientChannel`)."""

    def __init__(self, server: AdminServer, *, unix: bool) -> None:
        # shared
        self.server = server
        self._hub = server.hub
        self._limits = server.limits
        # per connection, built before any I/O
        self._unix = unix
        self._framer = LineFramer(self._limits.line)
        self._bucket = TokenBucket(self._limits.burst, self._limits.rate)
        self._reading = _Reading()
        self._mode = Mode.JSON
        self._errors = 0  # consecutive error replies
        self._write_paused = False  # transport above its high-water mark
        self._line_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0  # loop time of the last bytes read
        self.peer_key: object = "?"  # what per-peer limits count: uid or host
        self._tails: dict[str, _Tail] = {}
        self._attaching = False  # inside hub.attach: our own events are not for us
        self._waiting = False  # another cluster node is answering a request
        self._splice_out: Callable[[bytes], None] | None = None
        self.relayed = False  # cluster mode: this session runs for another node's operator
        self._splice_closed: Callable[[], None] | None = None
        self._client: Client | None = None
        self._replay = b""
        self._greeting: list[str] = []  # notices from the hub during attach
        self._output = ClientOutput("admin ?")  # the attach channel (vspcd/net/flow.py)
        self.subscribed = False
        self.identity = Identity("?")
        self.peer = "?"  # ClientChannel: "unix" or host:port
        # set in connection_made
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] | None = None

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._reading.bind(self._transport)
        self._output.bind(self._transport)
        self.identity = self._identify(self._transport)
        self._output.who = f"admin {self.identity}"
        self.peer = self.identity.address
        self.peer_key = self._peer_key(self._transport)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.server.refused.log("admin %s refused: %s", self.identity, refusal)
            self._close_with(ErrorCode.BUSY, f"{refusal}; try again later")
            return
        self._transport.set_write_buffer_limits(high=self._limits.reply_backlog)
        self._last_active = self._loop.time()
        if self._limits.idle_timeout > 0:
            self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._on_idle)
        log.debug("admin connection from %s (%s access)", self.identity, self.identity.access)

    def data_received(self, data: bytes) -> None:
        if self._loop is not None:
            self._last_active = self._loop.time()
        try:
            match self._mode:
                case Mode.JSON:
                    self._framer.receive_data(data)
                    self._process()
                case Mode.ATTACHED if self._client is not None:
                    self._hub.client_input(self._client, data)
                case Mode.SPLICED if self._splice_out is not None:
                    self._splice_out(data)
                case _:
                    pass  # closing: nothing more is read
        except Exception:  # a bug here must cost this connection only
            log.exception("admin %s: internal error; closing the connection", self.identity)
            self.abort()

    def eof_received(self) -> bool:
        if self._mode is Mode.ATTACHED:
            self._detach(None)  # a half-close means detach (docs: "The attach channel")
        return False  # close our side once the replies are flushed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._splice_closed is not None:
            closed, self._splice_closed = self._splice_closed, None
            closed()
        self._mode = Mode.CLOSING
        self._cancel_line_timer()
        self._cancel_idle_timer()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self._stop_events()
        self._detach(None)
        self.server.forget(self)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if exc is not None:
            log.debug("admin %s: connection lost: %s", self.identity, exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._output.pause_writing()
        if self._mode is Mode.JSON:
            # Replies are unread: stop taking requests (TCP backpressure does the rest).
            self._reading.pause("replies")
            self._cancel_line_timer()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._output.resume_writing()  # attached: reports dropped output, once
        match self._mode:
            case Mode.JSON:
                self._reading.resume("replies")
                try:
                    self._process()  # lines that arrived before we stopped reading
                except Exception:
                    log.exception("admin %s: internal error; closing", self.identity)
                    self.abort()
            case _:
                pass

    # -- JSON mode ----------------------------------------------------------------------

    def _process(self) -> None:
        """Execute every complete line, in order, unless replies are piling up."""
        while self._mode is Mode.JSON and not self._write_paused and not self._waiting:
            try:
                item = self._framer.next_request()
            except AdminError as exc:
                self._cancel_line_timer()
                self._send(exc.to_reply())
                continue
            if item is None:
                break
            self._cancel_line_timer()  # that line is finished; the next one gets its own
            self._execute(item)
            if self._client is not None and self._mode is Mode.JSON:
                self._enter_attach()
                return
        self._arm_line_timer()

    def _execute(self, obj: dict[str, Any]) -> None:
        rid = None
        try:
            request = validate_request(obj)
            rid = request.id
            if not self._bucket.take():
                raise AdminError(ErrorCode.BUSY, "rate limit reached; retry later", rid)
            if required_access(request) is Access.FULL and self.identity.access is not Access.FULL:
                raise AdminError(ErrorCode.PERMISSION_DENIED, _denied(request), rid)
            remote = self.server.remote
            if remote is not None and remote.takes(self, request):
                self._waiting = True
                return
            handler = HANDLERS.get(request.cmd)
            if handler is None:  # validate_request knows it, so this is our bug
                raise AdminError(ErrorCode.UNKNOWN_CMD, f"unknown command {request.cmd!r}", rid)
            reply = ok(rid, **handler(self, request))
        except AdminError as exc:
            reply = exc.to_reply()
        except HubError as exc:
            reply = failed(exc.code, str(exc), rid)
        except Exception:
            log.exception("admin %s: request %s failed", self.identity, safe(obj.get("cmd")))
            reply = failed(ErrorCode.INTERNAL, "internal error; vspcd logged the details", rid)
        self._send(reply)

    def splice(self, out: Callable[[bytes], None], closed: Callable[[], None]) -> bytes:
        """Cluster mode: from now on every byte from the peer goes to `out` (the node
        serving the console runs this session) and `splice_write` carries its bytes
        back; `closed` is called when the peer goes.  Returns the bytes already read
        but not yet processed, which the caller sends first."""
        self._mode = Mode.SPLICED
        self._waiting = False
        self._cancel_line_timer()
        self._stop_events()
        self._splice_out, self._splice_closed = out, closed
        return self._framer.take_remaining()

    def splice_write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def splice_close(self) -> None:
        """The far end of the splice closed: close this connection after its bytes."""
        self._splice_closed = None
        if self._transport is not None:
            self._transport.close()

    def remote_done(self, reply: Reply) -> None:
        """The answer to the request `RemoteRequests.takes` took; reading resumes."""
        self._waiting = False
        if self._mode is not Mode.JSON:
            return
        self._send(reply)
        try:
            self._process()
        except Exception:
            log.exception("admin %s: internal error; closing", self.identity)
            self.abort()

    def _send(self, reply: Reply) -> None:
        """Write one reply and keep the error streak (docs: "errors in a row")."""
        try:
            line = encode_message(reply)
        except (TypeError, ValueError):
            log.exception("admin %s: cannot encode a reply", self.identity)
            line = encode_message(failed(ErrorCode.INTERNAL, "internal error", reply.get("id")))
            reply = {"ok": False}
        self._write(line)
        if reply.get("ok") is True:
            self._errors = 0
            return
        self._errors += 1
        if self._errors >= self._limits.error_streak:
            log.warning("admin %s: %d errors in a row; closing", self.identity, self._errors)
            self._close_with(ErrorCode.FLOOD, f"{self._errors} failed requests in a row")

    def push_event(self, line: bytes) -> None:
        """Cluster mode: an event line from another node for a subscribed link."""
        if self.subscribed:
            self._push(line)

    def _push(self, line: bytes) -> None:
        """Write one pushed event, or give up on a peer that does not read them."""
        if self._mode is not Mode.JSON or self._transport is None:
            return
        if self._transport.get_write_buffer_size() + len(line) > self._limits.event_backlog:
            log.warning(
                "admin %s: over %d bytes unread; closing (overrun)",
                self.identity,
                self._limits.event_backlog,
            )
            self._close_with(ErrorCode.OVERRUN, "too many unread replies and events")
            return
        self._transport.write(line)

    def _arm_line_timer(self) -> None:
        if (
            self._line_timer is None
            and self._loop is not None
            and self._mode is Mode.JSON
            and not self._write_paused
            and self._framer.partial
        ):
            self._line_timer = self._loop.call_later(
                self._limits.line_timeout, self._on_line_timeout
            )

    def _on_idle(self) -> None:
        """Close a JSON-mode peer that sent nothing for `idle_timeout` seconds.

        Subscribers and tail followers wait for events by design and attached peers
        are operators at a console, so they never time out; a connection that only
        holds a slot does (issue #7, "One listener discipline").
        """
        self._idle_timer = None
        if self._mode is not Mode.JSON or self._loop is None:
            return
        timeout = self._limits.idle_timeout
        idle = self._loop.time() - self._last_active
        if self.subscribed or self._tails or idle < timeout:
            wait = timeout if (self.subscribed or self._tails) else timeout - idle
            self._idle_timer = self._loop.call_later(wait, self._on_idle)
            return
        log.info("admin %s: idle for %g s; closing", self.identity, timeout)
        self._close_with(ErrorCode.TIMEOUT, f"idle for {timeout:g} s")

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None

    def _on_line_timeout(self) -> None:
        self._line_timer = None
        log.info("admin %s: unfinished line timed out; closing", self.identity)
        self._close_with(
            ErrorCode.TIMEOUT, f"unfinished line older than {self._limits.line_timeout:g} s"
        )

    # -- events and tails -----------------------------------------------------------------

    def hub_event(self, event: HubEvent, line: bytes | None) -> None:
        """A hub event and its event line (encoded once by the server; None for an
        internal event) for this connection, if wanted."""
        if self._mode is not Mode.JSON or self._attaching:
            return
        if self.subscribed and line is not None:
            self._push(line)
        key = str(event.key)
        if isinstance(event, ConsoleExpired) and key in self._tails:
            tail = self._tails.pop(key)
            tail.untap()
            self._push(
                encode_message(
                    {
                        "event": EventName.TAIL_END.value,
                        "key": key,
                        "name": tail.console.display_name,
                        "reason": "console expired",
                    }
                )
            )

    def follow(self, console: Console) -> None:
        """Push this console's output as `output` events until unfollowed (idempotent)."""
        key = str(console.key)
        if key in self._tails:
            return

        def tap(data: bytes) -> None:
            # Called inside the hub's VM data path: a failure here must not reach the
            # VM's link (it would close the VM connection).
            try:
                self._push(
                    encode_message(
                        {
                            "event": EventName.OUTPUT.value,
                            "key": key,
                            "name": console.display_name,
                            "data_b64": encode_bytes(data),
                        }
                    )
                )
            except Exception:
                log.exception("admin %s: tail output failed; closing", self.identity)
                self.abort()

        self._tails[key] = _Tail(console, self._hub.tap(console.key, tap))

    def unfollow(self, key: str) -> None:
        """Stop following one console (not following it is fine)."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            tail.untap()

    def _stop_events(self) -> None:
        self.subscribed = False
        for key in list(self._tails):
            self.unfollow(key)

    # -- attach -----------------------------------------------------------------------------

    def attach(self, request: Request) -> Reply:
        """The `attach` command: join the console; the switch happens after the reply."""
        fields = request.fields
        console = self._hub.find(fields["vm"])
        lock = LockMode(fields["lock"].value)
        readonly = bool(fields["readonly"])
        if self.identity.access is not Access.FULL:
            # required_access let only free_for_all_or_readonly or readonly through:
            # the default mode is downgraded so `vspc VM` just works.
            readonly = True
        me = self.identity
        self._attaching = True
        try:
            client = self._hub.attach(
                console,
                self,
                kind="attach",
                lock=lock,
                readonly=readonly,
                uid=me.uid,
                user=me.user,
                notices=not fields["quiet"],
            )
        finally:
            self._attaching = False
        self._client = client
        self._replay = console.scrollback.last(fields["replay"])
        log.info(
            "admin %s attached to %s as client %d: mode %s%s",
            me,
            console.tag,
            client.ident,
            lock.value,
            ", read-only" if readonly else "",
        )
        if lock in (LockMode.EXCLUSIVE, LockMode.WRITE):
            log.info("admin %s took the %s lock on %s", me, lock.value, console.tag)
        return AttachGrant(
            str(console.key),
            safe(console.display_name),
            client.ident,
            fields["lock"],
            not self._hub.may_write(client),
        ).to_json()

    def _enter_attach(self) -> None:
        """After the attach reply line: raw bytes from here on, both ways."""
        assert self._transport is not None and self._client is not None
        self._mode = Mode.ATTACHED
        self._cancel_line_timer()
        self._stop_events()  # no more JSON on this connection
        self._reading.resume("replies")
        replay, self._replay = self._replay, b""
        if replay:
            self._transport.write(replay)
        greeting, self._greeting = self._greeting, []
        for text in greeting:
            self.notify(text)
        # From now on the console's per-client policy applies (slow reader: drop).
        self._transport.set_write_buffer_limits(high=self.server.config.client_queue)
        rest = self._framer.take_remaining()  # sent after the attach line: console input
        if rest:
            self._hub.client_input(self._client, rest)

    def _detach(self, reason: str | None) -> None:
        client, self._client = self._client, None
        if client is None or client not in client.console.clients:
            return  # never attached, or clear/kick detached it already (and logged it)
        held = client is client.console.lock_holder()
        self._hub.detach(client, reason)
        log.info(
            "admin %s detached from %s (client %d)%s",
            self.identity,
            client.console.tag,
            client.ident,
            f", releasing the {client.mode.value} lock" if held else "",
        )

    # -- ClientChannel (called by the hub while attached) -------------------------------

    def console_output(self, raw: bytes, escaped: bytes) -> None:
        if self._mode is Mode.ATTACHED:
            self._output.write(raw)  # the slow-client policy: never stall the VM

    def notify(self, text: str) -> None:
        if self._attaching:
            # Said while joining ("VM not connected"): shown once the attach reply and
            # the replay are out, not inside the JSON reply stream.
            self._greeting.append(text)
        elif self._mode is Mode.ATTACHED:
            self._output.notice(text)

    def pause_reading(self) -> None:
        self._reading.pause("vm")

    def resume_reading(self) -> None:
        self._reading.resume("vm")

    def close(self) -> None:
        self._close()

    # -- closing --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """vspcd is stopping: tell the peer in its own terms, then close."""
        match self._mode:
            case Mode.ATTACHED:
                self.notify("vspcd is shutting down")
                self._detach("vspcd is shutting down")
                self._close()
            case Mode.JSON:
                self._close_with(ErrorCode.SHUTTING_DOWN, "vspcd is shutting down")
            case Mode.SPLICED:
                self._close()  # the serving node's session ends with it
            case Mode.CLOSING:
                pass

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        self._mode = Mode.CLOSING
        if self._transport is not None:
            self._transport.abort()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close_with(self, code: ErrorCode, message: str) -> None:
        """Send one closing error line (no id: it answers no request) and close."""
        if self._mode is Mode.JSON:
            self._write(encode_message(failed(code, message)))
        self._close()

    def _close(self) -> None:
        self._mode = Mode.CLOSING
        self._cancel_line_timer()
        self._cancel_idle_timer()
        self._stop_events()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            # A lingering close: our FIN follows the last line, and what the peer
            # still sends is read and dropped until its own EOF closes the connection.
            # Closing at once with its request unread would make the kernel answer
            # with a reset, and a client that wrote before reading (a refused
            # `busy` peer, a request racing an idle timeout) would lose our reason.
            transport.write_eof()
        else:
            transport.close()  # flushes the last line first
        if self._loop is not None:  # ... unless the peer never reads it or never leaves
            self._abort_timer = self._loop.call_later(self._limits.close_grace, self.abort)

    # -- identity -------------------------------------------------------------------------

    def _peer_key(self, transport: asyncio.Transport) -> object:
        """Per-peer limits count uids on the Unix socket and hosts on TCP."""
        if self._unix:
            return ("uid", self.identity.uid)
        addr = transport.get_extra_info("peername")
        return ("host", addr[0] if isinstance(addr, tuple) and addr else "?")

    @property
    def privileged(self) -> bool:
        """Root or the daemon's own uid on the Unix socket: may use the reserved slots."""
        uid = self.identity.uid
        return self._unix and uid is not None and uid in (0, self.server.own_uid)

    def _identify(self, transport: asyncio.Transport) -> Identity:
        if not self._unix:
            return Identity(peer_name(transport))
        sock = transport.get_extra_info("socket")
        group = self.server.config.readonly_group
        try:
            creds = peer_credentials(cast(socket.socket, sock))
        except (OSError, AttributeError) as exc:
            # Without credentials a --readonly-group member could pass for anyone.
            log.warning("admin peer: SO_PEERCRED failed (%s)", exc)
            return Identity("unix", access=Access.READONLY if group else Access.FULL)
        return Identity(
            "unix",
            creds.uid,
            creds.gid,
            _user_name(creds.uid),
            access_level(creds.uid, creds.gid, group, self.server.own_uid),
        )

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def write_backlog(self) -> int:
        """Bytes written to the peer that it has not read yet (our side's buffer)."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    @property
    def reading(self) -> bool:
        """The link is reading its peer (False while replies are unread, for example)."""
        return not self._reading.paused


def _denied(request: Request) -> str:
    if request.cmd == "attach":
        return "read-only access: attach with readonly or free_for_all_or_readonly"
    return f"read-only access: {request.cmd} needs full access"


# ===================================================================== server


class AdminServer:
    """The admin listeners, their connections, and the hub-event fan-out.

    Args:
        hub: the daemon's hub.
        config: admin_socket (+ mode, group), admin_port/admin_iface, readonly_group,
            client_queue (the attach channel's slow-reader limit).
        limits: per-connection limits (default `DEFAULT_LIMITS`).
    """

    def __init__(self, hub: Hub, config: Config, *, limits: Limits | None = None) -> None:
        self.hub = hub
        self.config = config
        self.limits = replace(
            limits or DEFAULT_LIMITS,
            idle_timeout=config.admin_idle_timeout,
            per_peer=config.admin_per_peer,
        )
        self.own_uid = os.geteuid()
        self.tcp_port: int | None = None
        self._links: set[AdminLink] = set()
        self._per_peer: dict[object, int] = {}
        self._socket: AdminSocket | None = None
        self._tcp: Listener | None = None
        loop = asyncio.get_running_loop()
        self.refused = throttled(
            log, "admin connections refused", clock=loop.time, call_later=loop.call_later
        )
        self._unsubscribe: Callable[[], None] | None = None
        # The metrics registry's snapshot (vspcd/faces/metrics.py), set by the daemon.
        self.stats: Callable[[], Stats] | None = None
        self.epoch = 0.0  # Unix time minus hub time: `since` is Unix time on the wire
        self.remote: RemoteRequests | None = None  # cluster mode
        self.cluster_node_id = ""  # cluster mode: this node's --node-id
        self._stopping = False

    @property
    def connections(self) -> frozenset[AdminLink]:
        """The admin connections currently open."""
        return frozenset(self._links)

    async def start(self) -> None:
        """Open the admin socket (and the TCP port if configured).

        Raises:
            OSError: a listener cannot be created (AdminSocketError included).
            KeyError: --admin-socket-group names no group.
        """
        config = self.config
        self.epoch = time.time() - self.hub.now()
        self._unsubscribe = self.hub.subscribe(self._on_hub_event)
        try:
            self._socket = await start_admin_socket(
                config.admin_socket,
                lambda: AdminLink(self, unix=True),
                mode=config.admin_socket_mode,
                group=config.admin_socket_group,
            )
            if config.admin_port is not None:
                sock = bind_tcp(config.admin_iface, config.admin_port)
                self.tcp_port = sock.getsockname()[1]
                # The proxy port's accept loop (EMFILE back-off, one log line).
                self._tcp = Listener(
                    sock, lambda: AdminLink(self, unix=False), asyncio.get_running_loop()
                )
                self._tcp.start()
                log.warning(
                    "admin TCP port %s:%d is open: its peers are unauthenticated, get full "
                    "access and bypass the admin socket's permissions",
                    config.admin_iface,
                    self.tcp_port,
                )
        except BaseException:
            self._close_listeners()
            self._hub_unsubscribe()
            raise

    async def stop(self) -> None:
        """Close the listeners, tell every connection we are stopping, close them."""
        self._stopping = True
        self._close_listeners()
        for link in list(self._links):
            link.shutdown()
        waiting = [link.closed for link in self._links if link.closed is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=SHUTDOWN_GRACE)
        for link in list(self._links):
            log.info("admin %s: still open at shutdown; dropping it", link.identity)
            link.abort()
        self._hub_unsubscribe()

    def _hub_unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _close_listeners(self) -> None:
        # Not awaiting wait_closed(): from Python 3.12 on it also waits for every open
        # connection, which stop() bounds itself.
        if self._socket is not None:
            self._socket.close()
        if self._tcp is not None:
            self._tcp.close()

    # -- connections ----------------------------------------------------------------------

    def admit(self, link: AdminLink) -> str | None:
        """Count a new connection in; or say why not (stopping, or a limit reached).

        Root and the daemon's own uid may fill every slot; other peers stop
        `reserved` slots earlier and at `per_peer` connections each (docs/security.md).
        """
        limits = self.limits
        if self._stopping:
            return "vspcd is shutting down"
        total = len(self._links)
        if total >= limits.connections:
            return f"too many admin connections ({total} open)"
        if not link.privileged:
            if total >= limits.connections - limits.reserved:
                return f"too many admin connections ({total} open, the rest reserved)"
            mine = self._per_peer.get(link.peer_key, 0)
            if mine >= limits.per_peer:
                return f"too many admin connections from this peer ({mine} open)"
        self._links.add(link)
        self._per_peer[link.peer_key] = self._per_peer.get(link.peer_key, 0) + 1
        return None

    def forget(self, link: AdminLink) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        left = self._per_peer[link.peer_key] - 1
        if left:
            self._per_peer[link.peer_key] = left
        else:
            del self._per_peer[link.peer_key]

    # -- rows and events ------------------------------------------------------------------

    def console_rows(self) -> list[dict[str, Any]]:
        """Every console's `list` row, sorted by key."""
        hub, epoch = self.hub, self.epoch
        return [render.console_row(hub.console_info(c), epoch) for c in hub.consoles()]

    def _on_hub_event(self, event: HubEvent) -> None:
        # Must not raise: the hub drops an observer that does (and with it every
        # subscriber).  One broken link is closed; the others still get the event.
        expired = isinstance(event, ConsoleExpired)
        if not expired and not any(link.subscribed for link in self._links):
            return  # nobody listens (an expiry may still end someone's tail)
        try:
            message = render.event_message(event, self.epoch)
            line = None if message is None else encode_message(message)
        except Exception:
            log.exception("admin: cannot encode hub event %s", type(event).__name__)
            return
        if line is None and not expired:
            return
        for link in list(self._links):
            try:
                link.hub_event(event, line)
            except Exception:
                log.exception(
                    "admin %s: event %s failed; closing it", link.identity, type(event).__name__
                )
                link.abort()


# Every command of the protocol has a handler, and nothing else does.
assert set(HANDLERS) == set(COMMANDS), sorted(set(COMMANDS) ^ set(HANDLERS))
