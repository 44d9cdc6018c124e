"""vspcd/service/server.py: orchestration behaviour not covered by the end-to-end tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.vspcd.harness import UUID_A, UUID_B, Events, FakeEsxi, identified, make_config
from vspc.vspcd.service.server import Daemon


def test_near_the_fd_ceiling_idle_consoles_expire_early(tmp_path: Path) -> None:
    """Issue #3 resources: reclaim expired consoles early when near the fd ceiling."""

    async def main() -> None:
        config = make_config(tmp_path, "--vm-expire-time", "3600")
        # 64 descriptors are reserved for logs, listeners and admin peers, so a limit
        # of 70 puts every accept over the 90 % line.
        daemon = Daemon(config, fd_limit=70)
        await daemon.start()
        assert daemon.hub is not None and daemon.proxy_port is not None
        events = Events()
        daemon.hub.subscribe(events)
        try:
            old = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            await old.close()
            await events.wait("vm_disconnected")
            new = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_B)
            expired = await events.wait("vm_expired")
            assert expired["key"] == UUID_A  # idle for seconds, not the hour configured
            await identified(events, UUID_B)
            await new.close()
        finally:
            await daemon.stop(grace=2.0)

    asyncio.run(main())


def test_plenty_of_descriptors_reclaims_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        daemon = Daemon(make_config(tmp_path, "--vm-expire-time", "3600"), fd_limit=100_000)
        await daemon.start()
        assert daemon.hub is not None and daemon.proxy_port is not None
        events = Events()
        daemon.hub.subscribe(events)
        try:
            old = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            await old.close()
            await events.wait("vm_disconnected")
            new = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_B)
            await identified(events, UUID_B)
            assert not [name for name, _ in events.seen if name == "vm_expired"]
            await new.close()
        finally:
            await daemon.stop(grace=2.0)

    asyncio.run(main())
