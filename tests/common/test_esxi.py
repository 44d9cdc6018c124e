"""EsxiSession (the VM side) on its own, and in conversation with ProxySession.

The byte strings are the ESXi side of the capture as docs/protocol.md §3 quotes it.  The
conversation tests connect the two sans-IO halves through an in-memory "network" and
play the hub, as in docs/protocol.md §4.2: identify, data both ways, then BEGIN, GOAHEAD,
PEER, PEER-OK and COMPLETE to a second EsxiSession.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common import vmware as vm
from vspc.common.esxi import (
    ESXI_KNOWN_CODES,
    ConsoleInput,
    EsxiEvent,
    EsxiSession,
    Goahead,
    LocalProtocolError,
    Notice,
    NotNow,
    PeerOk,
    ProxyAnswer,
    Role,
    TelnetProtocolError,
)
from vspc.common.session import (
    ProxyRequested,
    ProxySession,
    SessionEvent,
    VmData,
    VmIdentified,
    VmNamed,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


KEY = "0123456789abcdeffedcba9800000000"
KS1 = h("ff fa e8 00 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 54 55 56 57 52 53 ff f0")
KS2 = vm.encode(vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES))
DO_PROXY = h("ff fa e8 46 53 76 53 50 43 2e 70 79 ff f0")
VM_VC_UUID = h(
    "ff fa e8 50 30 31 20 32 33 20 34 35 20 36 37 20 38 39 20 61 62 20 63 64 20 65 66 2d"
    " 66 65 20 64 63 20 62 61 20 39 38 20 30 30 20 30 30 20 30 30 20 30 30 ff f0"
)
VM_NAME = h("ff fa e8 52 76 6d 2d 30 30 30 30 30 ff f0")
# The capture proxy's opening on connection A (docs/protocol.md §3.1).
CAPTURE_PROXY_OPENING = h("ff fb 00 ff fb 03 ff fb 01 ff fd 00 ff fd 03 ff fd e8")
SEQ = h("76 19 ff e9")
SECRET = h("ff 00 ff 10")


def esxi() -> EsxiSession:
    return EsxiSession("01 23 45 67 89 ab cd ef-fe dc ba 98 00 00 00 00", "vm-00000")


def announced_source() -> EsxiSession:
    vm_side = esxi()
    vm_side.connect_source()
    vm_side.receive_data(CAPTURE_PROXY_OPENING + h("ff fe 25"))
    vm_side.data_to_send()
    return vm_side


# --- the VM side on its own -------------------------------------------------------------


def test_constructor_checks_uuid_and_direction() -> None:
    assert esxi().uuid == KEY
    with pytest.raises(ValueError):
        EsxiSession("not a uuid", "x")
    with pytest.raises(ValueError):
        EsxiSession(KEY, "x", direction="SC")


def test_source_opening_is_esxis() -> None:
    vm_side = esxi()
    vm_side.connect_source()
    assert vm_side.role is Role.SOURCE
    assert vm_side.data_to_send() == h("ff fb 25")  # WILL AUTH first (§3.1 step 1)
    assert vm_side.receive_data(CAPTURE_PROXY_OPENING) == []
    # Step 2: every offer acknowledged, in the order offered; then 232's announcement.
    assert vm_side.data_to_send() == (
        h("ff fd 00 ff fd 03 ff fd 01 ff fb 00 ff fb 03 ff fb e8") + KS1 + DO_PROXY
    )
    assert vm_side.receive_data(h("ff fe 25")) == []  # AUTH refused: settled, no reply
    assert vm_side.data_to_send() == b""


def test_source_answers_identification_then_offers_com_port() -> None:
    vm_side = announced_source()
    assert vm_side.receive_data(KS2) == [vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES)]
    assert vm_side.receive_data(h("ff fa e8 51 ff f0 ff fa e8 53 ff f0")) == []
    assert vm_side.data_to_send() == VM_VC_UUID + VM_NAME + h("ff fb 2c")
    assert vm_side.receive_data(h("ff fa e8 47 ff f0 ff fe 2c")) == [ProxyAnswer(True)]
    assert vm_side.data_to_send() == b""
    # Repeated GETs are answered again; COM-PORT is offered only once.
    vm_side.receive_data(h("ff fa e8 53 ff f0"))
    assert vm_side.data_to_send() == VM_NAME


def test_wont_proxy_is_reported() -> None:
    vm_side = announced_source()
    assert vm_side.receive_data(h("ff fa e8 49 ff f0")) == [ProxyAnswer(False)]


def test_do_proxy_carries_direction_and_service_uri() -> None:
    vm_side = EsxiSession(KEY, "db01", service_uri="vSPC.py?port=console2", direction="C")
    vm_side.connect_source()
    vm_side.receive_data(h("ff fd e8"))
    out = vm_side.data_to_send()
    assert out.endswith(KS1 + vm.encode(vm.DoProxy("C", "vSPC.py?port=console2")))


def test_destination_announces_ks1_peer_and_com_port_in_one_write() -> None:
    # docs/protocol.md §3.5 step 2, connection D of the capture: the sequence's ff doubled.
    cookie = h("76 19 ff e9 55 21 99 8c")
    vm_side = esxi()
    vm_side.connect_destination(cookie)
    assert vm_side.role is Role.DESTINATION
    assert vm_side.data_to_send() == h("ff fb 25")
    vm_side.receive_data(h("ff fd e8"))
    assert vm_side.data_to_send() == h("ff fb e8") + KS1 + h(
        "ff fa e8 2c 76 19 ff ff e9 55 21 99 8c ff f0 ff fb 2c"
    )
    vm_side.receive_data(h("ff fa e8 53 ff f0"))
    assert vm_side.data_to_send() == VM_NAME  # no second WILL COM-PORT
    assert vm_side.receive_data(h("ff fa e8 2d 76 19 ff ff e9 ff f0")) == [PeerOk(SEQ)]
    vm_side.complete(SEQ)
    assert vm_side.data_to_send() == h("ff fa e8 2e 76 19 ff ff e9 ff f0")


def test_peer_ok_for_another_sequence_is_a_notice() -> None:
    vm_side = esxi()
    vm_side.connect_destination(h("01 02 03 04 05 06 07 08"))
    events = vm_side.receive_data(h("ff fa e8 2d 09 09 09 09 ff f0"))
    assert len(events) == 1 and isinstance(events[0], Notice)


def test_goahead_is_split_off_the_pending_sequence() -> None:
    vm_side = announced_source()
    vm_side.begin(SEQ)
    assert vm_side.data_to_send() == h("ff fa e8 28 76 19 ff ff e9 ff f0")
    events = vm_side.receive_data(h("ff fa e8 29 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0"))
    assert events == [Goahead(SECRET)]
    assert vm_side.cookie == SEQ + SECRET
    # A second GOAHEAD for the same BEGIN is out of turn.
    events = vm_side.receive_data(h("ff fa e8 29 76 19 ff ff e9 01 02 03 04 ff f0"))
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert vm_side.cookie == SEQ + SECRET


def test_notnow_and_abort() -> None:
    vm_side = announced_source()
    vm_side.begin(h("cd 52 67 55"))
    vm_side.data_to_send()
    assert vm_side.receive_data(h("ff fa e8 2b cd 52 67 55 ff f0")) == [NotNow(h("cd 52 67 55"))]
    assert vm_side.cookie is None
    vm_side.begin(h("61 ed 26 a2"))
    vm_side.receive_data(h("ff fa e8 29 61 ed 26 a2 ae ec 48 3f ff f0"))
    assert vm_side.cookie == h("61 ed 26 a2 ae ec 48 3f")
    vm_side.data_to_send()
    vm_side.abort()
    assert vm_side.data_to_send() == h("ff fa e8 30 ff f0")  # empty, as ESXi sends it
    assert vm_side.cookie is None


@pytest.mark.parametrize(
    "wire",
    [
        "ff fa e8 29 01 02 03 04 05 ff f0",  # GOAHEAD, no BEGIN
        "ff fa e8 2b 01 02 03 04 ff f0",  # NOTNOW, no BEGIN
        "ff fa e8 28 01 02 03 04 ff f0",  # BEGIN is ours to send
        "ff fa e8 00 00 01 ff f0",  # KS-1 is ours to send
        "ff fa e8 03 01 02 ff f0",  # malformed RCVD-2
    ],
)
def test_out_of_turn_commands_are_notices_without_reply(wire: str) -> None:
    vm_side = announced_source()
    events = vm_side.receive_data(h(wire))
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert vm_side.data_to_send() == b""


def test_unknown_code_gets_rcvd1_and_rcvd2_is_reported() -> None:
    vm_side = announced_source()
    assert vm_side.receive_data(h("ff fa e8 63 7a 7a ff f0")) == []
    assert vm_side.data_to_send() == h("ff fa e8 02 63 ff f0")
    assert vm_side.receive_data(h("ff fa e8 03 54 ff f0")) == [vm.UnknownSuboptionRcvd2(0x54)]
    assert vm_side.receive_data(h("ff fa e8 ff f0")) == []  # empty command: nothing
    assert vm_side.data_to_send() == b""


def test_bios_and_location_uuid_answered_in_wire_form() -> None:
    vm_side = announced_source()
    vm_side.receive_data(h("ff fa e8 55 ff f0 ff fa e8 57 ff f0"))
    text = vm.wire_uuid(KEY)
    assert vm_side.data_to_send() == (
        vm.encode(vm.VmBiosUuid(text)) + vm.encode(vm.VmLocationUuid(text))
    )


def test_console_data_both_ways_is_binary_transparent() -> None:
    vm_side = announced_source()
    vm_side.send_data(h("00 11 ff 0d 0a"))
    assert vm_side.data_to_send() == h("00 11 ff ff 0d 0a")
    assert vm_side.receive_data(h("41 ff ff 42")) == [ConsoleInput(b"A\xffB")]


def test_misuse_is_a_local_error() -> None:
    vm_side = esxi()
    with pytest.raises(LocalProtocolError):
        vm_side.begin(SEQ)
    with pytest.raises(LocalProtocolError):
        vm_side.complete(SEQ)
    with pytest.raises(LocalProtocolError):
        vm_side.abort()
    vm_side.connect_source()
    with pytest.raises(LocalProtocolError):
        vm_side.connect_source()
    with pytest.raises(LocalProtocolError):
        vm_side.connect_destination(b"1234")


def test_esxi_known_codes_are_the_capture_list() -> None:
    assert vm.encode(vm.KnownSuboptions1(ESXI_KNOWN_CODES)) == KS1
    assert len(ESXI_KNOWN_CODES) == 22


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 199), max_size=8))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    vm_side = esxi()
    vm_side.connect_source()
    points = sorted({c for c in cuts if 0 < c < len(data)})
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            vm_side.receive_data(data[a:b])
            vm_side.data_to_send()
    except TelnetProtocolError:
        pass


# --- ProxySession <-> EsxiSession -----------------------------------------------------

Chunker = Callable[[bytes], list[bytes]]


@dataclass
class Link:
    """One in-memory connection between a ProxySession and an EsxiSession."""

    proxy: ProxySession
    vm_side: EsxiSession
    chunker: Chunker  # how the "network" segments each write
    proxy_events: list[SessionEvent] = field(default_factory=list)
    vm_events: list[EsxiEvent] = field(default_factory=list)

    def settle(self, rounds: int = 10) -> None:
        """Shuttle bytes both ways until both sides are quiet (never loops)."""
        for _ in range(rounds):
            to_vm, to_proxy = self.proxy.data_to_send(), self.vm_side.data_to_send()
            if not to_vm and not to_proxy:
                return
            for chunk in self.chunker(to_proxy):
                self.proxy_events += self.proxy.receive_data(chunk)
            for chunk in self.chunker(to_vm):
                self.vm_events += self.vm_side.receive_data(chunk)
        raise AssertionError("the two sides keep talking: a negotiation loop")

    def take(self) -> tuple[list[SessionEvent], list[EsxiEvent]]:
        """Events since the last call, adjacent data runs merged."""
        got = (_merge_proxy(self.proxy_events), _merge_vm(self.vm_events))
        self.proxy_events, self.vm_events = [], []
        return got


def _merge_proxy(events: list[SessionEvent]) -> list[SessionEvent]:
    merged: list[SessionEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, VmData) and isinstance(last, VmData):
            merged[-1] = VmData(last.payload + event.payload)
        else:
            merged.append(event)
    return merged


def _merge_vm(events: list[EsxiEvent]) -> list[EsxiEvent]:
    merged: list[EsxiEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, ConsoleInput) and isinstance(last, ConsoleInput):
            merged[-1] = ConsoleInput(last.payload + event.payload)
        else:
            merged.append(event)
    return merged


def connect(vm_side: EsxiSession, chunker: Chunker, cookie: bytes | None = None) -> Link:
    proxy = ProxySession()
    proxy.initiate()
    if cookie is None:
        vm_side.connect_source()
    else:
        vm_side.connect_destination(cookie)
    link = Link(proxy, vm_side, chunker)
    link.settle()
    return link


def _random_chunker(seed: int) -> Chunker:
    rng = random.Random(seed)

    def chunker(data: bytes) -> list[bytes]:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 4))) if data else []
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    return chunker


CHUNKERS: dict[str, Chunker] = {
    "whole": lambda data: [data],
    "bytewise": lambda data: [data[i : i + 1] for i in range(len(data))],
    "random": _random_chunker(7),
}


def run_conversation(chunker: Chunker) -> list[tuple[str, object]]:
    """Identify, exchange data, migrate A -> B; return everything each side saw."""
    transcript: list[tuple[str, object]] = []

    def record(name: str, link: Link) -> tuple[list[SessionEvent], list[EsxiEvent]]:
        proxy_events, vm_events = link.take()
        transcript.extend((f"{name} proxy", e) for e in proxy_events)
        transcript.extend((f"{name} vm", e) for e in vm_events)
        return proxy_events, vm_events

    # A fresh source connection: options, KS, DO-PROXY, identification.
    a = connect(esxi(), chunker)
    proxy_events, vm_events = record("A", a)
    assert proxy_events == [
        ProxyRequested("S", "vSPC.py", None, accepted=True),
        VmIdentified(KEY),
        VmNamed("vm-00000"),
    ]
    assert vm_events == [vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES), ProxyAnswer(True)]
    assert a.proxy.uuid == KEY

    # Data both ways, 0xff and NUL included.
    a.vm_side.send_data(b"boot\x00\xff\r\n")
    a.proxy.send_data(b"root\xff\r")
    a.settle()
    proxy_events, vm_events = record("A", a)
    assert proxy_events == [VmData(b"boot\x00\xff\r\n")]
    assert vm_events == [ConsoleInput(b"root\xff\r")]

    # BEGIN -> the hub says GOAHEAD with a secret holding 0xff.
    a.vm_side.begin(SEQ)
    a.settle()
    proxy_events, _ = record("A", a)
    assert proxy_events == [vm.VMotionBegin(SEQ)]
    a.proxy.goahead(SEQ, SECRET)
    a.settle()
    _, vm_events = record("A", a)
    assert vm_events == [Goahead(SECRET)]
    cookie = a.vm_side.cookie
    assert cookie == SEQ + SECRET

    # The destination host connects with the cookie; the hub checks it: PEER-OK.
    b = connect(esxi(), chunker, cookie=cookie)
    proxy_events, vm_events = record("B", b)
    assert proxy_events == [vm.VMotionPeer(cookie), VmIdentified(KEY), VmNamed("vm-00000")]
    assert vm_events == [vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES)]  # no proxy answer
    b.proxy.peer_ok(SEQ)
    b.settle()
    _, vm_events = record("B", b)
    assert vm_events == [PeerOk(SEQ)]

    # COMPLETE on the destination; data now flows there.
    b.vm_side.complete(SEQ)
    b.vm_side.send_data(b"login: ")
    b.proxy.send_data(b"\xff\xff")
    b.settle()
    proxy_events, vm_events = record("B", b)
    assert proxy_events == [vm.VMotionComplete(SEQ), VmData(b"login: ")]
    assert vm_events == [ConsoleInput(b"\xff\xff")]
    return transcript


@pytest.mark.parametrize("segmentation", list(CHUNKERS))
def test_conversation_source_identify_data_and_vmotion(segmentation: str) -> None:
    run_conversation(CHUNKERS[segmentation])


def test_conversation_is_the_same_however_the_network_segments() -> None:
    whole = run_conversation(CHUNKERS["whole"])
    assert run_conversation(CHUNKERS["bytewise"]) == whole
    for seed in range(5):
        assert run_conversation(_random_chunker(seed)) == whole


def test_conversation_notnow_then_abort() -> None:
    a = connect(esxi(), CHUNKERS["whole"])
    a.take()
    a.vm_side.begin(h("cd 52 67 55"))
    a.settle()
    a.proxy.notnow(h("cd 52 67 55"))
    a.settle()
    assert a.take()[1] == [NotNow(h("cd 52 67 55"))]
    a.vm_side.begin(h("61 ed 26 a2"))
    a.settle()
    a.proxy.goahead(h("61 ed 26 a2"), h("ae ec 48 3f"))
    a.settle()
    assert a.take()[1] == [Goahead(h("ae ec 48 3f"))]
    a.vm_side.abort()
    a.vm_side.send_data(b"x")
    a.settle()
    assert a.take() == ([vm.VMotionAbort(), VmData(b"x")], [])


def test_conversation_with_a_client_direction_port() -> None:
    vm_side = EsxiSession(KEY, "db01", service_uri="vSPC.py?port=com2", direction="C")
    a = connect(vm_side, CHUNKERS["whole"])
    proxy_events, vm_events = a.take()
    assert ProxyRequested("C", "vSPC.py?port=com2", "com2", accepted=False) in proxy_events
    assert ProxyAnswer(False) in vm_events
