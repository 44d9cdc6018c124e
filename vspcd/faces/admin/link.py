"""One admin connection: `AdminLink`, the asyncio protocol of the admin socket.

Spec: docs/admin-protocol.md (framing, the attach channel, events, limits, error
codes).  Who the peer is comes from vspcd/faces/admin/access.py, what it may do on
which console from vspcd/faces/admin/linkaccess.py (a mixin of `AdminLink`), the
commands from vspcd/faces/admin/handlers.py, the limits from
vspcd/faces/admin/limits.py.

A link moves through these modes:

    JSON --attach ok--> ATTACHED --EOF, clear, kick, shutdown--> CLOSING
    JSON --EOF, flood, timeout, overrun, shutdown--> CLOSING
    JSON --splice (cluster mode, vspcd/cluster/forward.py)--> SPLICED --> CLOSING

In JSON mode bytes go through a `LineFramer`; each complete line is validated,
checked against the token bucket, and executed through `HANDLERS`, strictly in
order.  Access is judged per console (`find`, `may_see`; docs/admin-protocol.md
"Access control"): a console the peer may not watch does not exist for it, and its
events are not sent; a reload re-judges every connection (`access_changed`).  Events
and `output` chunks are written between replies.  Backpressure: while more than
`Limits.reply_backlog` bytes of replies are unread the link stops reading (asyncio's
pause_writing -> pause_reading), so a peer that pipelines without reading only
stalls itself; pushed events cannot be paused, so past `Limits.event_backlog` the
peer gets `overrun` and is closed.  A line left unfinished for `Limits.line_timeout`
seconds (a `call_later` timer, armed only while bytes of an unfinished line are
waiting) gets `timeout`.

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
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from vspc.common.admin import (
    AdminError,
    AttachGrant,
    ErrorCode,
    Level,
    LineFramer,
    LockMode,
    Request,
    encode_message,
    failed,
    ok,
    validate_request,
)
from vspc.common.display import safe
from vspc.vspcd.faces.admin.access import (
    Identity,
    event_ref,
    identify,
    peer_key,
)
from vspc.vspcd.faces.admin.handlers import AUDITED, HANDLERS, Reply
from vspc.vspcd.faces.admin.limits import Reading, TokenBucket
from vspc.vspcd.faces.admin.linkaccess import LinkAccess
from vspc.vspcd.faces.admin.tails import Tails
from vspc.vspcd.hub.audit import Actor, AuditRecord
from vspc.vspcd.hub.console import Client, Console
from vspc.vspcd.hub.events import ConsoleExpired, HubEvent
from vspc.vspcd.hub.hub import HubError
from vspc.vspcd.net.flow import ClientOutput

if TYPE_CHECKING:
    from vspc.vspcd.faces.admin.server import AdminServer

log = logging.getLogger(__package__)  # one logger for the admin server

__all__ = ["AdminLink", "Mode"]

# Refusals raised before an action reached the hub (the console or client named is
# not there for this peer); refusals of the action itself are recorded where made.
_UNRESOLVED = frozenset({ErrorCode.VM_NOT_FOUND, ErrorCode.AMBIGUOUS_VM, ErrorCode.NOT_ATTACHED})


def _requested_mode(request: Request) -> str:
    """The mode a refused attach asked for, as audit records say it."""
    if request.cmd != "attach":
        return ""
    return "readonly" if request.fields["readonly"] else request.fields["lock"].value


class Mode(Enum):
    """What an admin connection carries."""

    JSON = "json"  # requests, replies and events
    ATTACHED = "attached"  # one console's raw bytes
    CLOSING = "closing"  # nothing more is read or written (but the last line drains)
    SPLICED = "spliced"  # cluster mode: bytes relayed to the node serving the console


class AdminLink(LinkAccess, asyncio.Protocol):
    """One admin connection (and, once attached, the hub's `ClientChannel`); what it
    may do on which console comes from `LinkAccess` (vspcd/faces/admin/linkaccess.py)."""

    def __init__(self, server: AdminServer, *, unix: bool) -> None:
        # shared
        self.server = server
        self._hub = server.hub
        self._limits = server.limits
        # per connection, built before any I/O
        self._unix = unix
        self._framer = LineFramer(self._limits.line)
        self._bucket = TokenBucket(self._limits.burst, self._limits.rate)
        self._reading = Reading()
        self._mode = Mode.JSON
        self._errors = 0  # consecutive error replies
        self._write_paused = False  # transport above its high-water mark
        self._line_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0  # loop time of the last bytes read
        self.peer_key: object = "?"  # what per-peer limits count: uid or host
        self.tails = Tails(self._hub, self._push, self._tail_failed)
        self._attaching = False  # inside hub.attach: our own events are not for us
        self._waiting = False  # another cluster node is answering a request
        self._deferred: set[asyncio.Future[Reply]] = set()  # `defer`red answers (grep)
        self._splice_out: Callable[[bytes], None] | None = None
        self.relayed = False  # cluster mode: this session runs for another node's operator
        self._splice_closed: Callable[[], None] | None = None
        self._client: Client | None = None
        self._replay = b""
        self._greeting: list[str] = []  # notices from the hub during attach
        self._output = ClientOutput("admin ?")  # the attach channel (vspcd/net/flow.py)
        self.subscribed = False
        self._identity = Identity("?")
        self.actor = Actor(peer="?")  # the identity as audit records name it
        self._denied_on: Console | None = None  # the console `check` last refused
        self._levels: dict[tuple[str, str, str], Level] = {}  # per (key, name, vm name)
        self._levels_generation = -1  # the gate they were judged by
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
        self.identity = identify(self._transport, unix=self._unix)
        self._output.who = f"admin {self.identity}"
        self.peer = self.identity.address
        self.peer_key = peer_key(self.identity, self._transport, unix=self._unix)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.server.refused.log("admin %s refused: %s", self.identity, refusal)
            self._close_with(ErrorCode.BUSY, f"{refusal}; try again later")
            return
        self._transport.set_write_buffer_limits(high=self._limits.reply_backlog)
        self._last_active = self._loop.time()
        if self._limits.idle_timeout > 0:
            self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._on_idle)
        log.debug(
            "admin connection from %s (level %s where no rule applies)",
            self.identity,
            self.server.gate.level(self.identity, None).value,
        )

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
        self._output.release()  # off the output budget (vspcd/net/flow.py)
        for task in list(self._deferred):
            task.cancel()  # a search nobody will read: its worker process is killed
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
        request: Request | None = None
        self._denied_on = None
        try:
            request = validate_request(obj)
            rid = request.id
            if not self._bucket.take():
                raise AdminError(ErrorCode.BUSY, "rate limit reached; retry later", rid)
            remote = self.server.remote
            if remote is not None and remote.takes(self, request):
                self._waiting = True
                return
            handler = HANDLERS.get(request.cmd)
            if handler is None:  # validate_request knows it, so this is our bug
                raise AdminError(ErrorCode.UNKNOWN_CMD, f"unknown command {request.cmd!r}", rid)
            fields = handler(self, request)
            if self._waiting:  # the handler answers later (`defer`)
                return
            reply = ok(rid, **fields)
        except AdminError as exc:
            reply = exc.to_reply()
            self._audit_denied(request, exc.code, exc.message)
        except HubError as exc:
            reply = failed(exc.code, str(exc), rid)
            if exc.code in _UNRESOLVED:  # the action itself records its own refusals
                self._audit_denied(request, exc.code, str(exc))
        except Exception:
            log.exception("admin %s: request %s failed", self.identity, safe(obj.get("cmd")))
            reply = failed(ErrorCode.INTERNAL, "internal error; vspcd logged the details", rid)
        self._send(reply)

    def _audit_denied(self, request: Request | None, code: ErrorCode, why: str) -> None:
        """Record a refused attach, clear, kick or break (docs/security.md "Audit
        trail"): on the console `check` refused, else under the name asked for."""
        if request is None or request.cmd not in AUDITED:
            return
        fields = request.fields
        asked = fields.get("vm") or fields.get("port") or fields.get("client") or ""
        self._hub.audit(
            AUDITED[request.cmd],
            self.actor,
            self._denied_on,
            denied=f"{code.value}: {why}",
            name=str(asked),
            client=fields.get("client"),
            mode=_requested_mode(request),
        )

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

    def defer(self, request: Request, work: Awaitable[Reply]) -> None:
        """Answer `request` when `work` is done (grep); no further request is read
        until then, so replies stay in request order.  The handler returns at once."""
        self._waiting = True
        task = asyncio.ensure_future(work)
        self._deferred.add(task)

        def done(finished: asyncio.Future[Reply]) -> None:
            self._deferred.discard(task)
            rid = request.id
            if finished.cancelled():
                return
            exc = finished.exception()
            if exc is None:
                reply = ok(rid, **finished.result())
            elif isinstance(exc, AdminError):
                reply = exc.to_reply()
            elif isinstance(exc, HubError):
                reply = failed(exc.code, str(exc), rid)
            else:
                log.error("admin %s: %s failed: %r", self.identity, request.cmd, exc)
                reply = failed(ErrorCode.INTERNAL, "internal error; vspcd logged the details", rid)
            self.remote_done(reply)

        task.add_done_callback(done)

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
        holds a slot does (docs/security.md).
        """
        self._idle_timer = None
        if self._mode is not Mode.JSON or self._loop is None:
            return
        timeout = self._limits.idle_timeout
        idle = self._loop.time() - self._last_active
        if self.subscribed or self.tails or idle < timeout:
            wait = timeout if (self.subscribed or self.tails) else timeout - idle
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

    def audit_event(self, record: AuditRecord, line: bytes) -> None:
        """An `audit` event, for a subscriber with `control` on the record's console
        (or, for a record naming no console, where no rule applies)."""
        if not self.subscribed or self._mode is not Mode.JSON:
            return
        if record.key is None:
            level = self.server.gate.level(self._identity, None)
        else:
            level = self._level_of(
                event_ref(record.key, record.console, self._hub.console(record.key))
            )
        if level is Level.CONTROL:
            self._push(line)

    def hub_event(self, event: HubEvent, line: bytes | None) -> None:
        """A hub event and its event line (encoded once by the server; None for an
        internal event) for this connection, if wanted."""
        if self._mode is not Mode.JSON or self._attaching:
            return
        if self.subscribed and line is not None:
            key = event.key
            ref = event_ref(key, event.name, self._hub.console(key))
            if self._level_of(ref) is not Level.NONE:  # the others do not exist for us
                self._push(line)
        if isinstance(event, ConsoleExpired):
            self.tails.expired(str(event.key))  # a followed console went away

    def _tail_failed(self) -> None:
        log.exception("admin %s: tail output failed; closing", self.identity)
        self.abort()

    def _stop_events(self) -> None:
        self.subscribed = False
        self.tails.clear()

    # -- access ---------------------------------------------------------------------------

    def access_changed(self) -> None:
        """The access rules changed (a reload): re-judge what this connection holds.

        Attached: a peer left without watch is detached; one left with watch loses
        typing (and, holding a lock, is detached: a watcher holds none); a write-level
        peer holding the exclusive lock is detached.  Followed consoles no longer
        visible end with `tail_end`; events are filtered with the new rules from now on.
        """
        client = self._client
        if self._mode is Mode.ATTACHED and client is not None:
            level = self.level(client.console)
            holds = client.mode in (LockMode.WRITE, LockMode.EXCLUSIVE)
            if (
                level is Level.NONE
                or (level is Level.WATCH and holds)
                or (level is Level.WRITE and client.mode is LockMode.EXCLUSIVE)
            ):
                log.info(
                    "admin %s: access to %s changed to %s: detached",
                    self.identity,
                    client.console.tag,
                    level.value,
                )
                self._output.notice("access changed: detached")
                self._detach("access changed")
                self._close()
            elif level is Level.WATCH and not client.readonly:
                # The hub's may_write reads this flag at each keystroke.
                client.readonly = True
                log.info(
                    "admin %s: access to %s changed to watch: read-only",
                    self.identity,
                    client.console.tag,
                )
                if client.notices:
                    self._output.notice("access changed: read-only")
            return
        for console in self.tails.consoles():
            if not self.may_see(console):
                self.tails.expired(str(console.key), "access changed")

    # -- attach -----------------------------------------------------------------------------

    def attach(self, request: Request) -> Reply:
        """The `attach` command: join the console; the switch happens after the reply."""
        fields = request.fields
        console = self.find(request)
        lock = fields["lock"]
        # A watcher's default-mode attach joins read-only rather than failing, so
        # `vspc VM` just works (`find` refused any mode a watcher may not have).
        readonly = bool(fields["readonly"]) or self.level(console) is Level.WATCH
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
        self._transport.set_write_buffer_limits(high=self.server.settings.client_queue)
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

    # -- state ----------------------------------------------------------------------------

    @property
    def privileged(self) -> bool:
        """Root or the daemon's own uid on the Unix socket: may use the reserved slots."""
        return self._unix and self.identity.privileged(self.server.own_uid)

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
