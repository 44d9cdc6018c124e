"""One client output channel: the slow-reader policy, drop accounting and the notice line.

A console's output must never wait for a client (docs/protocol.md §4.4 duty 2), so a
client whose transport buffer passes its limit loses output instead: the bytes are
counted, and once the transport drains the client gets one line
``\\r\\n[vspcd: N bytes of output dropped: client too slow]\\r\\n``
and the daemon log one warning.  The telnet client link and the admin attach channel
both use this object, so the policy, the count and the line exist once.

The shape follows uvicorn's `FlowControl`: a small object bound to one transport,
driven by the protocol's `pause_writing`/`resume_writing` callbacks, with no I/O of
its own beyond `transport.write`.

Each client may queue up to `--client-queue` bytes, so many clients that do not read
would multiply it: `OutputBudget` (one per process, `BUDGET`) adds up what every
client's transport holds (`--output-budget`, docs/security.md "Resource bounds").
Past the budget the clients with the most unread output (those over their own limit
first) are told so and disconnected, until the total is back under three quarters
of it; a console's output still never waits.  When the total falls back to nothing
after a burst, `on_drained` lets the service return the freed heap to the system
(vspcd/service/heap.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable

from vspc.vspcd.hub.ratelog import BurstLog
from vspc.vspcd.net import counters

__all__ = ["BUDGET", "ClientOutput", "OutputBudget", "notice_line"]

log = logging.getLogger(__name__)

_EVICTED = "disconnected: too much unread output (the daemon's output budget)"
# The budget's default (--output-budget); the service sets the configured one.
OUTPUT_BUDGET = 256 << 20
# A burst worth a heap trim once it has drained (on_drained).
_TRIM_AFTER = 16 << 20


def notice_line(text: str) -> bytes:
    """The one form of a daemon message inside a console stream."""
    return f"\r\n[vspcd: {text}]\r\n".encode()


class OutputBudget:
    """Console output queued for all clients together, bounded by `limit` bytes.

    Each `ClientOutput` reports what its transport holds after each write
    (`get_write_buffer_size()`, O(1)); the sum may lag for a client that drained
    since, so before dropping anyone every member is looked at again.
    """

    __slots__ = ("limit", "total", "peak", "evicted", "on_drained", "_members", "_log", "_burst")

    def __init__(self, limit: int = OUTPUT_BUDGET) -> None:
        self.limit = limit
        self.total = 0  # bytes queued, as last seen per client
        self.peak = 0  # the highest total since it was last back at zero
        self.evicted = 0  # clients dropped over the budget (tests, metrics)
        self.on_drained: Callable[[], None] | None = None
        self._members: weakref.WeakKeyDictionary[ClientOutput, int] = weakref.WeakKeyDictionary()
        self._log: BurstLog | None = None
        self._burst = False  # a big total or an eviction since the last drain

    def update(self, member: ClientOutput, queued: int) -> None:
        """`member`'s transport holds `queued` bytes now."""
        old = self._members.get(member, 0)
        if queued:
            self._members[member] = queued
        else:
            self._members.pop(member, None)
        self.total += queued - old
        if self.total > self.peak:
            self.peak = self.total
            if self.total >= _TRIM_AFTER:
                self._burst = True
            if self.total > self.limit:
                self._enforce()
        elif not self.total:
            self._drained()

    def leave(self, member: ClientOutput) -> None:
        self.update(member, 0)

    def __contains__(self, member: ClientOutput) -> bool:
        return member in self._members

    def _refresh(self) -> None:
        total = 0
        for member in list(self._members):
            queued = member.queued()
            if queued:
                self._members[member] = queued
                total += queued
            else:
                del self._members[member]
        self.total = total

    def _enforce(self) -> None:
        self._refresh()
        if self.total <= self.limit:
            self.peak = max(self.total, 0)
            return
        target = self.limit * 3 // 4
        # Those over their own limit (not reading) first, the most unread first.
        worst = sorted(self._members.items(), key=lambda m: (m[0].paused, m[1]), reverse=True)
        for member, queued in worst:
            if self.total <= target:
                break
            self._report(member, queued)
            member.evict()
            self._members.pop(member, None)
            self.total -= queued
            self.evicted += 1
        self._burst = True
        self.peak = self.total

    def _report(self, member: ClientOutput, queued: int) -> None:
        if self._log is None:
            loop = asyncio.get_running_loop()
            self._log = BurstLog(
                log,
                "clients disconnected over the output budget",
                clock=loop.time,
                call_later=loop.call_later,
                level=logging.WARNING,
                surplus_level=None,
                inert=True,
            )
        self._log.log(
            "%s: disconnected with %d bytes of output unread (all clients together "
            "over --output-budget %d)",
            member.who,
            queued,
            self.limit,
        )

    def _drained(self) -> None:
        self.peak = 0
        burst, self._burst = self._burst, False
        if burst and self.on_drained is not None:
            self.on_drained()


BUDGET = OutputBudget()


class ClientOutput:
    """Console output to one client, dropped (and counted) while the client lags.

    Args:
        who: how the log names this client (e.g. "client 127.0.0.1:4242").
        budget: the output budget it counts against (default: the process's).
    """

    __slots__ = (
        "_transport",
        "_paused",
        "_budget",
        "dropped",
        "total_dropped",
        "who",
        "__weakref__",
    )

    def __init__(self, who: str, budget: OutputBudget | None = None) -> None:
        self.who = who
        self._transport: asyncio.WriteTransport | None = None
        self._paused = False
        self._budget = BUDGET if budget is None else budget
        self.dropped = 0  # since the last notice
        self.total_dropped = 0  # over the connection's life (metrics, show)

    def bind(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def queued(self) -> int:
        """Bytes the transport holds now (0 once it is closing and emptied)."""
        transport = self._transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size()

    def release(self) -> None:
        """The connection is gone: it no longer counts against the budget."""
        self._budget.leave(self)
        self._transport = None

    def evict(self) -> None:
        """Dropped over the output budget: a notice if the socket takes it now, then
        the connection is aborted, so what it has not read is freed at once (a client
        that does not read would never see a notice queued behind it)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError, TypeError, ValueError):
            sock.send(notice_line(_EVICTED), socket.MSG_DONTWAIT)
        transport.abort()

    @property
    def paused(self) -> bool:
        """True while the transport is over its high-water mark."""
        return self._paused

    def _usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def write(self, data: bytes, size: int | None = None) -> None:
        """Send console output, or drop it while paused.

        `size` is what the drop count records (the console bytes; `data` may be their
        telnet-escaped form), default `len(data)`.
        """
        if not self._usable():
            return
        if self._paused:
            lost = len(data) if size is None else size
            self.dropped += lost
            self.total_dropped += lost
            counters.OUTPUT.dropped += lost  # metrics: one increment, only while paused
            return
        transport = self._transport
        assert transport is not None
        transport.write(data)
        queued = transport.get_write_buffer_size()
        if queued or self in self._budget:
            self._budget.update(self, queued)

    def notice(self, text: str) -> None:
        """Write one `[vspcd: ...]` line, even while paused (it is small and rare)."""
        if self._usable():
            assert self._transport is not None
            self._transport.write(notice_line(text))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        """Drained: accept output again, and report what was lost, once."""
        self._paused = False
        self._budget.update(self, self.queued())
        if self.dropped:
            log.warning("%s: dropped %d bytes (slow reader)", self.who, self.dropped)
            self.notice(f"{self.dropped} bytes of output dropped: client too slow")
            self.dropped = 0
