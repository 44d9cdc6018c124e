"""The admin TCP port shared fairly (docs/security.md): a handful of addresses holding
idle connections cannot keep another address out, over real loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.vspcd.harness import running
from vspc.vspcd.faces.admin import limits as admin_limits

WAIT = 5.0


async def hello(local: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        writer.write(b'{"cmd":"hello"}\n')
        async with asyncio.timeout(WAIT):
            return await reader.readline()
    finally:
        writer.close()


def test_five_addresses_of_idle_connections_do_not_lock_out_a_sixth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        admin_limits,
        "DEFAULT_LIMITS",
        admin_limits.Limits(connections=24, reserved=4, evict_after=0.2),
    )

    async def main() -> None:
        async with running(tmp_path, "--admin-port", "0", "--admin-per-peer", "6") as (daemon, _):
            port = daemon._admin.tcp_port  # noqa: SLF001
            assert port is not None
            hogs = []
            for n in range(2, 7):  # 5 addresses x 6 > the 20 unreserved slots
                for _ in range(6):
                    hogs.append(
                        await asyncio.open_connection(
                            "127.0.0.1", port, local_addr=(f"127.0.0.{n}", 0)
                        )
                    )
            await asyncio.sleep(0.3)  # past evict_after: the hogs are idle now
            for _ in range(3):
                assert b'"ok":true' in await hello("127.0.0.1", port)
            for _reader, writer in hogs:
                writer.close()

    asyncio.run(main())
