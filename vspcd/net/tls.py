"""TLS on the proxy port: the server context, and telling TLS from plain telnet.

ESXi opens a `telnets://` connection with a TLS ClientHello, whose first byte is the
handshake record type 0x16 (RFC 8446 §5.1), and a `telnet://` one with
`IAC WILL AUTHENTICATION` (0xff, docs/protocol.md §3.1), so one peeked byte tells
them apart.  `peek_now` reads a byte that has already arrived; `sniff` waits for
one, through `loop.add_reader` on the accepted socket, however late it comes, up to
a deadline (the identification timeout): no fixed short guess, so a ClientHello
delayed by a busy host or network is still TLS.  Silence until the deadline is
`Kind.SILENT` (ESXi always speaks first).

A TLS connection then waits in `client_hello` until its whole ClientHello is in the
socket's receive queue (peeked, never read: the TLS library reads it), at most
`HELLO_GRACE` seconds after its first byte.  Only then does it ask for a handshake
slot (vspcd/net/admission.py `Slots.wait_acquire`), so a peer that stalls or drips
its ClientHello never holds one: it costs one waiting task and the bytes the kernel
already holds, and goes at the grace (docs/security.md, "Before identification").
ESXi sends its ClientHello at once, in one flight.  On Linux the wait sets
`SO_RCVLOWAT` to the bytes still missing, so a half-arrived ClientHello does not wake
the loop per segment; elsewhere it looks again every `_POLL` seconds.

Only public asyncio API is used, so all this works on every loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from enum import Enum

__all__ = [
    "HELLO_GRACE",
    "MAX_HELLO",
    "TLS_HANDSHAKE_RECORD",
    "Hello",
    "Kind",
    "client_hello",
    "hello_size",
    "make_ssl_context",
    "peek_now",
    "sniff",
]

TLS_HANDSHAKE_RECORD = 0x16  # RFC 8446 §5.1 ContentType handshake(22)
_CLIENT_HELLO = 1  # RFC 8446 §4 HandshakeType client_hello(1)
_MAX_RECORD = 1 << 14  # RFC 8446 §5.1 TLSPlaintext.length limit
# Seconds from a TLS peer's first byte by which its whole ClientHello must be here.
HELLO_GRACE = 5.0
# Bytes a ClientHello may take (ESXi's is well under 2 KiB; post-quantum key shares
# add about 1.2 KiB): a bigger one is dropped rather than waited for.
MAX_HELLO = 1 << 16
# Bytes peeked first: all of a usual ClientHello at once (one system call, no wait).
_FIRST_PEEK = 4096
_POLL = 0.1  # seconds between looks where SO_RCVLOWAT is not to be had
_TCP_CLOSE_WAIT = 8  # Linux include/net/tcp_states.h: the peer sent its FIN


class Kind(Enum):
    """What an accepted connection's first byte says it is."""

    PLAIN = "plain"
    TLS = "tls"
    GONE = "gone"  # closed or reset before saying anything
    SILENT = "silent"  # said nothing before the deadline


class Hello(Enum):
    """How waiting for a TLS peer's ClientHello ended (`client_hello`)."""

    READY = "ready"  # all here, or not a ClientHello at all: the TLS library decides
    GONE = "gone"  # closed or reset before it was complete
    SLOW = "slow"  # not complete in time
    TOO_BIG = "too big"  # announces more than MAX_HELLO bytes


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


def _kind_of(first: bytes) -> Kind:
    if not first:
        return Kind.GONE
    return Kind.TLS if first[0] == TLS_HANDSHAKE_RECORD else Kind.PLAIN


def peek_now(conn: socket.socket) -> Kind | None:
    """Plain, TLS or gone from a first byte already received; None: not there yet.

    On a TLS-enabled port this sorts a connection at once when its first segment
    arrived before the accept ran (ESXi speaks first; accepts run in batches); the
    others wait in `sniff`.

    Raises:
        OSError: as `recv` does (e.g. a reset).
    """
    try:
        first = conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    return _kind_of(first)


