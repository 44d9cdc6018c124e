"""Listening sockets: the ESXi proxy port, per-VM telnet ports, the admin Unix socket.

Boundary: this module owns sockets until a connection is handed to asyncio with
`loop.connect_accepted_socket`; from then on the protocol object (vspcd/net/links.py)
owns it.  No policy: which console a port belongs to is the hub's business.

* `start_proxy_listener` serves plain telnet and TLS on one port.  ESXi opens a
  `telnets://` connection with a TLS ClientHello, whose first byte is the handshake
  record type 0x16, and a `telnet://` one with `IAC WILL AUTHENTICATION` (0xff,
  docs/protocol.md §3.1), so one peeked byte tells them apart.  TCP keepalive is enabled on
  every accepted socket so a crashed host's half-open connection is noticed
  (docs/protocol.md §4.6, "Enable TCP keepalive on VM sockets").
* `PortBinder` hands out per-console telnet ports synchronously, lowest free first,
  skipping ports somebody else holds (the default range 50000+ overlaps Linux's
  ephemeral ports).
* `start_admin_socket` creates the admin Unix socket with its mode and group set
  before anyone can connect.

Accepting runs on `loop.add_reader` rather than `asyncio.Server` so that running out
of file descriptors backs off for a moment instead of spinning on a listening socket
that stays readable (the predecessor's epoll loop did spin; docs/development.md Part 3, #2).

The accept path is the largest single cost of a vMotion, which is a whole new
connection (issue #12 item 3, docs/benchmarks.md).  So a plain connection is handed
to asyncio synchronously, inside the readiness callback, without a Task, a coroutine
or a waiter future: on the stdlib selector loop through `_make_socket_transport`
(what asyncio's own `Server` uses for each accepted socket), guarded by
`fast_transport_maker`, which falls back to the public `connect_accepted_socket` on
any loop without it (uvloop, a future CPython).  On the proxy port that transport is
vspcd/net/leantransport.py's `LeanTransport` (a third of an idle console's memory less
than asyncio's).  Only a TLS connection, or one whose
first byte has not arrived yet on a TLS-enabled port, takes the Task path.  TCP
keepalive is set once on the proxy's listening socket, which Linux copies to every
accepted socket; a listener checks that on its first accept and otherwise sets it
per socket (as it does on the per-console ports, which see few connections).

The per-console ports share one loop registration (vspcd/net/acceptpoll.py) where the
platform has epoll; the discipline is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import ssl
import stat
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, cast

from vspc.vspcd.net import acceptpoll, counters
from vspc.vspcd.net.acceptpoll import AcceptPoller
from vspc.vspcd.net.admission import AllowList, Slot, Slots, Throttled, host_of
from vspc.vspcd.net.leantransport import LeanTransport

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

TLS_HANDSHAKE_RECORD = 0x16  # RFC 8446 §5.1 ContentType handshake(22)

# Keepalive on accepted sockets: first probe after a minute idle, then 5 probes 10 s
# apart, so a dead peer is dropped within about 110 s.  ESXi's own side uses 300 s +
# 5 probes (docs/protocol.md §4.6, D-KA); ours only has to be no slower.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 5

# accept(2) errors caused by running out of descriptors or kernel memory: the
# listening socket stays readable, so retrying at once would spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
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
# bind(2) errors that are about this one port; anything else (EADDRNOTAVAIL,
# EMFILE, ...) would fail for every port, so PortBinder stops scanning.
_PORT_TAKEN = frozenset({errno.EADDRINUSE, errno.EACCES})

# Listener._fast: how a plain connection is handed over (0: the public Task path).
_ASYNCIO = 1  # asyncio's transport, built synchronously
_LEAN = 2  # vspcd/net/leantransport.py

_ACCEPT_BATCH = 64  # accepts per readiness callback, so one busy port cannot hog the loop

# `loop._make_socket_transport(sock, protocol, waiter=None, *, extra=None, server=None)`
# builds the transport and schedules `connection_made`; see `fast_transport_maker`.
TransportMaker = Callable[..., asyncio.BaseTransport]


def fast_transport_maker(loop: asyncio.AbstractEventLoop) -> TransportMaker | None:
    """The stdlib selector loop's synchronous transport constructor, or None.

    `_make_socket_transport` is private API, so it is used only where its shape is
    known: on CPython's `BaseSelectorEventLoop` (what `asyncio.run` makes on Linux)
    and when it is present.  Everywhere else (uvloop, a proactor, a future CPython
    that renames it) the caller uses the public `connect_accepted_socket`, which
    costs a Task and a waiter future per connection but works on every loop.
    tests/vspcd/net/test_listeners.py runs both paths.
    """
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return None
    maker = getattr(loop, "_make_socket_transport", None)
    return cast(TransportMaker, maker) if callable(maker) else None


def make_ssl_context(
    cert: str | os.PathLike[str], key: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A server-side TLS context for the proxy port: TLS 1.2 or newer, no client cert.

    Args:
        cert: PEM file with the certificate chain (and the key, if `key` is None).
        key: PEM file with the private key.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files are not a matching PEM certificate and key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation only helps an attacker on a long-lived console connection.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.load_cert_chain(cert, key)
    return context


_KEEPALIVE_TCP: tuple[tuple[int, int], ...] = tuple(
    (option, value)
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE),
        (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_COUNT),
    )
    if option is not None
)


def set_keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with our probe timing (Linux options where present)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE_TCP:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def has_keepalive(sock: socket.socket) -> bool:
    """True if `sock` has keepalive on with exactly our probe timing."""
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        return False
    return all(sock.getsockopt(socket.IPPROTO_TCP, o) == v for o, v in _KEEPALIVE_TCP)


def bind_tcp(
    host: str, port: int, *, backlog: int = socket.SOMAXCONN, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking listening TCP socket on (host, port); port 0 picks a free one.

    Binds the first address `getaddrinfo` returns for `host`.  SO_REUSEADDR lets a
    restarted daemon take its ports back from TIME_WAIT; on Linux it never lets two
    sockets listen on one port.  `reuse_port` (SO_REUSEPORT) does: several cluster
    nodes on one host share the proxy port and the kernel spreads connections.

    Raises:
        OSError: resolution, bind or listen failed.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Kind(Enum):
    PLAIN = "plain"
    TLS = "tls"
    GONE = "gone"  # closed or reset before saying anything


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

    Admission (issue #7, docs/security.md), checked in this order at accept, each
    refusal closing the socket at once with a rate-limited warning:

    1. `allow`: the peer's address must be inside the allow list (if one is set;
       `set_allow_list` swaps it on the running listener, e.g. on reload);
    2. `unidentified`: a slot for the peer's address, held until the protocol says
       who it is (handed to it via `SlotHolder.adopt_slot`) or it closes;
    3. `handshakes`: for TLS, a slot while the handshake is in progress, whose
       timeout is also cut to what is left of the unidentified slot's deadline.

    Memory (issue #12 item 3): there is one per console's telnet port, so the class
    has `__slots__` (a new attribute must be added there) and builds its pending-task
    set, its log label and its aggregated loggers only when first needed.
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
        "_poller",
        "_fast",
        "_keepalive_inherited",
    )

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        loop: asyncio.AbstractEventLoop,
        *,
        ssl_context: ssl.SSLContext | None = None,
        peek_timeout: float = 1.0,
        handshake_timeout: float = 60.0,
        backoff: float = 0.5,
        keepalive: bool = True,
        allow: AllowList | None = None,
        unidentified: Slots | None = None,
        handshakes: Slots | None = None,
        fast: bool = True,
        lean: bool = False,
        poller: AcceptPoller | None = None,
    ) -> None:
        # shared / configuration
        self._loop = loop
        self._poller = poller  # shared registration (console ports), else add_reader
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
        # The synchronous hand-over (module docstring) where the loop has it; False
        # forces the public Task path (tests run both).  A flag, not the bound method:
        # one is kept per listener, and there is a listener per console.  `lean` (the
        # proxy port) hands plain connections to a LeanTransport instead of asyncio's
        # (vspcd/net/leantransport.py); one int rather than another slot per console port.
        self._fast = (_LEAN if lean else _ASYNCIO) if fast and fast_transport_maker(loop) else 0
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
        self._refused: Throttled | None = None
        self._setup_failed: Throttled | None = None

    @property
    def label(self) -> str:
        """How log lines name this listener ("port N" or "socket PATH")."""
        return f"port {self.port}" if self._unix_name is None else f"socket {self._unix_name}"

    @property
    def _accept(self) -> Callable[[], tuple[socket.socket, object]]:
        # A bound method per listener would be 64 bytes per console's port.
        return self._accept_override or self._sock.accept

    @_accept.setter
    def _accept(self, accept: Callable[[], tuple[socket.socket, object]]) -> None:
        self._accept_override = accept

    @property
    def refused(self) -> Throttled:
        """Refused connections, logged at most once per 10 s plus a count."""
        if self._refused is None:
            self._refused = Throttled(
                log,
                f"{self.label}: connections refused",
                clock=self._loop.time,
                call_later=self._loop.call_later,
            )
        return self._refused

    @property
    def setup_failed(self) -> Throttled:
        """Failed connection setups (TLS handshakes), logged like `refused`, at INFO."""
        if self._setup_failed is None:
            self._setup_failed = Throttled(
                log,
                f"{self.label}: connection setups failed",
                clock=self._loop.time,
                call_later=self._loop.call_later,
                level=logging.INFO,
            )
        return self._setup_failed

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
            if self._poller is not None:
                self._poller.add(self._fd, self)
            else:
                self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def accept_ready(self) -> None:
        """The shared poller saw connections waiting (acceptpoll.AcceptTarget)."""
        self._on_readable()

    def _stop_reading(self) -> None:
        if self._poller is not None:
            self._poller.remove(self._fd)
        elif not self._loop.is_closed():
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
        for task in self._pending or ():
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until connections that were still being sorted out are gone."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- accepting -------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(_ACCEPT_BATCH):
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

    def _refuse(self, conn: socket.socket, peer: str, why: str) -> None:
        conn.close()
        self.refused.warn("%s: refused %s: %s", self.label, peer, why)

    def _handover(self, conn: socket.socket, address: object) -> None:
        host = host_of(address)
        peer = address_text(address)
        if self._allow is not None and not self._allow.allows(host):
            counters.LISTENERS.refused_allow += 1
            self._refuse(conn, peer, "not in the allow list")
            return
        slot = None
        if self._unidentified is not None:
            slot = self._unidentified.acquire(host)
            if slot is None:
                why = self._unidentified.full_reason(host)
                counters.LISTENERS.refused_unidentified += 1
                self._refuse(conn, peer, f"too many unidentified connections ({why})")
                return
        try:
            conn.setblocking(False)
            if self._keepalive and not self._keepalive_inherited:
                self._ensure_keepalive(conn)
            kind = _Kind.PLAIN if self._ssl is None else _peek_now(conn)
        except OSError as exc:  # the peer may already have reset it
            log.debug("%s: %s: setup failed: %s", self.label, peer, exc)
            conn.close()
            if slot is not None:
                slot.release()
            return
        if kind is _Kind.GONE:
            log.debug("%s: %s left before sending anything", self.label, peer)
            conn.close()
            if slot is not None:
                slot.release()
            return
        if kind is _Kind.PLAIN and self._fast:
            self._hand_over_now(conn, address, peer, slot)
            return
        # TLS, a first byte not there yet, or a loop without the synchronous path.
        task = self._loop.create_task(self._serve(conn, peer, host, slot, kind))
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

    def _hand_over_now(
        self, conn: socket.socket, address: object, peer: str, slot: Slot | None
    ) -> None:
        """A plain connection to its protocol at once (the synchronous path)."""
        make_transport = fast_transport_maker(self._loop)
        assert make_transport is not None  # self._fast
        try:
            protocol = self._build(slot)
            # `peername` from accept(), as asyncio's own Server passes it: saves a
            # getpeername(2).  connection_made runs on the loop's next iteration.
            if self._fast == _LEAN:
                # The host's address string is interned: a host runs many VMs, so
                # their connections share one string (issue #12 item 3).
                if isinstance(address, tuple) and isinstance(address[0], str):
                    address = (sys.intern(address[0]), *address[1:])
                LeanTransport(self._loop, conn, protocol, address)
            else:
                make_transport(conn, protocol, extra={"peername": address})
        except Exception:
            # A bug in a protocol factory must not stop this listener.
            log.exception("%s: %s: connection setup crashed; dropping it", self.label, peer)
            conn.close()
            if slot is not None:
                slot.release()  # idempotent if the protocol had adopted it

    def _build(self, slot: Slot | None) -> asyncio.BaseProtocol:
        protocol = self._factory()
        if slot is not None:
            adopt = getattr(protocol, "adopt_slot", None)
            if adopt is not None:
                cast(SlotHolder, protocol).adopt_slot(slot)
        return protocol

    async def _serve(
        self, conn: socket.socket, peer: str, host: str, slot: Slot | None, kind: _Kind | None
    ) -> None:
        handed_over = False
        handshake: Slot | None = None
        try:
            if kind is None:  # a TLS-enabled port, first byte not there yet: wait for it
                kind = await self._sniff(conn)
            if kind is _Kind.GONE:
                log.debug("%s: %s left before sending anything", self.label, peer)
                return
            if kind is _Kind.TLS:
                timeout = self._handshake_timeout
                if slot is not None:
                    timeout = min(timeout, slot.deadline - self._loop.time())
                if self._handshakes is not None:
                    # Over the cap a handshake waits (its socket unread, no TLS state
                    # yet) for a slot, within the identification deadline.
                    began = self._loop.time()
                    handshake = await self._handshakes.wait_acquire(host, max(0.0, timeout))
                    if handshake is None:
                        counters.LISTENERS.tls_slot_timeouts += 1
                        why = self._handshakes.full_reason(host)
                        self.refused.warn(
                            "%s: dropped %s: no TLS handshake slot in time (%s)",
                            self.label,
                            peer,
                            why,
                        )
                        return
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
            counters.LISTENERS.tls_failed += kind is _Kind.TLS
            why = str(exc) or type(exc).__name__  # a handshake timeout has no text
            self.setup_failed.warn("%s: %s: connection setup failed: %s", self.label, peer, why)
            # A failed handshake's exception is in a reference cycle (its traceback
            # holds asyncio's frame, whose `waiter` future holds the exception), and
            # the cycle holds the whole TLS state: SSLObject, BIOs, read buffer.  Left
            # to the cyclic GC it stayed for minutes (docs/reliability.md, issue #7).
            exc.__traceback__ = None
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

    async def _sniff(self, conn: socket.socket) -> _Kind:
        # A client that waits for the server to speak first (a bare telnet) sends
        # nothing; after peek_timeout it is plain.  ESXi always speaks first.
        try:
            async with asyncio.timeout(self._peek_timeout):
                while True:
                    await self._readable(conn)
                    try:
                        first = conn.recv(1, socket.MSG_PEEK)
                    except (BlockingIOError, InterruptedError):
                        continue
                    break
        except TimeoutError:
            return _Kind.PLAIN
        except OSError:
            return _Kind.GONE
        if not first:
            return _Kind.GONE
        return _Kind.TLS if first[0] == TLS_HANDSHAKE_RECORD else _Kind.PLAIN

    async def _readable(self, conn: socket.socket) -> None:
        ready = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = conn.fileno()
        self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            # asyncio's transport registers its own reader on this fd next
            self._loop.remove_reader(fd)


def _peek_now(conn: socket.socket) -> _Kind | None:
    """Plain, TLS or gone from a first byte already received; None: not there yet.

    On a TLS-enabled port this sorts a connection without a Task when its first
    segment arrived before the accept ran (ESXi speaks first; accepts run in
    batches); the others wait in `_sniff`.  Raises OSError (e.g. a reset) as `recv`
    does.
    """
    try:
        first = conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    if not first:
        return _Kind.GONE
    return _Kind.TLS if first[0] == TLS_HANDSHAKE_RECORD else _Kind.PLAIN


def address_text(address: object, default: str = "unix") -> str:
    """A socket address for log lines: `host:port` (IPv6 bracketed), else its text, else
    `default` (an unnamed Unix peer)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else default


