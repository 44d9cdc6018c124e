"""asyncio Protocol adapters: bytes <-> codec events <-> hub calls.  No policy here.

- `VmLink`: one ESXi connection on the proxy port (docs/protocol.md §3, §4).
- `TelnetClientLink`: one operator on a console's per-VM telnet port.

Each link owns its codec (built in `__init__`, before any I/O), catches the peer's
protocol errors, logs them once with the peer address and closes only that
connection: a bad peer never stops the loop or touches another console.

Flow control (docs/protocol.md §4.4 duty 2):
- A VM link keeps its transport buffer small (`VM_HIGH_WATER`) and reports
  pause/resume to the hub, which then holds client input in its own bounded queue and
  stops reading clients.  So a GOAHEAD or NOTNOW never queues behind much data.
- A client link never slows a VM: when its transport buffer passes the client's
  limit, further output for that client is dropped and counted, and once it drains
  the client sees one marker line saying how much it lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from vspc.common import vmware as vm
from vspc.common.display import safe
from vspc.common.session import ProxySession, accept_server_direction
from vspc.common.telnet import (
    Command,
    Data,
    Negotiation,
    Opt,
    TelnetCodec,
    TelnetProtocolError,
    Verb,
    escape,
    negotiation,
)
from vspc.vspcd.hub.console import Client, Role, VmConn, VmSink
from vspc.vspcd.hub.hub import Hub, HubError
from vspc.vspcd.hub.ratelog import BurstLog
from vspc.vspcd.net.accept import address_text
from vspc.vspcd.net.admission import Slot
from vspc.vspcd.net.flow import ClientOutput

log = logging.getLogger(__name__)

__all__ = ["PreIdentification", "TelnetClientLink", "VmLink", "peer_name"]

VM_HIGH_WATER = 64 * 1024
IDENT_TIMEOUT = 20.0  # seconds from accept to identification (docs/security.md)
PREIDENT_BYTES = 16 * 1024  # bytes a connection may send before it is identified


@dataclass(frozen=True, slots=True)
class PreIdentification:
    """What an unidentified VM connection may cost (docs/security.md).

    ESXi identifies a connection within its first few hundred bytes (WILL/DO
    negotiation, DO-PROXY, VC-UUID, docs/protocol.md §3), so a connection still unidentified
    after `timeout` seconds or `max_bytes` bytes is not a working ESXi host and is
    dropped (aborted: its buffers are freed at once).  `refused` aggregates the log
    lines so a flood costs one line per period.
    """

    refused: BurstLog
    timeout: float = IDENT_TIMEOUT
    max_bytes: int = PREIDENT_BYTES


# Recently formatted peer addresses: a VM connection's peer is asked for at each
# vMotion step it takes part in (BEGIN, PEER, COMPLETE; events and log lines), but a
# string kept per connection would cost every idle console memory.  Shared and
# bounded instead: at the limit it starts over.
_PEER_TEXT: dict[object, str] = {}
_PEER_TEXT_MAX = 4096


def peer_name(transport: asyncio.BaseTransport) -> str:
    """`host:port` (IPv6 bracketed) for log lines, or "?"."""
    address = transport.get_extra_info("peername")
    try:
        text = _PEER_TEXT.get(address)
    except TypeError:  # not hashable (no transport gives one; be safe)
        return address_text(address, "?")
    if text is None:
        text = address_text(address, "?")
        if len(_PEER_TEXT) >= _PEER_TEXT_MAX:
            _PEER_TEXT.clear()
        _PEER_TEXT[address] = text
    return text


class VmLink(asyncio.Protocol):
    """One ESXi serial-port connection (the hub's `VmChannel`)."""

    # One per VM connection: no `__dict__` (docs/benchmarks.md, "Memory per idle
    # console").  A new attribute must be added here.
    __slots__ = (
        "_hub",
        "_preident",
        "_session",
        "_transport",
        "_conn",
        "_slot",
        "_ident_timer",
        "_unidentified_bytes",
        "_identified",
        "_lost",
        "_receiving",
        "_probing",
    )

    def __init__(
        self,
        hub: VmSink,
        *,
        accept_proxy: Callable[[vm.DoProxy], bool] = accept_server_direction,
        preident: PreIdentification | None = None,
    ) -> None:
        self._hub = hub  # shared
        self._preident = preident  # shared; None: no pre-identification bounds
        self._session = ProxySession(accept_proxy=accept_proxy)  # per connection
        self._transport: asyncio.Transport | None = None
        self._conn: VmConn | None = None
        # Pre-identification state, all dropped once the hub binds the connection.
        self._slot: Slot | None = None  # the listener's unidentified-connection slot
        self._ident_timer: asyncio.TimerHandle | None = None
        self._unidentified_bytes = 0
        self._identified = False
        self._lost = False
        # True while handling one read: replies the hub asks for meanwhile are queued
        # and leave in a single write at the end (one send(2), not one per reply).
        self._receiving = False
        self._probing = False  # a liveness probe is out: the next read answers it

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # TCP keepalive (docs/protocol.md §4.6) is already on: the proxy Listener sets it,
        # with the same timing, on every socket it accepts (sockopts.set_keepalive).
        # Setting it again here cost four setsockopt calls per VM connection.
        self._transport.set_write_buffer_limits(high=VM_HIGH_WATER)
        if log.isEnabledFor(logging.DEBUG):  # `peer` is formatted per call
            log.debug("VM connection from %s", self.peer)
        self._session.initiate()
        self._flush()
        self._conn = self._hub.vm_connected(self)
        if self._preident is not None:
            loop = asyncio.get_running_loop()
            deadline = (
                self._slot.deadline
                if self._slot is not None
                else loop.time() + self._preident.timeout
            )
            self._ident_timer = loop.call_at(deadline, self._ident_timed_out)

    @property
    def peer(self) -> str:
        """`host:port` of the VM's host, for log lines and events, or "?".

        Formatted when asked (log lines, events) from the address the transport
        keeps anyway, rather than a string per idle console (docs/benchmarks.md).
        """
        return "?" if self._transport is None else peer_name(self._transport)

    def adopt_slot(self, slot: Slot) -> None:
        """Take over the listener's unidentified slot (accept.SlotHolder)."""
        if self._identified or self._lost:
            slot.release()
        else:
            self._slot = slot
            slot.evict = self.abort  # a newcomer may take the slot once we are idle

    def _ident_timed_out(self) -> None:
        self._ident_timer = None
        if self._identified or self._preident is None:
            return
        self._preident.refused.log(
            "VM %s: not identified within %g s; closing", self.peer, self._preident.timeout
        )
        self.abort()

    def _done_identifying(self) -> None:
        self._identified = True
        self._unidentified_bytes = 0
        self._end_preident()

    def _end_preident(self) -> None:
        """Stop the identification timer and give the admission slot back."""
        if self._ident_timer is not None:
            self._ident_timer.cancel()
            self._ident_timer = None
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def data_received(self, data: bytes) -> None:
        if self._conn is None or self._transport is None or self._transport.is_closing():
            return
        if self._probing:
            self._probing = False
            self._hub.vm_heard(self._conn)
        if self._slot is not None:
            self._slot.touch()  # a sign of life: not an idle holder
        if not self._identified and self._preident is not None:
            # Parse at most the pre-identification allowance: the codec and the hub's
            # `early` buffer never hold more for a peer that has not said who it is.
            allowed = max(0, self._preident.max_bytes - self._unidentified_bytes)
            if len(data) > allowed:
                head, data = data[:allowed], data[allowed:]
                self._unidentified_bytes += len(head)
                if head and not self._receive(head):
                    return
                if not self._identified:
                    self._preident.refused.log(
                        "VM %s: over %d bytes without identifying; closing",
                        self.peer,
                        self._preident.max_bytes,
                    )
                    self.abort()
                    return
                # The allowance identified it: the rest of the read is ordinary input.
            else:
                self._unidentified_bytes += len(data)
        if data and self._receive(data):
            self._flush()

    def _receive(self, data: bytes) -> bool:
        """Parse and hand events to the hub; False if the connection was closed."""
        assert self._conn is not None
        try:
            events = self._session.receive_data(data)
        except TelnetProtocolError as exc:
            log.warning("VM %s: telnet protocol error (%s); closing", self.peer, safe(exc))
            self.close()
            return False
        self._receiving = True
        try:
            for event in events:
                self._hub.vm_event(self._conn, event)
        except Exception:  # a hub bug must cost one connection, never the daemon
            log.exception("VM %s: internal error handling its input; closing", self.peer)
            self.close()
            return False
        finally:
            self._receiving = False
        if not self._identified and self._conn.role is not Role.UNBOUND:
            self._done_identifying()  # the hub bound it: ACTIVE or a vMotion DESTINATION
        return True

    def eof_received(self) -> bool:
        return False  # ESXi half-closes; close our side too (the capture proxy did)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._end_preident()
        if exc is not None:
            if not self._identified and self._preident is not None:
                # Resets by the thousand are a flood, not news: aggregated.
                self._preident.refused.log(
                    "VM %s: connection lost before identifying: %s", self.peer, exc
                )
            else:
                log.info("VM %s: connection lost: %s", self.peer, safe(exc))
        conn, self._conn = self._conn, None
        if conn is not None:
            # Dropped first: link and record refer to each other, and a cycle waits
            # for the cyclic GC with the codec's and `early`'s buffers.
            self._hub.vm_closed(conn)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._hub.vm_congested(self._conn, True)

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._hub.vm_congested(self._conn, False)

    # -- VmChannel (called by the hub) --------------------------------------------------

    def _flush(self) -> None:
        out = self._session.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def send_console(self, data: bytes) -> None:
        self._session.send_data(data)
        if not self._receiving:
            self._flush()

    def goahead(self, sequence: bytes, secret: bytes) -> None:
        self._session.goahead(sequence, secret)
        if not self._receiving:
            self._flush()

    def notnow(self, sequence: bytes) -> None:
        self._session.notnow(sequence)
        if not self._receiving:
            self._flush()

    def peer_ok(self, sequence: bytes) -> None:
        self._session.peer_ok(sequence)
        if not self._receiving:
            self._flush()

    def write_backlog(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def send_break(self) -> bool:
        # Through the session's ordered output (the codec frames it), never beside it.
        self._session.send_break()
        if not self._receiving:
            self._flush()
        return True

    def probe(self) -> None:
        # RFC 860: DO TIMING-MARK must be answered (WILL or WONT) by any telnet peer,
        # after everything sent before it; ESXi answers every option request
        # (docs/protocol.md §3.1).  Raw bytes, outside the codec's option table: the
        # answer is only evidence of life, and the codec refuses a WILL with one DONT.
        self._flush()
        if self._transport is not None and not self._transport.is_closing():
            self._probing = True
            self._transport.write(negotiation(Verb.DO, Opt.TIMING_MARK))

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()  # flushes what is buffered, then closes

    def abort(self) -> None:
        """Drop the connection now, buffers and all (a hostile peer gets no flush)."""
        if self._transport is not None:
            self._transport.abort()


# Telnet operators: we echo and suppress go-ahead (character mode), and run binary
# both ways so NUL, 0x11, 0xff and CR LF pass unchanged.
_CLIENT_LOCAL = (Opt.ECHO, Opt.SGA, Opt.BINARY)
_CLIENT_REMOTE = (Opt.BINARY, Opt.SGA)


class TelnetClientLink(asyncio.Protocol):
    """One operator on a per-VM telnet port (the hub's `ClientChannel`).

    Data flows at once: offers go out on connect but nothing waits for the answers,
    so raw clients (nc, gdb) that never negotiate work too.
    """

    # One per operator connection: no `__dict__`.
    __slots__ = (
        "_hub",
        "_port",
        "_queue_limit",
        "_replay",
        "_greeting",
        "_codec",
        "_transport",
        "_client",
        "_negotiated",
        "_after_cr",
        "_output",
        "peer",
    )

    def __init__(
        self, hub: Hub, port: int | None = None, *, queue_limit: int = 1 << 20, replay: int = 0
    ) -> None:
        self._hub = hub
        self._port = port  # None: the local port the operator connected to
        self._queue_limit = queue_limit
        self._replay = replay  # scrollback bytes sent on connect (--context)
        # Notices the hub gives during attach (e.g. "VM not connected") follow the
        # replayed scrollback, so the last thing the operator sees is the news.
        self._greeting: list[str] | None = None
        self._codec = TelnetCodec(local_ok=_CLIENT_LOCAL, remote_ok=_CLIENT_REMOTE)
        self._transport: asyncio.Transport | None = None
        self._client: Client | None = None
        self._negotiated = False  # the peer speaks telnet (sent any IAC command)
        self._after_cr = False
        self._output = ClientOutput("client ?")  # slow-reader policy (vspcd/net/flow.py)
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        self._output.who = f"client {self.peer}"
        self._output.bind(self._transport)
        self._transport.set_write_buffer_limits(high=self._queue_limit)
        if self._port is None:
            sockname = transport.get_extra_info("sockname")
            self._port = sockname[1] if isinstance(sockname, tuple) else -1
        console = self._hub.console_by_port(self._port)
        if console is None:
            self._line(f"no console on port {self._port}")
            self._transport.close()
            return
        for option in _CLIENT_LOCAL:
            self._codec.offer_local(option)
        for option in _CLIENT_REMOTE:
            self._codec.request_remote(option)
        self._transport.write(self._codec.data_to_send())
        self._greeting = []
        try:
            self._client = self._hub.attach(console, self, kind="telnet")
        except HubError as exc:
            self._greeting = None
            self._line(str(exc))
            self._transport.close()
            return
        greeting, self._greeting = self._greeting, None
        if self._replay:
            # vSPC.py's "seed data": recent output first; live output can only follow,
            # since nothing else runs between attach() and this write.
            self._transport.write(escape(console.scrollback.last(self._replay)))
        for text in greeting:
            self._line(text)

    def data_received(self, data: bytes) -> None:
        if self._client is None or self._transport is None:
            return
        try:
            events = self._codec.receive_data(data)
        except TelnetProtocolError as exc:
            log.warning("client %s: telnet protocol error (%s); closing", self.peer, safe(exc))
            self._transport.close()
            return
        reply = self._codec.data_to_send()
        if reply:
            self._transport.write(reply)
        for event in events:
            match event:
                case Data(payload):
                    self._hub.client_input(self._client, self._nvt_input(payload))
                case Negotiation() | Command():
                    self._negotiated = True
                case _:
                    pass

    def _nvt_input(self, payload: bytes) -> bytes:
        """Undo NVT's CR NUL (RFC 854) for telnet peers not in binary mode."""
        if not self._negotiated or self._codec.remote_enabled(Opt.BINARY):
            return payload
        if self._after_cr and payload[:1] == b"\0":
            payload = payload[1:]
        self._after_cr = payload[-1:] == b"\r"
        return payload.replace(b"\r\0", b"\r")

    def connection_lost(self, exc: Exception | None) -> None:
        self._output.release()  # off the output budget (vspcd/net/flow.py)
        client, self._client = self._client, None  # no link <-> Client cycle left
        if client is not None:
            self._hub.detach(client)

    def pause_writing(self) -> None:
        self._output.pause_writing()  # over the client's limit: drop its output from now on

    def resume_writing(self) -> None:
        self._output.resume_writing()

    # -- ClientChannel -------------------------------------------------------------------

    def console_output(self, raw: bytes, escaped: bytes) -> None:
        self._output.write(escaped, len(raw))

    def _line(self, text: str) -> None:
        self._output.notice(text)

    def notify(self, text: str) -> None:
        if self._greeting is not None:
            self._greeting.append(text)
        else:
            self._line(text)

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
