"""vspcd/net/links.py and vspcd/net/flow.py against a MockTransport.

Each link class is driven through its asyncio callbacks with a transport that only
records: identification and the pre-identification bounds (VmLink), pause/resume,
overflow and the one drop notice (TelnetClientLink, ClientOutput), close from either
side, and peer errors.  The hub is the real one with a fake clock and scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.vspcd.fakes import FakeClock, FakePorts, FakeScheduler
from vspc.common import vmware as vm
from vspc.common.esxi import ESXI_KNOWN_CODES
from vspc.vspcd.hub.console import Role
from vspc.vspcd.hub.hub import Hub, HubSettings
from vspc.vspcd.hub.ratelog import throttled
from vspc.vspcd.net.admission import Slots
from vspc.vspcd.net.flow import ClientOutput, notice_line
from vspc.vspcd.net.links import PreIdentification, TelnetClientLink, VmLink

KEY = "0123456789abcdeffedcba9800000000"
HELLO = (
    b"\xff\xfb\xe8"
    + vm.encode(vm.KnownSuboptions1(ESXI_KNOWN_CODES))
    + vm.encode(vm.DoProxy("S", "vSPC.py"))
    + vm.encode(vm.VmVcUuid(vm.wire_uuid(KEY)))
    + vm.encode(vm.VmName("web01"))
)


class MockTransport(asyncio.Transport):
    """Records writes and state changes; `buffered` stands in for unsent bytes."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.1", 4242), port: int = 50000) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.high: int | None = None
        self.buffered = 0
        self._extra: dict[str, Any] = {"peername": peer, "sockname": ("127.0.0.1", port)}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


def make_hub() -> tuple[Hub, FakeScheduler, FakePorts]:
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    ports = FakePorts()
    hub = Hub(HubSettings(), clock=clock, call_later=scheduler.call_later, ports=ports)
    return hub, scheduler, ports


def connected_vm(hub: Hub) -> tuple[VmLink, MockTransport]:
    link = VmLink(hub)
    transport = MockTransport()
    link.connection_made(transport)
    link.data_received(HELLO)
    return link, transport


# -- VmLink ----------------------------------------------------------------------------


def test_vm_link_offers_on_connect_and_identifies() -> None:
    hub, _, _ = make_hub()
    link = VmLink(hub)
    transport = MockTransport()
    link.connection_made(transport)
    assert transport.take()  # the proxy's opening negotiation
    assert transport.high == 64 * 1024
    link.data_received(HELLO)
    console = hub.find(KEY)
    assert console.vm is not None and console.vm.role is Role.ACTIVE
    assert console.vm.channel is link
    assert b"\xff\xfa\xe8" in transport.take()  # WILL-PROXY and the GETs went out


def test_vm_link_pause_and_resume_reach_the_hub() -> None:
    hub, _, _ = make_hub()
    link, _transport = connected_vm(hub)
    client_link = TelnetClientLink(hub, port=hub.find(KEY).port)
    client_transport = MockTransport(port=hub.find(KEY).port or 0)
    client_link.connection_made(client_transport)
    link.pause_writing()  # the VM stopped reading: clients stop being read
    assert not client_transport.reading
    link.resume_writing()
    assert client_transport.reading


def test_vm_link_closes_on_a_protocol_error_and_the_hub_hears_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, _, _ = make_hub()
    link, transport = connected_vm(hub)
    link.data_received(b"\xff\xfa\xe8\x00\xff\xfa")  # IAC SB inside SB
    assert transport.closed
    assert "telnet protocol error" in caplog.text
    link.connection_lost(None)
    assert hub.find(KEY).vm is None


def test_vm_link_closed_by_the_hub_and_by_the_peer() -> None:
    hub, _, _ = make_hub()
    link, transport = connected_vm(hub)
    link.close()  # our side
    assert transport.closed and not transport.aborted
    link.connection_lost(None)
    other, other_transport = connected_vm(hub)
    other.connection_lost(ConnectionResetError("peer reset"))  # their side
    assert hub.find(KEY).vm is None
    other.data_received(b"late")  # nothing happens after the transport is gone
    assert other_transport.written.count(b"late") == 0


def _preident(timeout: float = 5.0, max_bytes: int = 1024) -> PreIdentification:
    loop = asyncio.get_running_loop()
    refusals = throttled(
        logging.getLogger("test"), "dropped", clock=loop.time, call_later=loop.call_later
    )
    return PreIdentification(refusals, timeout=timeout, max_bytes=max_bytes)


def test_vm_link_releases_its_slot_when_identified_and_when_lost() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        hub, _, _ = make_hub()
        slots = Slots(0, 0, lifetime=5.0, clock=loop.time)
        link = VmLink(hub, preident=_preident())
        link.adopt_slot(slots.acquire("192.0.2.1"))  # type: ignore[arg-type]
        link.connection_made(MockTransport())
        assert len(slots) == 1
        link.data_received(HELLO)
        assert len(slots) == 0  # identified: the slot came back
        stranger = VmLink(hub, preident=_preident())
        stranger.adopt_slot(slots.acquire("192.0.2.9"))  # type: ignore[arg-type]
        stranger.connection_made(MockTransport(("192.0.2.9", 1)))
        stranger.connection_lost(None)
        assert len(slots) == 0
        late = slots.acquire("192.0.2.9")
        assert late is not None
        stranger.adopt_slot(late)  # handed over after the connection died: released
        assert len(slots) == 0

    asyncio.run(main())


