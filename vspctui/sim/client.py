"""A raw telnet client on a console's port that types markers and checks its output.

It checks that what clients type arrives exactly once (docs/vspc-sim.md).  A `TypingClient`
never negotiates (a proxy's option offers are just skipped bytes to the checker); it
types `<cN:k>` markers (k = 0, 1, 2, ...) and records when each was typed in a
dict the VMs share, so the VM that receives it can time client -> VM.  What it reads
is checked for VM output markers from the first one it sees (it attached part-way).
It needs no admin socket: which VM it reached shows up in the VM's input checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from vspc.vspctui.sim.markers import MarkerChecker, marker
from vspc.vspctui.sim.report import Stats

__all__ = ["TypingClient", "open_client"]


class TypingClient(asyncio.Protocol):
    def __init__(self, name: str, stats: Stats, typed_at: dict[tuple[str, int], float]) -> None:
        self.name = name
        self.stats = stats
        self.typed_at = typed_at
        self.typed = 0
        self.output = MarkerChecker(from_first=True)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.first: asyncio.Future[None] = loop.create_future()  # the proxy spoke
        self.lost: asyncio.Future[None] = loop.create_future()
        self.received = bytearray()  # everything read, when `keep` (interactive tests)
        self.keep = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.first.done():
            self.first.set_result(None)
        self.stats.count("client_bytes_in", len(data))
        self.output.feed(data)
        if self.keep:
            self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.first, self.lost):
            if not future.done():
                future.set_result(None)

    def type_marker(self) -> None:
        """Type the next marker, if still connected."""
        if self.transport is None or self.transport.is_closing():
            return
        data = marker(self.name, self.typed)
        self.typed_at[(self.name, self.typed)] = time.perf_counter()
        self.typed += 1
        self.stats.count("client_bytes_out", len(data))
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_client(
    host: str,
    port: int,
    name: str,
    stats: Stats,
    typed_at: dict[tuple[str, int], float],
    greeting_wait: float = 2.0,
    connect_wait: float = 5.0,
) -> TypingClient:
    """Connect and wait (up to `greeting_wait` s) for the proxy's first bytes.

    vspcd offers telnet options as it attaches a client; a proxy that says nothing
    first is given `greeting_wait` seconds, then typed at all the same.

    Raises:
        OSError: nothing listens on the port, even after `connect_wait` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_wait
    while True:
        try:
            _, client = await loop.create_connection(
                lambda: TypingClient(name, stats, typed_at), host, port
            )
            break
        except ConnectionRefusedError:
            # A proxy binds a console's port once the VM has identified itself,
            # which a VM cannot see happen: retry for a while.
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(greeting_wait):
            await client.first
    return client
