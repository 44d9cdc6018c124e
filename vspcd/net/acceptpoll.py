"""One event-loop registration for every console's listening port (issue #12 item 3).

Each `loop.add_reader` costs ~360 bytes in the process: asyncio's `Handle`, a copy
of the context, the selector's `SelectorKey` and its data tuple, and a bound method.
With a telnet port per console that was ~9 % of an idle console's memory
(docs/benchmarks.md, "Memory per idle console").  `AcceptPoller` registers the
per-console listening sockets in an epoll set of its own instead, and that one
epoll descriptor once with the loop: when it is readable, the listeners whose
sockets have connections waiting are told (`Listener.accept_ready`).  The kernel
keeps the per-socket state; the process keeps one dict entry per port (the listener
itself is the value: a bound method per port would cost 64 bytes again).

Level-triggered, like asyncio's readers: a listener that leaves connections in its
backlog (its accept batch was full, or it backs off) is reported again on the next
loop iteration, or not at all while it is unregistered.  Linux only (`select.epoll`);
`available()` says whether it can be used, and the listeners fall back to
`add_reader` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from typing import Protocol

__all__ = ["AcceptPoller", "AcceptTarget", "available"]

_BATCH = 64  # ready sockets taken per wake-up (the rest stay ready: level-triggered)


class AcceptTarget(Protocol):
    """What the poller wakes (vspcd/net/listeners.py `Listener`)."""

    def accept_ready(self) -> None:
        """Connections are waiting on this listener's socket: accept them."""


def available() -> bool:
    """True where the platform has epoll."""
    return hasattr(select, "epoll")


class AcceptPoller:
    """Many listening sockets behind one loop reader.

    Args:
        loop: the event loop the listeners run on.
        close_when_empty: give the epoll descriptor and the loop registration back
            whenever the last socket leaves (the lean VM transports' shared set,
            vspcd/net/leantransport.py, which has no owner to close it).
    """

    __slots__ = ("_loop", "_epoll", "_ready", "_watching", "_close_when_empty")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, close_when_empty: bool = False) -> None:
        self._loop = loop
        self._close_when_empty = close_when_empty
        self._epoll: select.epoll | None = None  # built with the first socket
        self._ready: dict[int, AcceptTarget] = {}
        self._watching = False

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, fd: int, target: AcceptTarget) -> None:
        """Call `target.accept_ready()` whenever `fd` has a connection waiting."""
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._ready[fd] = target
        if not self._watching:
            self._loop.add_reader(self._epoll.fileno(), self._wake)
            self._watching = True

    def remove(self, fd: int) -> None:
        """Stop watching `fd` (idempotent; call before closing the socket)."""
        if self._ready.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError):  # already closed: epoll forgot it
                self._epoll.unregister(fd)
            if self._close_when_empty and not self._ready:
                self.close()

    def close(self) -> None:
        """Drop every registration and the epoll descriptor (idempotent)."""
        self._ready.clear()
        if self._epoll is not None:
            if self._watching and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._watching = False
            self._epoll.close()
            self._epoll = None

    def _wake(self) -> None:
        if self._epoll is None:
            return
        for fd, _events in self._epoll.poll(0, _BATCH):
            target = self._ready.get(fd)  # None: removed by an earlier callback
            if target is not None:
                target.accept_ready()