async def start_proxy_listener(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    protocol_factory: ProtocolFactory,
    *,
    peek_timeout: float = 1.0,
    handshake_timeout: float = 60.0,
    backoff: float = 0.5,
    allow: AllowList | None = None,
    unidentified: Slots | None = None,
    handshakes: Slots | None = None,
    reuse_port: bool = False,
    lean: bool = True,
) -> Listener:
    """Listen for ESXi hosts on (host, port), plain telnet and TLS on the same port.

    With an `ssl_context`, each accepted socket's first byte is peeked: 0x16 starts
    TLS, anything else (or silence for `peek_timeout` seconds) is plain.  Without one
    nothing is peeked.  Accepted sockets get TCP keepalive.

    Args:
        host: address to bind ("0.0.0.0", "::", "127.0.0.1", ...).
        port: TCP port, 0 for any free one (see `Listener.port`).
        ssl_context: from `make_ssl_context`, or None for plain only.
        protocol_factory: builds one protocol (e.g. `lambda: VmLink(hub)`) per
            connection.
        peek_timeout: seconds to wait for a first byte before assuming plain.
        handshake_timeout: seconds a TLS handshake may take.
        backoff: seconds accepting pauses after EMFILE/ENFILE and similar errors.
        allow: peers allowed to connect (None: everyone); see `Listener`.
        unidentified: slots for connections not yet identified (None: no cap).
        handshakes: slots for TLS handshakes in progress (None: no cap).
        reuse_port: SO_REUSEPORT, for several nodes on one host (docs/cluster.md).
        lean: plain connections get a `LeanTransport` (a third of an idle console's
            memory less; vspcd/net/leantransport.py) where the loop allows it.

    Raises:
        OSError: the address cannot be bound.
    """
    sock = bind_tcp(host, port, reuse_port=reuse_port)
    # Once here rather than per accepted socket, which inherits it (Linux); the
    # Listener checks that on its first accept, and sets it per socket otherwise.
    with contextlib.suppress(OSError):
        set_keepalive(sock)
    listener = Listener(
        sock,
        protocol_factory,
        asyncio.get_running_loop(),
        ssl_context=ssl_context,
        peek_timeout=peek_timeout,
        handshake_timeout=handshake_timeout,
        backoff=backoff,
        allow=allow,
        unidentified=unidentified,
        handshakes=handshakes,
        lean=lean,
    )
    listener.start()
    log.info(
        "listening for ESXi on %s:%d (%s), from %s",
        host,
        listener.port,
        "telnet + telnets" if ssl_context is not None else "telnet",
        allow if allow is not None else "any address",
    )
    return listener


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_overlap(
    range_start: int, path: Path = EPHEMERAL_RANGE_FILE, *, count: int = 65536
) -> tuple[int, int] | None:
    """The kernel's ephemeral port range if the telnet ports vspcd may use overlap it.

    Those are `range_start` up to `count` ports on (`PortBinder` goes no higher than
    65535, and the caller bounds `count` by what can be bound at once: one descriptor
    per console port).  Outgoing connections take their local port from that range,
    so consoles bound there compete with every client on the host (docs/operations.md).
    Unknown (no /proc, unreadable) counts as no overlap.
    """
    try:
        low, high = (int(part) for part in path.read_text().split()[:2])
    except (OSError, ValueError):
        return None
    last = min(65535, range_start + max(count, 1) - 1)
    return (low, high) if low <= last and high >= range_start else None


