"""Socket set-up shared by every TCP listener: binding, and TCP keepalive timing.

Keepalive is enabled on every accepted socket so a crashed host's half-open
connection is noticed (docs/protocol.md §4.6, "Enable TCP keepalive on VM sockets").
Plain `socket` calls, no asyncio.
"""

from __future__ import annotations

import socket

__all__ = [
    "KEEPALIVE_COUNT",
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "bind_tcp",
    "has_keepalive",
    "set_keepalive",
]

# Keepalive on accepted sockets: first probe after a minute idle, then 5 probes 10 s
# apart, so a dead peer is dropped within about 110 s.  ESXi's own side uses 300 s +
# 5 probes (docs/protocol.md §4.6, D-KA); ours only has to be no slower.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 5

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
