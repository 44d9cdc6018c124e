"""The listening side of the daemon: the ESXi proxy port, and where the rest lives.

`start_proxy_listener` serves plain telnet and TLS on one port (vspcd/net/tls.py
tells them apart by the first byte, docs/protocol.md §3.1).  TCP keepalive is set on
the listening socket, which Linux copies to every accepted socket, so a crashed
host's half-open connection is noticed (docs/protocol.md §4.6, "Enable TCP keepalive
on VM sockets").

The pieces, each usable on its own and all on public asyncio API (the stdlib loop
and uvloop alike):

* vspcd/net/accept.py: `Listener`, the accept loop with admission and the EMFILE
  back-off, shared by every port;
* vspcd/net/sockopts.py: `bind_tcp` and the keepalive timing;
* vspcd/net/tls.py: the server TLS context and first-byte sniffing;
* vspcd/net/ports.py: `PortBinder`, the per-console telnet ports;
* vspcd/net/unixsock.py: the admin Unix socket;
* vspcd/net/peercred.py: who is on the admin socket (SO_PEERCRED, groups).

The names they export are re-exported here, so callers name one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from vspc.vspcd.net.accept import Listener, ProtocolFactory, SlotHolder, address_text
from vspc.vspcd.net.admission import AllowList, Slots
from vspc.vspcd.net.peercred import PeerCredentials, peer_credentials, resolve_group, uid_in_group
from vspc.vspcd.net.ports import EPHEMERAL_RANGE_FILE, PortBinder, ephemeral_overlap
from vspc.vspcd.net.sockopts import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    bind_tcp,
    has_keepalive,
    set_keepalive,
)
from vspc.vspcd.net.tls import TLS_HANDSHAKE_RECORD, make_ssl_context
from vspc.vspcd.net.unixsock import AdminSocket, AdminSocketError, start_admin_socket

__all__ = [
    "EPHEMERAL_RANGE_FILE",
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "PROXY_BACKLOG",
    "TLS_HANDSHAKE_RECORD",
    "AdminSocket",
    "AdminSocketError",
    "Listener",
    "PeerCredentials",
    "PortBinder",
    "ProtocolFactory",
    "SlotHolder",
    "address_text",
    "bind_tcp",
    "ephemeral_overlap",
    "has_keepalive",
    "make_ssl_context",
    "peer_credentials",
    "resolve_group",
    "set_keepalive",
    "start_admin_socket",
    "start_proxy_listener",
    "uid_in_group",
]

log = logging.getLogger(__name__)

# The proxy port's listen backlog: one ESXi host may reconnect 1,024 VMs at once and
# a restart reconnects every host; Linux caps it at net.core.somaxconn.
PROXY_BACKLOG = 65535


async def start_proxy_listener(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    protocol_factory: ProtocolFactory,
    *,
    peek_timeout: float | None = None,
    handshake_timeout: float = 60.0,
    backoff: float = 0.5,
    allow: AllowList | None = None,
    unidentified: Slots | None = None,
    handshakes: Slots | None = None,
    reuse_port: bool = False,
) -> Listener:
    """Listen for ESXi hosts on (host, port), plain telnet and TLS on the same port.

    With an `ssl_context`, each accepted socket's first byte is peeked: 0x16 starts
    TLS, anything else is plain, silence until the identification deadline closes
    it.  Without one nothing is peeked.  Accepted sockets get TCP keepalive.  The
    listen backlog asks for `PROXY_BACKLOG` (the kernel caps it at
    `net.core.somaxconn`): when every unidentified slot is busy, connections wait
    there instead of being refused (docs/operations.md).

    Args:
        host: address to bind ("0.0.0.0", "::", "127.0.0.1", ...).
        port: TCP port, 0 for any free one (see `Listener.port`).
        ssl_context: from `make_ssl_context`, or None for plain only.
        protocol_factory: builds one protocol (e.g. `lambda: VmLink(hub)`) per
            connection.
        peek_timeout: seconds to wait for a first byte (None: until the
            identification deadline, or `handshake_timeout` without slots).
        handshake_timeout: seconds a TLS handshake may take.
        backoff: seconds accepting pauses after EMFILE/ENFILE and similar errors.
        allow: peers allowed to connect (None: everyone); see `Listener`.
        unidentified: slots for connections not yet identified (None: no cap).
        handshakes: slots for TLS handshakes in progress (None: no cap).
        reuse_port: SO_REUSEPORT, for several nodes on one host (docs/cluster.md).

    Raises:
        OSError: the address cannot be bound.
    """
    sock = bind_tcp(host, port, backlog=PROXY_BACKLOG, reuse_port=reuse_port)
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
