"""The output budget over real sockets (vspcd/net/flow.py; docs/security.md, "Resource
bounds"): clients that do not read are dropped, the most unread output first, once all
clients together queue more than --output-budget; a reading client keeps its output."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from tests.vspcd.harness import UUID_A, FakeEsxi, Operator, console_port, identified, running
from vspc.vspcd.net import flow

CLIENT_QUEUE = 128 << 10
BUDGET = 200 << 10


async def non_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A telnet client with a tiny receive window that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def closed_by_daemon(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(2):
            while await reader.read(1 << 16):
                pass
    except (ConnectionError, TimeoutError) as exc:
        return not isinstance(exc, TimeoutError)
    return True


def test_non_reading_clients_are_dropped_over_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        args = ("--client-queue", str(CLIENT_QUEUE), "--output-budget", str(BUDGET))
        async with running(tmp_path, *args) as (daemon, events):
            assert daemon.proxy_port is not None
            evicted = flow.BUDGET.evicted
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            reader = await Operator.connect(port, raw=True)
            stuck = [await non_reader(port) for _ in range(3)]
            await events.wait("client_attached", count=4)
            chunk = bytes(range(32, 127)) * 700  # ~65 KiB, printable
            with caplog.at_level(logging.WARNING):
                for _ in range(48):  # ~3 MiB
                    vm.send(chunk)
                    await asyncio.sleep(0.005)
                    assert flow.BUDGET.total <= BUDGET + 2 * len(chunk)
                await reader.output.length(48 * len(chunk) // 2)
            assert flow.BUDGET.evicted > evicted
            assert "over --output-budget" in caplog.text
            gone = await asyncio.gather(*(closed_by_daemon(r) for r, _ in stuck))
            assert sum(gone) >= 2  # the slowest went; the budget holds one more
            assert not reader.output.closed.is_set()
            for _, writer in stuck:
                writer.close()
            await reader.close()
            await vm.close()
            for _ in range(40):
                if not flow.BUDGET.total:
                    break
                await asyncio.sleep(0.05)
            assert flow.BUDGET.total == 0

    asyncio.run(body())
