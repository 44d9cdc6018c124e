"""Console caps and port reclaim over real sockets (vspcd/hub/quota.py; docs/security.md,
"Resource bounds"): per source address, in all, and telnet ports given back by
forgotten consoles before a live VM goes without."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.vspcd.harness import Events, FakeEsxi, running
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.quota import ConsoleQuota


def uuid(n: int) -> str:
    return f"{n + 1:032x}"


async def live(port: int, n: int, events: Events, local: str = "127.0.0.1") -> FakeEsxi:
    vm = await FakeEsxi.connect(port, uuid(n), f"vm-{n}", local=local)
    await events.wait("vm_connected", lambda f: f["key"] == uuid(n))
    return vm


async def refused(port: int, n: int) -> None:
    """A VM connection whose new console is refused: the daemon closes it."""
    vm = await FakeEsxi.connect(port, uuid(n), f"vm-{n}")
    async with asyncio.timeout(5):
        await vm.input.closed.wait()


def test_one_address_is_capped_and_others_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with running(tmp_path, "--consoles-per-host", "3") as (daemon, events):
            assert daemon.hub is not None and daemon.proxy_port is not None
            port = daemon.proxy_port
            vms = [await live(port, n, events) for n in range(3)]
            with caplog.at_level(logging.WARNING):
                await refused(port, 3)
                await refused(port, 4)
            assert len(list(daemon.hub.consoles())) == 3
            assert "new console" in caplog.text and "refused" in caplog.text
            # Aggregated: one line per 10 s, the rest counted.
            assert caplog.text.count("refused: 3 consoles from this address") == 1
            assert daemon.hub.quota.refusals.total == 2
            other = await live(port, 5, events, local="127.0.0.2")
            assert len(list(daemon.hub.consoles())) == 4
            for vm in [*vms, other]:
                await vm.close()

    asyncio.run(body())


def test_forgotten_consoles_make_room_oldest_first(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path, "--consoles-per-host", "3") as (daemon, events):
            assert daemon.hub is not None and daemon.proxy_port is not None
            port = daemon.proxy_port
            for n in range(3):  # identify and leave: forgotten consoles
                vm = await live(port, n, events)
                await vm.close()
                await events.wait("vm_disconnected", count=n + 1)
            newcomer = await live(port, 3, events)
            expired = await events.wait("vm_expired")
            assert expired["key"] == uuid(0)
            keys = {c.key.uuid for c in daemon.hub.consoles()}
            assert keys == {uuid(1), uuid(2), uuid(3)}
            await newcomer.close()

    asyncio.run(body())


def test_the_total_cap_refuses_when_every_console_is_live(tmp_path: Path) -> None:
    async def body() -> None:
        async with running(tmp_path, "--console-limit", "2") as (daemon, events):
            assert daemon.hub is not None and daemon.proxy_port is not None
            port = daemon.proxy_port
            vms = [await live(port, n, events, local=f"127.0.0.{n + 1}") for n in range(2)]
            await refused(port, 2)
            assert len(list(daemon.hub.consoles())) == 2
            await vms[0].close()
            await events.wait("vm_disconnected")
            again = await live(port, 3, events)  # the forgotten one makes room
            assert {c.key.uuid for c in daemon.hub.consoles()} == {uuid(1), uuid(3)}
            for vm in (vms[1], again):
                await vm.close()

    asyncio.run(body())


def test_out_of_telnet_ports_a_forgotten_console_gives_its_port_back(tmp_path: Path) -> None:
    async def body() -> None:
        # Two ports in the range: 65534 and 65535.
        async with running(tmp_path, "-r", "65534", "--consoles-per-host", "0") as (
            daemon,
            events,
        ):
            assert daemon.hub is not None and daemon.proxy_port is not None
            port = daemon.proxy_port
            held = []
            for n in range(2):
                vm = await live(port, n, events)
                held.append(daemon.hub.console(ConsoleKey(uuid(n), "")))
                await vm.close()
                await events.wait("vm_disconnected", count=n + 1)
            ports = {c.port for c in held if c is not None}
            if None in ports or len(ports) < 2:
                pytest.skip("ports 65534-65535 are not both free here")
            vm = await live(port, 2, events)
            console = daemon.hub.console(ConsoleKey(uuid(2), ""))
            assert console is not None and console.port in ports
            assert daemon.hub.console(ConsoleKey(uuid(0), "")) is None  # the oldest went
            await vm.close()

    asyncio.run(body())


def test_quota_bookkeeping() -> None:
    quota = ConsoleQuota(clock=lambda: 0.0, call_later=lambda delay, cb: None)
    a, b, c = (ConsoleKey(uuid(n), "") for n in range(3))
    quota.added(a, "h1")
    quota.added(b, "h1")
    quota.added(c, "h2")
    assert quota.admit("h1", per_host=2, total=0).refused is not None
    quota.idle(b)
    quota.idle(a)
    assert quota.admit("h1", per_host=2, total=0).evict == b  # forgotten longest
    quota.busy(b)
    assert quota.admit("h1", per_host=2, total=0).evict == a
    assert quota.admit("h2", per_host=2, total=3).evict == a
    quota.removed(a)
    assert quota.count("h1") == 1 and len(quota) == 2
    assert quota.oldest_idle() is None
    assert quota.admit("h3", per_host=2, total=3).refused is None
