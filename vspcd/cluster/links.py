"""asyncio adapters of the inter-node link (codec: common/peerlink.py).

`PeerLink` is plumbing only: bytes in -> codec -> messages to the node's `on_message`;
`send(message)` -> codec -> transport.  Whoever dialed, either end may open channels
(the dialer numbers them odd, the listener even, so they never collide).

`RemoteVm` is the hub's `VmChannel` for an ESXi connection that another node accepted
and relays here: every call the hub makes becomes one message back to that node, which
carries it out on the real socket (docs/cluster.md, "Cross-node vMotion").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from typing import Protocol, cast

from vspc.common.peerlink import (
    NONCE,
    Message,
    PeerLinkCodec,
    RemoteProtocolError,
    Side,
    VmClose,
    VmGoahead,
    VmNotNow,
    VmPeerOk,
    VmProbe,
    VmSend,
)
from vspc.vspcd.hub.ratelog import Throttles

log = logging.getLogger(__name__)

# Strangers on the inter-node port repeat at will: one line per period and kind, plus
# a count (vspcd/hub/ratelog.py).  One table per event loop (a daemon has one).
_WARNINGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Throttles] = (
    weakref.WeakKeyDictionary()
)


def warnings() -> Throttles:
    """This loop's aggregated inter-node warnings (vspcd/cluster/node.py uses them too)."""
    loop = asyncio.get_running_loop()
    table = _WARNINGS.get(loop)
    if table is None:
        table = _WARNINGS[loop] = Throttles(log, clock=loop.time, call_later=loop.call_later)
    return table


__all__ = ["LinkHandler", "PeerLink", "RemoteVm"]

AUTH_TIMEOUT = 5.0  # seconds a peer has to finish the handshake
HIGH_WATER = 4 << 20


class LinkHandler(Protocol):
    def on_message(self, link: PeerLink, message: Message) -> None: ...
    def on_link_lost(self, link: PeerLink) -> None: ...


class PeerLink(asyncio.Protocol):
    """One authenticated inter-node connection."""

    def __init__(
        self,
        handler: LinkHandler,
        side: Side,
        node: str,
        secret: bytes,
        *,
        refuse: bool = False,
        auth_timeout: float = AUTH_TIMEOUT,
    ) -> None:
        self._handler = handler
        # Until the handshake is done the codec accepts only frames of a few KiB
        # (common/peerlink.py HANDSHAKE_FRAME), and this timer closes a peer that
        # does not finish it.
        self._auth_timeout = auth_timeout
        self._refuse = refuse  # too many handshakes pending: close at once
        self._codec = PeerLinkCodec(side, node, secret, secrets.token_bytes(NONCE))
        self._next_channel = 1 if side is Side.DIALER else 2
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer = "?"
        self.closed = False

    @property
    def peer_node(self) -> str | None:
        return self._codec.peer_node if self._codec.authenticated else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=HIGH_WATER)
        address = transport.get_extra_info("peername")
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"
        if self._refuse:
            warnings().log(
                "inter-node links refused: too many handshakes pending",
                "inter-node link %s refused: too many handshakes pending",
                self.peer,
            )
            self._transport.abort()
            return
        self._write(self._codec.data_to_send())
        self._timer = asyncio.get_running_loop().call_later(self._auth_timeout, self._no_auth)

    def _no_auth(self) -> None:
        if not self._codec.authenticated:
            # A stranger: drop it at once, nothing it sent is kept.
            warnings().log(
                "inter-node links without a handshake",
                "inter-node link %s: no handshake within %g s",
                self.peer,
                self._auth_timeout,
            )
            self.abort()

    def data_received(self, data: bytes) -> None:
        was_open = self._codec.authenticated
        try:
            messages = self._codec.receive_data(data)
        except RemoteProtocolError as exc:
            if was_open:
                log.warning("inter-node link %s closed: %s", self.peer, exc)
                self.close()
            else:
                # A stranger: drop it at once, nothing it sent is kept.
                warnings().log(
                    "inter-node links refused", "inter-node link %s refused: %s", self.peer, exc
                )
                self.abort()
            return
        self._write(self._codec.data_to_send())
        if self._codec.authenticated and not self.ready.done():
            if self._timer is not None:
                self._timer.cancel()
            log.info("inter-node link with %s (%s) up", self._codec.peer_node, self.peer)
            self.ready.set_result(None)
        for message in messages:
            try:
                self._handler.on_message(self, message)
            except Exception:  # a bug costs this link, never the daemon
                log.exception("inter-node link %s: failed on %s", self.peer, type(message))
                self.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"inter-node link {self.peer} closed"))
            self.ready.exception()  # retrieved: nobody may be waiting
        self._handler.on_link_lost(self)

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def send(self, message: Message) -> None:
        if not self.closed and self._codec.authenticated:
            self._write(self._codec.send(message))

    def new_channel(self) -> int:
        channel = self._next_channel
        self._next_channel += 2
        return channel

    def write_backlog(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class RemoteVm:
    """The owner's `VmChannel` for an ESXi connection another node relays to it."""

    def __init__(self, link: PeerLink, channel: int, peer: str) -> None:
        self._link = link
        self.channel = channel
        self.peer = peer  # the ESXi host's own address: takeover rules compare hosts
        self.closed = False

    def send_console(self, data: bytes) -> None:
        self._link.send(VmSend(self.channel, data))

    def goahead(self, sequence: bytes, secret: bytes) -> None:
        self._link.send(VmGoahead(self.channel, sequence, secret))

    def notnow(self, sequence: bytes) -> None:
        self._link.send(VmNotNow(self.channel, sequence))

    def peer_ok(self, sequence: bytes) -> None:
        self._link.send(VmPeerOk(self.channel, sequence))

    def write_backlog(self) -> int:
        # What waits for the link; the relaying node's own socket buffer is not seen
        # here (docs/cluster.md: the NOTNOW backlog ground is approximate).
        return self._link.write_backlog()

    def probe(self) -> None:
        self._link.send(VmProbe(self.channel))

    def send_break(self) -> bool:
        return False  # the peer link has no message for it (docs/esxi.md, "Serial break")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._link.send(VmClose(self.channel))
