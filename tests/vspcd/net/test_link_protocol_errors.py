"""A link whose peer breaks telnet framing closes that connection, and stays closed.

`TelnetCodec` refuses all input after a protocol error (h11's ERROR state) instead
of going back to DATA.  These tests drive the real links through
a MockTransport (uvicorn's pattern) with the real hub on a fake clock.  They show that
no link relied on resuming: the VM link and the telnet client link each close on the
first fault.  Bytes that still arrive afterwards reach neither the hub nor the
other side.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.vspcd.fakes import FakeClock, FakePorts, FakeScheduler
from vspc.common import esxi
from vspc.common.telnet import Data, TelnetCodec
from vspc.vspcd.hub.hub import Hub, HubSettings
from vspc.vspcd.net.links import TelnetClientLink, VmLink

UUID = "0123456789abcdeffedcba9800000000"
SB_IN_SB = bytes.fromhex("ff fa e8 01 ff fa")  # IAC SB inside a subnegotiation


class MockTransport(asyncio.Transport):
    """Records writes; closing is a flag (tests/protocols/test_http.py in uvicorn)."""

    def __init__(self, peer: tuple[str, int], sockname: tuple[str, int] = ("127.0.0.1", 0)):
        super().__init__()
        self.buffer = bytearray()
        self.closed = False
        self._extra = {"peername": peer, "sockname": sockname}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def hub() -> Hub:
    clock = FakeClock()
    return Hub(
        HubSettings(),
        clock=clock,
        call_later=FakeScheduler(clock).call_later,
        ports=FakePorts.of([7000]),
    )


def connected_vm(the_hub: Hub) -> tuple[VmLink, MockTransport]:
    """A VM link past its opening: identified, on telnet port 7000."""
    link, transport = VmLink(the_hub), MockTransport(("127.0.0.2", 40001))
    vm = esxi.EsxiSession(UUID, "db01")
    vm.connect_source()
    link.connection_made(transport)
    for _ in range(4):  # a few round trips settle negotiation and identification
        vm.receive_data(transport.take())
        link.data_received(vm.data_to_send())
    assert the_hub.console_by_port(7000) is not None
    transport.take()
    return link, transport


def test_vm_link_closes_on_a_framing_error_and_parses_nothing_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    the_hub = hub()
    link, transport = connected_vm(the_hub)
    client = MockTransport(("127.0.0.1", 50001), ("127.0.0.1", 7000))
    TelnetClientLink(the_hub, 7000).connection_made(client)
    client.take()
    link.data_received(b"before")
    with caplog.at_level(logging.WARNING):
        link.data_received(SB_IN_SB)  # a read's events come all or none: this read's none
    assert transport.closed
    assert [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()] == [
        "VM 127.0.0.2:40001: telnet protocol error (IAC SB inside a subnegotiation); closing"
    ]
    assert b"before" in client.take()  # what came before the fault was delivered
    link.data_received(b"after")  # a straggler: the link is closing, nothing is parsed
    assert b"after" not in client.take()


def test_client_link_closes_on_a_framing_error_and_forwards_nothing_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    the_hub = hub()
    _, vm_transport = connected_vm(the_hub)
    client = MockTransport(("127.0.0.1", 50001), ("127.0.0.1", 7000))
    link = TelnetClientLink(the_hub, 7000)
    link.connection_made(client)
    link.data_received(b"typed")
    with caplog.at_level(logging.WARNING):
        link.data_received(SB_IN_SB)
    assert client.closed
    assert any(
        r.getMessage() == "client 127.0.0.1:50001: telnet protocol error "
        "(IAC SB inside a subnegotiation); closing"
        for r in caplog.records
    )
    # Bytes delivered after the fault (asyncio would not, but nothing may rely on it)
    # meet the codec's ERROR state: refused and logged, never typed into the VM.
    link.data_received(b"junk after the fault")
    codec = TelnetCodec()
    typed = b"".join(
        e.payload for e in codec.receive_data(vm_transport.take()) if isinstance(e, Data)
    )
    assert typed == b"typed"
    assert any("input refused" in r.getMessage() for r in caplog.records)
    assert not vm_transport.closed  # one bad client costs only its own connection
