"""TLS on the proxy port: the server context, and telling TLS from plain telnet.

ESXi opens a `telnets://` connection with a TLS ClientHello, whose first byte is the
handshake record type 0x16 (RFC 8446 §5.1), and a `telnet://` one with
`IAC WILL AUTHENTICATION` (0xff, docs/protocol.md §3.1), so one peeked byte tells
them apart.  `peek_now` reads a byte that has already arrived; `sniff` waits for
one, through `loop.add_reader` on the accepted socket, however late it comes, up to
a deadline (the identification timeout): no fixed short guess, so a ClientHello
delayed by a busy host or network is still TLS.  Silence until the deadline is
`Kind.SILENT` (ESXi always speaks first).  Only public asyncio API is used, so both
work on every loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from enum import Enum

__all__ = ["TLS_HANDSHAKE_RECORD", "Kind", "make_ssl_context", "peek_now", "sniff"]

TLS_HANDSHAKE_RECORD = 0x16  # RFC 8446 §5.1 ContentType handshake(22)


class Kind(Enum):
    """What an accepted connection's first byte says it is."""

    PLAIN = "plain"
    TLS = "tls"
    GONE = "gone"  # closed or reset before saying anything
    SILENT = "silent"  # said nothing before the deadline


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