async def sniff(loop: asyncio.AbstractEventLoop, conn: socket.socket, wait: float) -> Kind:
    """Wait up to `wait` seconds for `conn`'s first byte and say what it is.

    Silence for `wait` seconds is `Kind.SILENT`.  The reader is removed before
    returning, so asyncio's transport can take the descriptor over.
    """
    try:
        async with asyncio.timeout(wait):
            while True:
                await _readable(loop, conn)
                try:
                    first = conn.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                break
    except TimeoutError:
        return Kind.SILENT
    except OSError:
        return Kind.GONE
    return _kind_of(first)


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        # asyncio's transport registers its own reader on this fd next
        loop.remove_reader(fd)


def hello_size(head: bytes) -> int:
    """Bytes a ClientHello starting with `head` takes, as far as `head` tells.

    Parses TLS records (RFC 8446 §5.1) carrying the handshake message (§4): more
    than `len(head)` means "wait for that many" (a record header, or the records up
    to the message's end); at most `len(head)` means all of it is here; 0 means it is
    not a well-formed ClientHello, which the TLS library is left to refuse.
    """
    pos = 0
    need = 0  # the handshake message's bytes, header included, once known
    have = 0
    while True:
        if len(head) < pos + 5:
            return pos + 5
        length = int.from_bytes(head[pos + 3 : pos + 5], "big")
        if head[pos] != TLS_HANDSHAKE_RECORD or not 0 < length <= _MAX_RECORD:
            return 0
        if not need:
            if length < 4:
                return 0
            if len(head) < pos + 9:
                return pos + 9
            if head[pos + 5] != _CLIENT_HELLO:
                return 0
            need = 4 + int.from_bytes(head[pos + 6 : pos + 9], "big")
        have += length
        pos += 5 + length
        if have >= need:
            return pos


async def client_hello(loop: asyncio.AbstractEventLoop, conn: socket.socket, wait: float) -> Hello:
    """Wait up to `wait` seconds until `conn`'s whole ClientHello has arrived.

    Nothing is read: the bytes stay queued for the TLS library.  Bounded: one peek of
    at most `MAX_HELLO` bytes per wake-up, and (Linux) no wake-up before the bytes
    still missing are there or the peer has gone.
    """
    deadline = loop.time() + wait
    target = _FIRST_PEEK
    seen = -1
    lowat = 1
    try:
        while True:
            try:
                head = conn.recv(target, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                head = None
            except OSError:
                return Hello.GONE
            if head is not None:
                if not head:
                    return Hello.GONE
                size = hello_size(head)
                if size <= len(head):
                    return Hello.READY
                if size > MAX_HELLO:
                    return Hello.TOO_BIG
                if len(head) == target:
                    target = size  # the peek was full: more may be queued already
                    continue
                if len(head) == seen and _peer_closed(conn):
                    return Hello.GONE  # a FIN after part of it: readable, no more to come
                grew = len(head) > seen
                seen, target = len(head), size
                if lowat != size:
                    lowat = _set_lowat(conn, size, lowat)
            else:
                grew = True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Hello.SLOW
            async with asyncio.timeout(remaining):
                if lowat > 1 and grew:
                    await _readable(loop, conn)
                else:
                    await asyncio.sleep(_POLL)
    except TimeoutError:
        return Hello.SLOW
    finally:
        if lowat != 1:
            _set_lowat(conn, 1, lowat)  # asyncio's transport reads byte by byte again


def _set_lowat(conn: socket.socket, value: int, current: int) -> int:
    # Readable only once `value` bytes are queued (or the peer closed): Linux honours
    # SO_RCVLOWAT in poll/epoll for TCP.  Elsewhere the caller polls instead.
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
    except (OSError, AttributeError):
        return 1 if value == 1 else current
    return value


def _peer_closed(conn: socket.socket) -> bool:
    # Linux: TCP_INFO's first byte is the connection state.
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return False
    try:
        state = struct.unpack_from("B", conn.getsockopt(socket.IPPROTO_TCP, tcp_info, 8))[0]
    except OSError:
        return False
    return bool(state == _TCP_CLOSE_WAIT)