def test_vm_link_drops_a_peer_that_does_not_identify_in_time() -> None:
    async def main() -> None:
        hub, _, _ = make_hub()
        link = VmLink(hub, preident=_preident(timeout=0.01))
        transport = MockTransport()
        link.connection_made(transport)
        async with asyncio.timeout(5):
            while not transport.aborted:  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # the link's own call_later fires

    asyncio.run(main())


def test_vm_link_parses_at_most_the_allowance_before_identification() -> None:
    async def main() -> None:
        hub, _, _ = make_hub()
        hostile = VmLink(hub, preident=_preident(max_bytes=1024))
        transport = MockTransport()
        hostile.connection_made(transport)
        hostile.data_received(b"x" * 1000)
        assert not transport.closed
        hostile.data_received(b"x" * 100)
        assert transport.aborted
        # A read that identifies within the allowance keeps the rest of the read.
        good = VmLink(hub, preident=_preident(max_bytes=len(HELLO)))
        good_transport = MockTransport()
        good.connection_made(good_transport)
        good.data_received(HELLO + b"console output" * 200)
        assert not good_transport.closed
        assert hub.find(KEY).scrollback.last(14) == b"console output"

    asyncio.run(main())


# -- TelnetClientLink and ClientOutput --------------------------------------------------


def attached_client(hub: Hub, limit: int = 100) -> tuple[TelnetClientLink, MockTransport]:
    port = hub.find(KEY).port
    link = TelnetClientLink(hub, port=port, queue_limit=limit)
    transport = MockTransport(port=port or 0)
    link.connection_made(transport)
    transport.take()  # option offers
    return link, transport


def test_client_link_gets_output_and_sends_input() -> None:
    hub, _, _ = make_hub()
    vm_link, vm_transport = connected_vm(hub)
    client, transport = attached_client(hub)
    assert transport.high == 100
    vm_link.data_received(b"login: ")
    assert transport.take() == b"login: "
    vm_transport.take()
    client.data_received(b"root\r")
    assert b"root\r" in vm_transport.take()


def test_client_link_overflow_drops_and_reports_once(caplog: pytest.LogCaptureFixture) -> None:
    hub, _, _ = make_hub()
    vm_link, _ = connected_vm(hub)
    client, transport = attached_client(hub)
    client.pause_writing()  # over --client-queue
    vm_link.data_received(b"a" * 300)
    vm_link.data_received(b"b" * 200)
    assert transport.take() == b""
    client.resume_writing()
    assert transport.take() == notice_line("500 bytes of output dropped: client too slow")
    client.resume_writing()  # a second resume says nothing more
    assert transport.take() == b""
    vm_link.data_received(b"live")
    assert transport.take() == b"live"
    assert caplog.text.count("dropped 500 bytes (slow reader)") == 1


def test_client_link_pause_reading_is_the_hubs() -> None:
    hub, _, _ = make_hub()
    connected_vm(hub)
    client, transport = attached_client(hub)
    client.pause_reading()
    assert not transport.reading
    client.resume_reading()
    assert transport.reading


def test_client_link_closed_from_either_side() -> None:
    hub, _, _ = make_hub()
    connected_vm(hub)
    client, transport = attached_client(hub)
    assert len(hub.find(KEY).clients) == 1
    client.close()  # the hub's side (clear, kick)
    assert transport.closed
    client.connection_lost(None)
    assert len(hub.find(KEY).clients) == 0
    other, _ = attached_client(hub)
    other.connection_lost(ConnectionResetError())  # the peer's side
    assert len(hub.find(KEY).clients) == 0


def test_client_link_on_a_port_without_console_says_so_and_closes() -> None:
    hub, _, _ = make_hub()
    link = TelnetClientLink(hub, port=1)
    transport = MockTransport(port=1)
    link.connection_made(transport)
    assert transport.closed
    assert notice_line("no console on port 1") in transport.written


def test_client_link_protocol_error_closes_only_it(caplog: pytest.LogCaptureFixture) -> None:
    hub, _, _ = make_hub()
    vm_link, vm_transport = connected_vm(hub)
    client, transport = attached_client(hub)
    client.data_received(b"\xff\xfa\x18\xff\xfa")  # SB inside SB
    assert transport.closed and not vm_transport.closed
    assert "telnet protocol error" in caplog.text


def test_client_output_counts_console_bytes_not_escaped_bytes() -> None:
    output = ClientOutput("client x")
    transport = MockTransport()
    output.bind(transport)
    output.pause_writing()
    output.write(b"\xff\xff\xff\xff", 2)  # two console bytes, escaped
    assert output.dropped == 2 and output.total_dropped == 2
    output.notice("still here")  # notices go out even while paused
    assert transport.take() == notice_line("still here")
    transport.close()
    output.resume_writing()  # closed: nothing is written, and nothing raises
    assert output.dropped == 0 and output.total_dropped == 2
