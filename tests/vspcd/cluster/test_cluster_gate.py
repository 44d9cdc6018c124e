"""vspcd/cluster/placement.py without sockets or Redis: which node serves a connection.

The hub is real (fake clock and timers from tests/vspcd/fakes.py); the cluster node
is a stand-in that answers claims and cookie lookups from tables, so each decision of
the gate is driven directly: local, relayed (events in order, nothing lost), waiting
for a dead owner's lease, refused without the registry, cancelled on close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from tests.vspcd.fakes import FakeClock, FakeScheduler, FakeVm
from vspc.common import vmware as vm
from vspc.common.peerlink import Message, VmEvent, VmOpen
from vspc.common.session import ProxyRequested, VmData, VmIdentified, VmNamed
from vspc.vspcd.cluster.placement import Gate
from vspc.vspcd.cluster.registry import RegistryUnavailable
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import VmConnected
from vspc.vspcd.hub.hub import Hub, HubSettings

U1 = "0123456789abcdeffedcba9800000000"
KEY = ConsoleKey(U1)
PROXY = ProxyRequested("S", "vSPC.py", None, True)


class FakeLink:
    def __init__(self, node: str) -> None:
        self.peer_node = node
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)


class FakeRegistry:
    def __init__(self) -> None:
        self.cookies: dict[bytes, str] = {}
        self.down = False

    async def cookie_owner(self, cookie: bytes) -> str | None:
        if self.down:
            raise RegistryUnavailable("registry unreachable (cookie): test")
        return self.cookies.get(cookie)


class FakeNode:
    """What the gate uses of ClusterNode."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.node_id = "b"
        self.lease = 0.2
        self.registry = FakeRegistry()
        self.owners: list[str | None | Exception] = []  # claim answers, in turn
        self.links: dict[str, FakeLink | None] = {}
        self.owned: set[ConsoleKey] = set()
        self.channels = 0

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    def serves(self, key: ConsoleKey) -> bool:
        return key in self.owned and self.hub.console(key) is not None

    async def claim(self, key: ConsoleKey, request: ProxyRequested, name: str | None) -> str | None:
        answer = self.owners.pop(0) if len(self.owners) > 1 else self.owners[0]
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            self.hub.restore(key, name or "vm", 7000, request.service_uri)
            self.owned.add(key)
        return answer

    async def link_to(self, node: str) -> FakeLink | None:
        return self.links.get(node)

    def open_relay(self, link: FakeLink, channel: Any) -> int:
        self.channels += 1
        return self.channels

    def forget_relay(self, link: FakeLink, number: int) -> None:
        pass


def rig() -> tuple[Hub, FakeNode, Gate]:
    clock = FakeClock()
    hub = Hub(HubSettings(), clock=clock, call_later=FakeScheduler(clock).call_later)
    node = FakeNode(hub)
    return hub, node, Gate(node, hub)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_source_owned_elsewhere_is_relayed_in_order() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.owners = ["a"]
        link = node.links["a"] = FakeLink("a")
        channel = FakeVm("esx1:900")
        conn = gate.vm_connected(channel)
        gate.vm_event(conn, VmData(b"early"))
        gate.vm_event(conn, PROXY)
        gate.vm_event(conn, VmIdentified(U1))
        gate.vm_event(conn, VmNamed("web"))  # arrives while the claim is out
        await settle()
        gate.vm_event(conn, VmData(b"later"))
        assert link.sent == [
            VmOpen(1, "esx1:900"),
            VmEvent(1, VmData(b"early")),
            VmEvent(1, PROXY),
            VmEvent(1, VmIdentified(U1)),
            VmEvent(1, VmNamed("web")),
            VmEvent(1, VmData(b"later")),
        ]
        assert hub.console(KEY) is None and gate.relayed == 1
        gate.link_lost(link)  # type: ignore[arg-type]
        assert channel.closed

    asyncio.run(main())


def test_source_claimed_here_is_served_by_this_hub() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.owners = [None]
        conn = gate.vm_connected(FakeVm())
        gate.vm_event(conn, PROXY)
        gate.vm_event(conn, VmIdentified(U1))
        await settle()
        console = hub.console(KEY)
        assert console is not None and console.vm is conn and console.port == 7000
        # The next connection for it needs no claim.
        again = gate.vm_connected(FakeVm("esx-a:40002"))  # same host: replaces at once
        node.owners = [RegistryUnavailable("must not be asked")]
        gate.vm_event(again, PROXY)
        gate.vm_event(again, VmIdentified(U1))
        assert console.vm is again

    asyncio.run(main())


def test_dead_owner_is_waited_for_then_taken_over() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.owners = ["a", "a", None]  # a unreachable, then its lease ran out
        node.links["a"] = None
        bound = asyncio.Event()
        hub.subscribe(lambda event: bound.set() if isinstance(event, VmConnected) else None)
        conn = gate.vm_connected(FakeVm())
        gate.vm_event(conn, PROXY)
        gate.vm_event(conn, VmIdentified(U1))
        gate.vm_event(conn, VmNamed("web"))  # ESXi's next word: vm_connected needs no timer
        async with asyncio.timeout(5):
            await bound.wait()
        console = hub.console(KEY)
        assert console is not None and console.vm is conn

    asyncio.run(main())


def test_without_the_registry_a_new_console_is_refused() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.owners = [RegistryUnavailable("registry unreachable (claim): down")]
        channel = FakeVm()
        conn = gate.vm_connected(channel)
        gate.vm_event(conn, PROXY)
        gate.vm_event(conn, VmIdentified(U1))
        await settle()
        assert channel.closed and hub.console(KEY) is None

    asyncio.run(main())


def test_destination_follows_its_cookie() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        cookie = b"\x01\x02\x03\x04secret!!"
        node.registry.cookies[cookie] = "a"
        link = node.links["a"] = FakeLink("a")
        conn = gate.vm_connected(FakeVm("esx2:900"))
        gate.vm_event(conn, vm.VMotionPeer(cookie))
        gate.vm_event(conn, VmIdentified(U1))
        await settle()
        assert link.sent[:3] == [
            VmOpen(1, "esx2:900"),
            VmEvent(1, vm.VMotionPeer(cookie)),
            VmEvent(1, VmIdentified(U1)),
        ]

    asyncio.run(main())


def test_unknown_cookie_stays_here_and_gets_no_peer_ok() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.registry.down = True
        channel = FakeVm()
        conn = gate.vm_connected(channel)
        gate.vm_event(conn, vm.VMotionPeer(b"\x00" * 12))
        await settle()
        assert channel.peer_oks == [] and not channel.closed  # F5: silence

    asyncio.run(main())


def test_close_while_deciding_cancels_the_decision() -> None:
    async def main() -> None:
        hub, node, gate = rig()
        node.owners = ["a"]
        link = node.links["a"] = FakeLink("a")
        conn = gate.vm_connected(FakeVm())
        gate.vm_event(conn, PROXY)
        gate.vm_event(conn, VmIdentified(U1))
        gate.vm_closed(conn)
        await settle()
        assert link.sent == [] and not hub.busy()

    asyncio.run(main())
