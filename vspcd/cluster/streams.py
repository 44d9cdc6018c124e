"""Admin sessions across nodes: the byte streams of the inter-node link's
`StreamOpen`/`StreamData`/`StreamClose` messages, both ends.

Spec: docs/cluster.md ("Any node answers"); used by vspcd/cluster/forward.py.

- On the operator's node, `BackToOperator` writes what the owner sends to the
  operator's spliced `AdminLink`, and `Feed` turns another node's `subscribe` session
  into event lines (tagged `node`) for a subscribed operator here.
- On the owner, `StreamTransport` is the asyncio transport of an `AdminLink` that
  runs for another node's operator (writes go back over the link), and
  `FromOperator` feeds it the operator's bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vspc.common.admin import encode_message
from vspc.common.peerlink import StreamClose, StreamData
from vspc.vspcd.cluster.links import PeerLink
from vspc.vspcd.faces.admin.link import AdminLink, Mode

if TYPE_CHECKING:
    from vspc.vspcd.cluster.node import ClusterNode

__all__ = ["BackToOperator", "Feed", "FromOperator", "StreamSink", "StreamTransport", "end_feed"]


class StreamSink:
    """One spliced admin stream's receiving end (vspcd/cluster/forward.py)."""

    def data(self, data: bytes) -> None:
        raise NotImplementedError

    def closed(self) -> None:
        raise NotImplementedError


class BackToOperator(StreamSink):
    """The asking node's end: the owner's bytes go to the operator's connection."""

    def __init__(self, link: AdminLink) -> None:
        self._link = link

    def data(self, data: bytes) -> None:
        self._link.splice_write(data)

    def closed(self) -> None:
        self._link.splice_close()


class StreamTransport(asyncio.Transport):
    """The owner's transport for a spliced session: writes go back over the link."""

    def __init__(
        self, node: ClusterNode, peer: PeerLink, channel: int, link: AdminLink, address: str
    ) -> None:
        super().__init__()
        self._node, self._peer, self._channel, self._link = node, peer, channel, link
        self._address = address
        self._closing = False
        self.lost = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self._address, 0) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._peer.send(StreamData(self._channel, bytes(data)))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._node.forget_stream(self._peer, self._channel)
        self._peer.send(StreamClose(self._channel))
        asyncio.get_running_loop().call_soon(self.connection_lost)

    def abort(self) -> None:
        self.close()

    def connection_lost(self) -> None:
        if not self.lost:
            self.lost = True
            self._link.connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return self._peer.write_backlog()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the inter-node link has its own

    def pause_reading(self) -> None:
        pass  # the operator's own node reads; nothing to pause here

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing


class FromOperator(StreamSink):
    """The owner's end: the operator's bytes go into the admin session."""

    def __init__(self, link: AdminLink, transport: StreamTransport) -> None:
        self._link = link
        self._transport = transport

    def data(self, data: bytes) -> None:
        self._link.data_received(data)

    def closed(self) -> None:
        self._transport._closing = True
        self._transport.connection_lost()


def end_feed(node: ClusterNode, peer: PeerLink, channel: int) -> None:
    node.forget_stream(peer, channel)
    peer.send(StreamClose(channel))


class Feed(StreamSink):
    """One other node's events for a subscribed operator here: the first line is the
    remote `subscribe` reply (its rows), the rest are event lines, tagged with
    `node` and pushed to the operator.  Ends itself once the operator unsubscribes
    or leaves (at the next event)."""

    def __init__(self, link: AdminLink, node: str, end: Callable[[], None]) -> None:
        self._link = link
        self.node = node
        self._end = end
        self._buf = bytearray()
        self._held: list[bytes] = []
        self._live = False
        self._stopped = False
        self.snapshot: asyncio.Future[list[dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )

    def data(self, data: bytes) -> None:
        self._buf += data
        while (newline := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:newline])
            del self._buf[: newline + 1]
            self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if not self.snapshot.done():
            rows = message.get("vms") if message.get("ok") else None
            rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            for row in rows:
                row["node"] = self.node
            self.snapshot.set_result(rows)
            return
        if self._live and (not self._link.subscribed or self._link.mode is not Mode.JSON):
            self.stop()
            return
        message["node"] = self.node
        encoded = encode_message(message)
        if self._live:
            self._link.push_event(encoded)
        else:
            self._held.append(encoded)

    def go_live(self) -> None:
        self._live = True
        held, self._held = self._held, []
        for line in held:
            self._link.push_event(line)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._end()

    def closed(self) -> None:
        self._stopped = True
        if not self.snapshot.done():
            self.snapshot.set_exception(ConnectionError(f"node {self.node} closed the feed"))
            self.snapshot.exception()
