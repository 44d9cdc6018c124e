"""Accepting connections: one `Listener` per listening socket, on public asyncio API.

Boundary: this module owns a socket until the connection is handed to asyncio with
`loop.connect_accepted_socket`; from then on the protocol object (vspcd/net/links.py,
vspcd/faces/admin.py) owns it.  No policy: which console a port belongs to is the
hub's business.

Accepting runs on `loop.add_reader` on the listening socket rather than
`asyncio.Server`, for two reasons:

* running out of file descriptors backs off for a moment (one log line per episode)
  instead of spinning on a listening socket that stays readable (the predecessor's
  epoll loop did spin; docs/development.md Part 3, #2);
* a per-console telnet port costs one slotted `Listener` and one reader
  registration, not a `Server` with its own sets and futures
  (docs/benchmarks.md, "Memory per idle console").

`add_reader` on a listening socket, `connect_accepted_socket` and `start_tls`-style
TLS through `connect_accepted_socket(ssl=...)` are public API, so the same code runs
on the stdlib loop and on uvloop (tests run both, tests/conftest.py).

Each accepted connection is checked against the listener's admission rules
(vspcd/net/admission.py), sorted into plain or TLS by its first byte where TLS is
enabled (vspcd/net/tls.py), and handed over by a small Task.  TCP keepalive is set
once on the proxy's listening socket, which Linux copies to every accepted socket;
a listener checks that on its first accept and otherwise sets it per socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from vspc.vspcd.hub.ratelog import BurstLog, throttled
from vspc.vspcd.net import counters, tls
from vspc.vspcd.net.admission import AllowList, Slot, Slots, host_of
from vspc.vspcd.net.sockopts import has_keepalive, set_keepalive
from vspc.vspcd.net.tls import Hello, Kind, client_hello, peek_now, sniff

__all__ = ["Listener", "ProtocolFactory", "SlotHolder", "address_text"]

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

# accept(2) errors caused by running out of descriptors or kernel memory: the
# listening socket stays readable, so retrying at once would spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 64  # accepts per readiness callback, so one busy port cannot hog the loop

# accept(2), Linux notes: pending network errors on the new socket are reported by
# accept and "should be treated like EAGAIN by retrying".
_TRANSIENT = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.EPERM,  # firewall (e.g. nftables reject) vetoed this connection
    }
)


class SlotHolder(Protocol):
    """A protocol that takes over its connection's pre-identification slot.

    `Listener` hands the slot over when it builds the protocol; from then on the
    protocol releases it (on identification or close) and enforces its deadline.
    """

    def adopt_slot(self, slot: Slot) -> None: ...


class Listener:
    """Accepts on one listening socket and hands each connection to asyncio.

    Created by `start_proxy_listener`, `PortBinder.bind` and the admin server.
    `close()` stops accepting and drops connections still being sniffed or
    handshaking; connections already handed to a protocol are not touched (like
    `asyncio.Server.close`).

    Admission (docs/security.md), checked in this order at accept:

    1. `allow`: the peer's address must be inside the allow list (if one is set;
       `set_allow_list` swaps it on the running listener, e.g. on reload); refused
       with a rate-limited warning otherwise;
    2. `unidentified`: a slot for the peer's address, held until the protocol says
       who it is (handed to it via `SlotHolder.adopt_slot`) or it closes.  When all
       are taken, a newcomer takes an idle holder's slot (`Slots.acquire`); with
       none idle the connection is parked (one per listener) and accepting stops, so
       further connections wait in the kernel's accept queue until a slot comes back
       or a holder turns idle.  Refused only by an explicit per-address cap, or
       while every slot is busy if its address holds a connection that has not said
       a byte since it was admitted `MUTE_GRACE` ago (ESXi speaks at once);
    3. `handshakes`: for TLS, once the whole ClientHello has arrived (within
       `tls.HELLO_GRACE` of its first byte, else the connection is dropped), a slot
       while the handshake is in progress, whose timeout is also cut to what is
       left of the unidentified slot's deadline.  Waiters are served quietest
       address first, and a slot held `Slots.stall_grace` while a quieter address
       waits is taken back (`Slots.wait_acquire`).

    With TLS enabled the first byte decides plain or TLS whenever it arrives, up to
    the identification deadline (`peek_timeout` if given); silence that long closes
    the connection (ESXi always speaks first).

    Memory: there is one per console's telnet port, so the class has `__slots__` (a
    new attribute must be added there) and builds its pending-task set, its log label
    and its aggregated loggers only when first needed.
    """

    __slots__ = (
        "_loop",
        "_factory",
        "_ssl",
        "_peek_timeout",
        "_handshake_timeout",
        "_backoff",
        "_keepalive",
        "_allow",
        "_unidentified",
        "_handshakes",
        "_sock",
        "_fd",
        "_accept_override",
        "_unix_name",
        "port",
        "_reading",
        "_closed",
        "_resume",
        "_exhausted_logged",
        "_pending",
        "_refused",
        "_setup_failed",
        "_keepalive_inherited",
        "_parked",
        "_retry",
        "_evictions",
    )

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        loop: asyncio.AbstractEventLoop,
        *,
        ssl_context: ssl.SSLContext | None = None,
        peek_timeout: float | None = None,
        handshake_timeout: float = 60.0,
        backoff: float = 0.5,
        keepalive: bool = True,
        allow: AllowList | None = None,
        unidentified: Slots | None = None,
        handshakes: Slots | None = None,
    ) -> None:
        # shared / configuration
        self._loop = loop
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._peek_timeout = peek_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff = backoff
        self._keepalive = keepalive
        self._allow = allow
        self._unidentified = unidentified
        self._handshakes = handshakes
        # the listening socket; `_accept` can be replaced so tests can inject errors
        self._sock = sock
        self._fd = sock.fileno()
        self._accept_override: Callable[[], tuple[socket.socket, object]] | None = None
        # Linux copies a listening socket's keepalive settings to the sockets it
        # accepts (start_proxy_listener sets them there): None until the first
        # accepted socket shows whether this listener's do, then True or False.
        self._keepalive_inherited: bool | None = None
        name = sock.getsockname()
        self.port: int = name[1] if isinstance(name, tuple) else 0
        self._unix_name: object = None if isinstance(name, tuple) else name
        # lifetime state
        self._reading = False
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        self._exhausted_logged = False
        # sniffing or handshaking; built on the first accept (most ports never get one)
        self._pending: set[asyncio.Task[None]] | None = None
        # Aggregated warnings, built on first use: most per-VM ports never need them.
        self._refused: BurstLog | None = None
        self._setup_failed: BurstLog | None = None
        self._evictions: BurstLog | None = None
        # At the unidentified cap with nothing idle: the one accepted connection that
        # waits for a slot (socket, address), and the timer that looks again.
        self._parked: tuple[socket.socket, object] | None = None
        self._retry: asyncio.Handle | None = None

    @property
    def label(self) -> str:
        """How log lines name this listener ("port N" or "socket PATH")."""
        return f"port {self.port}" if self._unix_name is None else f"socket {self._unix_name}"

    @property
    def _accept(self) -> Callable[[], tuple[socket.socket, object]]:
        # Not a bound method kept per listener: there is a listener per console.
        return self._accept_override or self._sock.accept

    @_accept.setter
    def _accept(self, accept: Callable[[], tuple[socket.socket, object]]) -> None:
        self._accept_override = accept

    @property
    def refused(self) -> BurstLog:
        """Refused connections, logged at most once per 10 s plus a count."""
        if self._refused is None:
            self._refused = throttled(
                log,
                f"{self.label}: connections refused",
                clock=self._loop.time,
                call_later=self._loop.call_later,
            )
        return self._refused

    @property
    def setup_failed(self) -> BurstLog:
        """Failed connection setups (TLS handshakes), logged like `refused`, at INFO."""
        if self._setup_failed is None:
            self._setup_failed = throttled(
                log,
                f"{self.label}: connection setups failed",
                clock=self._loop.time,
                call_later=self._loop.call_later,
                level=logging.INFO,
            )
        return self._setup_failed

    @property
    def evictions(self) -> BurstLog:
        """Idle unidentified connections dropped for a newcomer, logged like `refused`."""
        if self._evictions is None:
            self._evictions = throttled(
                log,
                f"{self.label}: idle unidentified connections dropped for newcomers",
                clock=self._loop.time,
                call_later=self._loop.call_later,
                level=logging.INFO,
            )
        return self._evictions

    @property
    def sockname(self) -> tuple[str, int]:
        """(host, port) the listener is bound to."""
        name = self._sock.getsockname()
        return name[0], name[1]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def allow_list(self) -> AllowList | None:
        return self._allow

    def set_allow_list(self, allow: AllowList | None) -> None:
        """Replace the allow list (None: everyone); applies from the next accept.

        Connections already accepted are not re-checked: a reload that narrows the
        list leaves established consoles alone.
        """
        self._allow = allow
        log.info("%s: allow list %s", self.label, allow if allow is not None else "(everyone)")

    def start(self) -> None:
        """Begin accepting (idempotent; no-op once closed)."""
        if not self._closed and not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._reading = False

    def close(self) -> None:
        """Stop accepting and close the listening socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._reading:
            self._stop_reading()
        self._reading = False
        self._sock.close()
        self._unpark_cancel()
        if self._parked is not None:
            self._parked[0].close()
            self._parked = None
        for task in self._pending or ():
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until connections that were still being sorted out are gone."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- accepting -------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._parked is not None:
                return  # every slot busy: the kernel's accept queue holds the rest
            try:
                conn, address = self._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    log.debug("%s: accept: %s (retrying)", self.label, exc)
                    continue
                self._back_off(exc)
                return
            if self._exhausted_logged:
                log.info("%s: accepting again", self.label)
                self._exhausted_logged = False
            self._handover(conn, address)

    def _back_off(self, exc: OSError) -> None:
        # Leave the connection in the kernel backlog and look again shortly; a
        # readable listening socket would otherwise wake the loop continuously.
        # One line per episode: the flag is cleared only once an accept succeeds.
        counters.LISTENERS.backoffs += 1
        if not self._exhausted_logged:
            if exc.errno in _EXHAUSTED:
                log.warning(
                    "%s: accept failed (%s); pausing accepts for %.1f s",
                    self.label,
                    exc,
                    self._backoff,
                )
            else:
                log.error(
                    "%s: unexpected accept error (%s); pausing accepts for %.1f s",
                    self.label,
                    exc,
                    self._backoff,
                )
            self._exhausted_logged = True
        if self._reading:
            self._stop_reading()
        self._resume = self._loop.call_later(self._backoff, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self.start()

    # -- waiting for an unidentified slot ------------------------------------------

    def _park(self, conn: socket.socket, address: object) -> None:
        # Every slot is taken and none is idle: keep this one connection, stop
        # accepting, and look again when a slot comes back or a holder turns idle.
        assert self._unidentified is not None
        counters.LISTENERS.parked += 1
        self._parked = (conn, address)
        if self._reading:
            self._stop_reading()
        self._unidentified.on_free.append(self._slot_freed)
        self._arm_retry()

    def _arm_retry(self) -> None:
        assert self._unidentified is not None
        if self._retry is not None:
            self._retry.cancel()
        when = self._unidentified.next_idle()
        now = self._loop.time()
        # At least a tick later (a holder exactly at the grace), at most a second
        # (a holder that was touched meanwhile moves the time on).
        delay = 1.0 if when is None else min(1.0, max(0.05, when - now + 0.01))
        self._retry = self._loop.call_later(delay, self._unpark)

    def _slot_freed(self) -> None:
        # Called from inside Slots._release: admit on the next loop turn, not here.
        if self._retry is not None:
            self._retry.cancel()
        self._retry = self._loop.call_soon(self._unpark)

    def _unpark_cancel(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._unidentified is not None and self._slot_freed in self._unidentified.on_free:
            self._unidentified.on_free.remove(self._slot_freed)

    def _unpark(self) -> None:
        self._retry = None
        parked = self._parked
        if parked is None or self._closed:
            return
        assert self._unidentified is not None
        if self._unidentified.full and self._unidentified.victim() is None:
            self._arm_retry()
            return
        self._unpark_cancel()
        self._parked = None
        self._handover(*parked)
        if self._parked is None:
            self.start()
            self._on_readable()  # the queue may hold a burst: take the next batch now

    def _refuse(self, conn: socket.socket, peer: str, why: str) -> None:
        conn.close()
        self.refused.log("%s: refused %s: %s", self.label, peer, why)

    def _handover(self, conn: socket.socket, address: object) -> None:
        host = host_of(address)
        peer = address_text(address)
        if self._allow is not None and not self._allow.allows(host):
            counters.LISTENERS.refused_allow += 1
            self._refuse(conn, peer, "not in the allow list")
            return
        slot = None
        if self._unidentified is not None:
            slots = self._unidentified
            if slots.per_key and slots.count(host) >= slots.per_key:
                why = slots.full_reason(host)
                counters.LISTENERS.refused_unidentified += 1
                self._refuse(conn, peer, f"too many unidentified connections ({why})")
                return
            evicted = slots.evicted
            slot = slots.acquire(host)
            if slot is None:
                if slots.mute(host):
                    # Its address holds connections that never spoke: queueing this
                    # one would only hold back everyone behind it in the kernel queue.
                    counters.LISTENERS.refused_unidentified += 1
                    why = f"{slots.count(host)} from this address, some silent since accepted"
                    self._refuse(conn, peer, f"too many unidentified connections ({why})")
                    return
                self._park(conn, address)
                return
            if slots.evicted != evicted:
                counters.LISTENERS.evicted_idle += 1
                self.evictions.log(
                    "%s: dropped an unidentified connection silent for %g s to admit %s "
                    "(%d unidentified, limit %d)",
                    self.label,
                    slots.idle_grace,
                    peer,
                    len(slots),
                    slots.total,
                )
        try:
            conn.setblocking(False)
            if self._keepalive and not self._keepalive_inherited:
                self._ensure_keepalive(conn)
            kind = Kind.PLAIN if self._ssl is None else peek_now(conn)
        except OSError as exc:  # the peer may already have reset it
            log.debug("%s: %s: setup failed: %s", self.label, peer, exc)
            conn.close()
            if slot is not None:
                slot.release()
            return
        if kind is Kind.GONE:
            log.debug("%s: %s left before sending anything", self.label, peer)
            conn.close()
            if slot is not None:
                slot.release()
            return
        task = self._loop.create_task(self._serve(conn, peer, host, slot, kind))
        if slot is not None:
            slot.evict = task.cancel  # until the protocol adopts it
        if self._pending is None:
            self._pending = set()
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _ensure_keepalive(self, conn: socket.socket) -> None:
        if self._keepalive_inherited is None:  # the first accept: one check
            self._keepalive_inherited = has_keepalive(conn)
            if self._keepalive_inherited:
                return
        set_keepalive(conn)

    def _build(self, slot: Slot | None) -> asyncio.BaseProtocol:
        protocol = self._factory()
        if slot is not None:
            adopt = getattr(protocol, "adopt_slot", None)
            if adopt is not None:
                cast(SlotHolder, protocol).adopt_slot(slot)
        return protocol

    def _first_byte_wait(self, slot: Slot | None) -> float:
        if self._peek_timeout is not None:
            return self._peek_timeout
        if slot is not None:
            return max(0.0, slot.deadline - self._loop.time())
        return self._handshake_timeout

    def _hello_failed(self, peer: str, hello: Hello) -> None:
        counters.LISTENERS.setup_failed += 1
        counters.LISTENERS.tls_failed += 1
        why = _hello_why(hello)
        self.setup_failed.log("%s: %s: connection setup failed: %s", self.label, peer, why)

    async def _serve(
        self, conn: socket.socket, peer: str, host: str, slot: Slot | None, kind: Kind | None
    ) -> None:
        handed_over = False
        handshake: Slot | None = None
        try:
            if kind is None:  # a TLS-enabled port, first byte not there yet: wait for it
                kind = await sniff(self._loop, conn, self._first_byte_wait(slot))
            if kind is Kind.GONE:
                log.debug("%s: %s left before sending anything", self.label, peer)
                return
            if kind is Kind.SILENT:
                counters.LISTENERS.setup_failed += 1
                self.setup_failed.log("%s: %s sent nothing; closing", self.label, peer)
                return
            if slot is not None:
                slot.touch()
            if kind is Kind.TLS:
                timeout = self._handshake_timeout
                if slot is not None:
                    timeout = min(timeout, slot.deadline - self._loop.time())
                began = self._loop.time()
                hello = await client_hello(self._loop, conn, min(tls.HELLO_GRACE, timeout))
                if hello is not Hello.READY:
                    self._hello_failed(peer, hello)
                    return
                if slot is not None:
                    slot.touch()
                if self._handshakes is not None:
                    # Over the cap a handshake waits (its socket unread, no TLS state
                    # yet) for a slot, within the identification deadline.
                    if slot is not None:
                        slot.pinned = True  # waiting on us, not on the peer: not idle
                    try:
                        handshake = await self._handshakes.wait_acquire(
                            host, max(0.0, timeout - (self._loop.time() - began))
                        )
                    finally:
                        if slot is not None:
                            slot.pinned = False
                            slot.touch()
                    if handshake is None:
                        counters.LISTENERS.tls_slot_timeouts += 1
                        why = self._handshakes.full_reason(host)
                        self.refused.log(
                            "%s: dropped %s: no TLS handshake slot in time (%s)",
                            self.label,
                            peer,
                            why,
                        )
                        return
                    # Held too long while a quieter address waits: taken back.
                    task = asyncio.current_task()
                    if task is not None:
                        handshake.evict = task.cancel
                timeout -= self._loop.time() - began
                timeout = max(0.1, timeout)
                counters.LISTENERS.tls_started += 1
                await self._loop.connect_accepted_socket(
                    lambda: self._build(slot),
                    conn,
                    ssl=self._ssl,
                    ssl_handshake_timeout=timeout,
                )
                counters.LISTENERS.tls_completed += 1
            else:
                await self._loop.connect_accepted_socket(lambda: self._build(slot), conn)
            handed_over = True
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            # Aggregated: a flood of broken handshakes must not mean a line each.
            counters.LISTENERS.setup_failed += 1
            counters.LISTENERS.tls_failed += kind is Kind.TLS
            why = str(exc) or type(exc).__name__  # a handshake timeout has no text
            self.setup_failed.log("%s: %s: connection setup failed: %s", self.label, peer, why)
            # A failed handshake's exception is in a reference cycle (its traceback
            # holds asyncio's frame, whose `waiter` future holds the exception), and
            # the cycle holds the whole TLS state: SSLObject, BIOs, read buffer.  Left
            # to the cyclic GC it stayed for minutes (docs/reliability.md).
            exc.__traceback__ = None
        except asyncio.CancelledError:
            if handshake is None or handshake.held or self._closed:
                raise
            # `Slots._reclaim` took the handshake slot back for a quieter address.
            counters.LISTENERS.setup_failed += 1
            counters.LISTENERS.tls_failed += 1
            self.setup_failed.log(
                "%s: %s: TLS handshake stalled; its slot went to another address",
                self.label,
                peer,
            )
        except Exception:
            # A bug in a protocol factory must not stop this listener.
            log.exception("%s: %s: connection setup crashed; dropping it", self.label, peer)
        finally:
            if handshake is not None:
                handshake.release()
            if not handed_over:
                conn.close()  # idempotent if asyncio's transport closed it already
                if slot is not None:
                    slot.release()  # the protocol never started: it cannot release it


def _hello_why(hello: Hello) -> str:
    if hello is Hello.GONE:
        return "closed before its ClientHello was complete"
    if hello is Hello.TOO_BIG:
        return f"ClientHello larger than {tls.MAX_HELLO} bytes"
    return "ClientHello not complete in time"


def address_text(address: object, default: str = "unix") -> str:
    """A socket address for log lines: `host:port` (IPv6 bracketed), else its text, else
    `default` (an unnamed Unix peer)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else default
