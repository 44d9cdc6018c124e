"""Per-console telnet ports: `PortBinder` binds them synchronously, lowest free first.

Each console gets its own TCP port for operators (docs/operations.md).  The default
range 50000+ overlaps Linux's ephemeral ports, so a port another process holds (or
an outgoing connection's local port) is skipped and remembered for a while
(`ephemeral_overlap` lets the daemon warn about the overlap at start-up).  Each held
port is a `Listener` (vspcd/net/accept.py): one listening socket and one reader
registration with the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vspc.vspcd.net.accept import Listener, ProtocolFactory
from vspc.vspcd.net.sockopts import bind_tcp

__all__ = ["EPHEMERAL_RANGE_FILE", "PortBinder", "ephemeral_overlap"]

log = logging.getLogger(__name__)

# bind(2) errors that are about this one port; anything else (EADDRNOTAVAIL,
# EMFILE, ...) would fail for every port, so PortBinder stops scanning.
_PORT_TAKEN = frozenset({errno.EADDRINUSE, errno.EACCES})


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
        # Every port in [range_start, _scan_from) is held by us or was found held by
        # another process, so a scan for the lowest free port starts here: without it
        # each bind walked all held ports, making N consoles O(N^2)
        # (bench/daemon_bench.py connect_ports).  Ports others hold are remembered in
        # `_foreign` and not retried on every bind: with -r inside the ephemeral range
        # and thousands of outgoing connections, retrying them made every console's
        # bind slow.  They are forgotten every `retry` seconds, when one scan from the
        # start finds the ones freed meanwhile.
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
        listener = Listener(
            sock, protocol_factory, self._loop, backoff=self._backoff, keepalive=self._keepalive
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