class PortBinder:
    """Per-console telnet ports: bound synchronously, lowest free port first.

    `bind()` tries `range_start`, `range_start + 1`, ... up to 65535, skipping ports
    it already holds and ports whose bind fails with EADDRINUSE/EACCES (another
    process, or an outgoing connection's ephemeral port).  The port number is known
    as soon as `bind()` returns, so the hub can announce it at once.

    Constructing one does no I/O; the loop is only used once `bind()` is called.
    """

    def __init__(
        self,
        host: str,
        range_start: int,
        loop: asyncio.AbstractEventLoop,
        *,
        backoff: float = 0.5,
        keepalive: bool = True,
        retry: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= range_start <= 65535:
            raise ValueError(f"range_start must be 1..65535, got {range_start}")
        self._host = host
        self._start = range_start
        self._loop = loop
        self._backoff = backoff
        self._keepalive = keepalive
        self._held: dict[int, Listener] = {}
        # One loop registration for all held ports (vspcd/net/acceptpoll.py), built with
        # the first; None where there is no epoll (each listener then adds a reader).
        self._poller: AcceptPoller | None = None
        # Every port in [range_start, _scan_from) is held by us or was found held by
        # another process, so a scan for the lowest free port starts here: without it
        # each bind walked all held ports, making N consoles O(N^2)
        # (bench/daemon_bench.py connect_ports).  Ports others hold are remembered in
        # `_foreign` and not retried on every bind: with -r inside the ephemeral range
        # and 9,000 outgoing connections, retrying them cost ~35 ms per console
        # (issue #7, finding 8).  They are forgotten every `retry` seconds, when
        # one scan from the start finds the ones freed meanwhile.
        self._scan_from = range_start
        self._foreign: set[int] = set()
        self._retry = retry
        self._clock = clock
        self._next_retry = clock() + retry

    @property
    def ports(self) -> frozenset[int]:
        """Ports currently held."""
        return frozenset(self._held)

    @property
    def held_count(self) -> int:
        """How many ports are held (without copying them, unlike `ports`)."""
        return len(self._held)

    def bind(self, protocol_factory: ProtocolFactory) -> tuple[int, Listener] | None:
        """Bind the lowest free port >= range_start and start accepting on it.

        Args:
            protocol_factory: builds one protocol per accepted connection.

        Returns:
            (port, listener), or None when no port up to 65535 can be bound (logged).
        """
        now = self._clock()
        if self._foreign and now >= self._next_retry:
            self._forget_foreign()
        for _attempt in range(2):  # the second pass retries ports others held
            for port in range(self._scan_from, 65536):
                if port in self._held or port in self._foreign:
                    self._advance(port)
                    continue
                try:
                    sock = bind_tcp(self._host, port)
                except OSError as exc:
                    if exc.errno in _PORT_TAKEN:
                        log.debug("port %d on %s unavailable: %s", port, self._host, exc)
                        self._foreign.add(port)
                        self._advance(port)
                        continue
                    log.error("cannot bind telnet ports on %s: %s", self._host, exc)
                    return None
                return port, self._hold(port, sock, protocol_factory)
            if not self._foreign:
                break
            self._forget_foreign()
        log.warning("no free telnet port in %d..65535 on %s", self._start, self._host)
        return None

    def _advance(self, port: int) -> None:
        # Ports below _scan_from are all taken (by us or, as far as we know, others).
        if port == self._scan_from:
            self._scan_from += 1

    def _forget_foreign(self) -> None:
        self._foreign.clear()
        self._next_retry = self._clock() + self._retry
        self._scan_from = self._start
        while self._scan_from in self._held:
            self._scan_from += 1

    def bind_port(
        self, port: int, protocol_factory: ProtocolFactory
    ) -> tuple[int, Listener] | None:
        """Bind exactly `port` if possible, else the lowest free one as `bind()` does.

        For consoles restored from the persist file: they keep their old port unless
        it is held (by us or another process) or lies outside range_start..65535.

        Returns:
            (port, listener), or None when no port can be bound at all.
        """
        if not self._start <= port <= 65535 or port in self._held:
            return self.bind(protocol_factory)
        try:
            sock = bind_tcp(self._host, port)
        except OSError as exc:
            log.debug("port %d on %s unavailable: %s", port, self._host, exc)
            if exc.errno in _PORT_TAKEN:
                self._foreign.add(port)
            return self.bind(protocol_factory)
        return port, self._hold(port, sock, protocol_factory)

    def _hold(self, port: int, sock: socket.socket, protocol_factory: ProtocolFactory) -> Listener:
        if self._poller is None and acceptpoll.available():
            self._poller = AcceptPoller(self._loop)
        listener = Listener(
            sock,
            protocol_factory,
            self._loop,
            backoff=self._backoff,
            keepalive=self._keepalive,
            poller=self._poller,
        )
        listener.start()
        self._held[port] = listener
        self._foreign.discard(port)
        if port == self._scan_from:
            while self._scan_from in self._held or self._scan_from in self._foreign:
                self._scan_from += 1
        log.debug("telnet port %s:%d bound", self._host, port)
        return listener

    def release(self, port: int) -> None:
        """Close the listener on `port`; unknown ports are ignored (idempotent)."""
        listener = self._held.pop(port, None)
        if listener is not None:
            self._scan_from = min(self._scan_from, port)
            listener.close()
            log.debug("telnet port %s:%d released", self._host, port)

    def close_all(self) -> None:
        """Release every port (at shutdown)."""
        for port in list(self._held):
            self.release(port)
        if self._poller is not None:
            self._poller.close()
            self._poller = None


# -- admin Unix socket ---------------------------------------------------------


class AdminSocketError(OSError):
    """The admin socket cannot be created safely (message says why)."""


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED of a Unix-socket peer: the process at connect() time."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The connecting process's pid/uid/gid (Linux SO_PEERCRED).

    Raises:
        OSError: not a connected Unix socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


def resolve_group(group: str) -> int:
    """Group name (or numeric id) -> gid.

    Raises:
        KeyError: no such group.
    """
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return grp.getgrgid(int(group)).gr_gid
        raise


def uid_in_group(uid: int, gid: int, group: str) -> bool:
    """True if a peer (uid, primary gid) belongs to `group`, supplementary included."""
    try:
        wanted = resolve_group(group)
    except KeyError:
        return False
    if gid == wanted:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return wanted in os.getgrouplist(user.pw_name, user.pw_gid)


def _prepare_socket_dir(directory: Path) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AdminSocketError(f"{directory} is not a directory")
    # Someone else's directory (e.g. a pre-created /tmp/vspcd-UID) could swap our
    # socket for theirs; refuse rather than serve the admin channel from it.
    if info.st_uid not in (os.geteuid(), 0):
        raise AdminSocketError(f"{directory} is owned by uid {info.st_uid}, not by us")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise AdminSocketError(f"{directory} is world-writable")


def _remove_stale_socket(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AdminSocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale admin socket %s", path)
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise AdminSocketError(f"{path}: another daemon is listening there")


class AdminSocket:
    """The admin Unix socket's listener; `close()` also removes the socket file."""

    def __init__(self, listener: Listener, path: Path, inode: int) -> None:
        self.listener = listener
        self.path = path
        self._inode = inode

    def close(self) -> None:
        """Stop accepting and unlink the socket file if it is still ours (idempotent)."""
        self.listener.close()
        try:
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def wait_closed(self) -> None:
        await self.listener.wait_closed()


async def start_admin_socket(
    path: Path,
    protocol_factory: ProtocolFactory,
    *,
    mode: int = 0o660,
    group: str | None = None,
    backoff: float = 0.5,
) -> AdminSocket:
    """Serve the admin protocol on a Unix socket at `path`.

    Creates the parent directory if needed, removes a stale socket left by a dead
    daemon, and applies `mode` and `group` before listening, so there is no moment
    when the socket is reachable with looser permissions.  Accepting uses the same
    `Listener` as the proxy port, so running out of descriptors backs off with one
    log line instead of asyncio's log line per attempt (issue #7, finding 4).

    Raises:
        AdminSocketError: unsafe directory, non-socket in the way, or a live daemon.
        KeyError: `group` does not exist.
        OSError: anything else the filesystem says.
    """
    gid = resolve_group(group) if group is not None else -1
    sock, inode = _bind_unix(path, mode, gid)
    try:
        listener = Listener(
            sock,
            protocol_factory,
            asyncio.get_running_loop(),
            backoff=backoff,
            keepalive=False,  # not a TCP socket
        )
        listener.start()
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)  # noqa: ASYNC240  (startup, error path)
        raise
    log.info("admin socket %s (mode %04o%s)", path, mode, f", group {group}" if group else "")
    return AdminSocket(listener, path, inode)


def _bind_unix(path: Path, mode: int, gid: int) -> tuple[socket.socket, int]:
    _prepare_socket_dir(path.parent)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        old_umask = os.umask(0o177)  # the socket file is born 0600 ...
        try:
            sock.bind(str(path))
            bound = True
        finally:
            os.umask(old_umask)
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)  # ... and only widened once group and mode are right
        inode = path.lstat().st_ino
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)
        raise
    return sock, inode
