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
"""

from __future__ import annotations

import asyncio
import logging

from vspc.vspcd.net import counters

__all__ = ["ClientOutput", "notice_line"]

log = logging.getLogger(__name__)


def notice_line(text: str) -> bytes:
    """The one form of a daemon message inside a console stream."""
    return f"\r\n[vspcd: {text}]\r\n".encode()


class ClientOutput:
    """Console output to one client, dropped (and counted) while the client lags.

    Args:
        who: how the log names this client (e.g. "client 127.0.0.1:4242").
    """

    __slots__ = ("_transport", "_paused", "dropped", "total_dropped", "who")

    def __init__(self, who: str) -> None:
        self.who = who
        self._transport: asyncio.WriteTransport | None = None
        self._paused = False
        self.dropped = 0  # since the last notice
        self.total_dropped = 0  # over the connection's life (metrics, show)

    def bind(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

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
        assert self._transport is not None
        self._transport.write(data)

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
        if self.dropped:
            log.warning("%s: dropped %d bytes (slow reader)", self.who, self.dropped)
            self.notice(f"{self.dropped} bytes of output dropped: client too slow")
            self.dropped = 0
