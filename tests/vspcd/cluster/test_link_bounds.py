"""The inter-node link before authentication: small frames only, and a deadline.

Real sockets on loopback, no Redis: a `PeerLink` listener as vspcd/cluster/node.py
makes one, and a stranger (or a second `PeerLink`) on the other end
(docs/security.md, "Resource bounds"; common/peerlink.py HANDSHAKE_FRAME).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from vspc.common.peerlink import HANDSHAKE_FRAME, Message, Side, StreamData
from vspc.vspcd.cluster.links import PeerLink

SECRET = b"the cluster secret, 32 bytes ok!"


class Handler:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lost: list[PeerLink] = []
        self.got = asyncio.Event()

    def on_message(self, link: PeerLink, message: Message) -> None:
        self.messages.append(message)
        self.got.set()

    def on_link_lost(self, link: PeerLink) -> None:
        self.lost.append(link)


async def _listener(
    handler: Handler, links: list[PeerLink], auth_timeout: float = 5.0
) -> asyncio.Server:
    def make() -> PeerLink:
        link = PeerLink(handler, Side.LISTENER, "b", SECRET, auth_timeout=auth_timeout)
        links.append(link)
        return link

    return await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)


async def _closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass


def test_a_huge_frame_before_the_handshake_is_refused_at_its_header() -> None:
    async def body() -> None:
        handler, links = Handler(), list[PeerLink]()
        server = await _listener(handler, links)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A Hello frame claiming 64 MiB, then its first MiB: the node must not wait
        # for (or keep) the rest.
        writer.write(struct.pack(">IBI", 64 << 20, 1, 0) + b"x" * (1 << 20))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await _closed(reader)
        writer.close()
        assert links and links[0].closed
        assert len(links[0]._codec._buf) <= HANDSHAKE_FRAME + (1 << 20)
        assert handler.messages == []
        server.close()

    asyncio.run(body())


def test_a_silent_stranger_is_closed_at_the_handshake_deadline() -> None:
    async def body() -> None:
        handler, links = Handler(), list[PeerLink]()
        server = await _listener(handler, links, auth_timeout=0.2)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A valid-looking Hello header whose body never comes.
        writer.write(struct.pack(">IBI", 100, 1, 0))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await _closed(reader)
        assert loop.time() - began < 3
        writer.close()
        assert links[0].closed and not links[0].ready.cancelled()
        assert isinstance(links[0].ready.exception(), ConnectionError)
        server.close()

    asyncio.run(body())


def test_nodes_with_the_secret_still_send_big_frames_after_the_handshake() -> None:
    async def body() -> None:
        handler, links = Handler(), list[PeerLink]()
        server = await _listener(handler, links)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        _, dialer = await loop.create_connection(
            lambda: PeerLink(Handler(), Side.DIALER, "a", SECRET), "127.0.0.1", port
        )
        await asyncio.wait_for(dialer.ready, 5)
        big = b"y" * (1 << 20)  # far over HANDSHAKE_FRAME
        dialer.send(StreamData(1, big))
        await asyncio.wait_for(handler.got.wait(), 5)
        assert handler.messages == [StreamData(1, big)]
        dialer.close()
        server.close()

    asyncio.run(body())
