"""What both ends of an option-232 connection share: the ordered output, `Notice`, misuse.

Boundary: the common base of `common.session.ProxySession` (the proxy's side) and
`common.esxi.EsxiSession` (ESXi's side, for tests and the simulator).  Sans-IO: no
sockets, no clock, no logging.  Both sessions share one `Notice`, one output buffer and
the send helpers through it.

Spec: docs/protocol.md §1 rule 4 and §4.4 duty 1.  Each side keeps one ordered output
buffer.  Everything it must send goes into that buffer in the order the protocol
needs: negotiation replies the telnet codec queued, option-232 commands the session
writes itself, and escaped console data.  A GOAHEAD therefore follows every client
byte queued before it.  The buffer also keeps replies in request order whatever TCP's
segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from vspc.common.telnet import Cmd, TelnetCodec, command, escape

__all__ = ["LocalProtocolError", "Notice", "TelnetEndpoint"]


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log line: a stray, out-of-turn or malformed message."""

    message: str


class LocalProtocolError(Exception):
    """The caller misused the session API (e.g. GOAHEAD without a pending BEGIN)."""


class TelnetEndpoint:
    """One side's ordered output over its `TelnetCodec`; sessions extend it.

    Args:
        telnet: the connection's codec, built by the subclass with its option policy.
    """

    # One endpoint per connection: no `__dict__`.  Subclasses
    # that declare no `__slots__` of their own (EsxiSession) still get one.
    __slots__ = ("_telnet", "_out")

    def __init__(self, telnet: TelnetCodec) -> None:
        self._telnet = telnet
        # Built on demand and dropped when drained: an idle connection holds none.
        self._out: bytearray | None = None

    def send_data(self, payload: bytes) -> None:
        """Queue console bytes for the peer (0xff doubled)."""
        self._append(escape(payload))

    def send_break(self) -> None:
        """Queue a telnet BREAK, `IAC BRK` (RFC 854), in order after everything
        queued before it (a serial break on the VM's port, docs/esxi.md)."""
        self._queue(command(Cmd.BRK))

    def data_to_send(self) -> bytes:
        """Drain everything queued for the peer, in order."""
        replies = self._telnet.data_to_send()  # `_sync()`, inline: once per read
        out, self._out = self._out, None
        if out is None:
            return replies
        out += replies
        return bytes(out)

    def _append(self, data: bytes) -> None:
        if not data:
            return
        if self._out is None:
            self._out = bytearray(data)
        else:
            self._out += data

    def _sync(self) -> None:
        """Move the codec's queued negotiation replies into the output buffer."""
        self._append(self._telnet.data_to_send())

    def _queue(self, frame: bytes) -> None:
        """Queue one frame of ours after the negotiation replies queued before it.

        The codec queues its replies while `iter_events()` parses.  Whatever it holds
        now answers requests that came before the one we answer, so it goes first.
        The peer then hears every reply in request order whatever TCP's segmentation.
        """
        self._append(self._telnet.data_to_send())
        self._append(frame)
