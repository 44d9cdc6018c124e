"""ProxySession: the proxy side of one VM connection, driven without sockets.

Synthetic vectors TV-20 ... TV-25 and TV-31 of docs/protocol.md §6.5, plus the §3.2 rules for
KNOWN-SUBOPTIONS-2, the caller-misuse errors, and arbitrary input.  The test plays the
hub: it calls `goahead()`, `notnow()` and `peer_ok()` itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common import vmware as vm
from vspc.common.session import (
    LocalProtocolError,
    Notice,
    ProxyRequested,
    ProxySession,
    SessionEvent,
    TelnetProtocolError,
    VmData,
    VmIdentified,
    VmNamed,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


KS1 = h("ff fa e8 00 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 54 55 56 57 52 53 ff f0")
KS2 = h("ff fa e8 01 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 52 53 ff f0")
DO_PROXY = h("ff fa e8 46 53 76 53 50 43 2e 70 79 ff f0")  # S vSPC.py
WILL_PROXY = h("ff fa e8 47 ff f0")
WONT_PROXY = h("ff fa e8 49 ff f0")
GETS = h("ff fa e8 51 ff f0 ff fa e8 53 ff f0")
VM_VC_UUID = h(
    "ff fa e8 50 30 31 20 32 33 20 34 35 20 36 37 20 38 39 20 61 62 20 63 64 20 65 66 2d"
    " 66 65 20 64 63 20 62 61 20 39 38 20 30 30 20 30 30 20 30 30 20 30 30 ff f0"
)
VM_NAME = h("ff fa e8 52 76 6d 2d 30 30 30 30 30 ff f0")
# What ESXi sends before KS-1 (connection A of the capture, docs/protocol.md §3.1).
OPTIONS = h("ff fb 25 ff fd 00 ff fd 03 ff fd 01 ff fb 00 ff fb 03 ff fb e8")
OPENING_REPLIES = h("ff fe 25 ff fc 01") + KS2


def merge(events: Iterable[SessionEvent]) -> list[SessionEvent]:
    """Merge adjacent VmData events (chunking may split a run)."""
    merged: list[SessionEvent] = []
    for event in events:
        if isinstance(event, VmData) and merged and isinstance(merged[-1], VmData):
            merged[-1] = VmData(merged[-1].payload + event.payload)
        else:
            merged.append(event)
    return merged


def session() -> ProxySession:
    """A fresh session whose opening offers were already drained."""
    proxy = ProxySession()
    proxy.initiate()
    assert proxy.data_to_send() == h("ff fb 00 ff fb 03 ff fd 00 ff fd 03 ff fd e8")
    return proxy


def opened() -> ProxySession:
    """A session past option negotiation, KS-1 and identification (source, S vSPC.py)."""
    proxy = session()
    proxy.receive_data(OPTIONS)
    assert proxy.data_to_send() == OPENING_REPLIES
    proxy.receive_data(KS1 + DO_PROXY + VM_VC_UUID + VM_NAME)
    assert proxy.data_to_send() == GETS + WILL_PROXY
    return proxy


def test_opening_identifies_the_vm() -> None:
    proxy = session()
    proxy.receive_data(OPTIONS)
    proxy.data_to_send()
    events = proxy.receive_data(KS1 + DO_PROXY + VM_VC_UUID + VM_NAME)
    assert events == [
        ProxyRequested("S", "vSPC.py", None, accepted=True),
        VmIdentified("0123456789abcdeffedcba9800000000"),
        VmNamed("vm-00000"),
    ]
    assert (proxy.uuid, proxy.name) == ("0123456789abcdeffedcba9800000000", "vm-00000")


def test_bad_uuid_is_a_notice_not_an_identity() -> None:
    proxy = opened()
    events = proxy.receive_data(vm.encode(vm.VmVcUuid("not a uuid")))
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert proxy.uuid == "0123456789abcdeffedcba9800000000"  # unchanged
    assert proxy.data_to_send() == b""


def test_vm_name_with_bad_utf8_is_replaced() -> None:
    proxy = opened()
    assert proxy.receive_data(h("ff fa e8 52 76 6d ff ff 2d ff f0")) == [VmNamed("vm\ufffd-")]


# --- TV-20: binary transparency -------------------------------------------------------

TV20_WIRE = h("00 11 ff ff 0d 0a 0d 00 41")
TV20_DATA = h("00 11 ff 0d 0a 0d 00 41")


def test_tv20_vm_data_is_binary_transparent() -> None:
    proxy = opened()
    assert proxy.receive_data(TV20_WIRE) == [VmData(TV20_DATA)]
    assert proxy.data_to_send() == b""


@pytest.mark.parametrize("cut", range(1, len(TV20_WIRE)))
def test_tv20_any_split_gives_the_same_bytes(cut: int) -> None:
    proxy = opened()
    events = proxy.receive_data(TV20_WIRE[:cut]) + proxy.receive_data(TV20_WIRE[cut:])
    assert merge(events) == [VmData(TV20_DATA)]


def test_tv20_client_data_is_escaped_for_the_vm() -> None:
    proxy = opened()
    proxy.send_data(TV20_DATA)
    assert proxy.data_to_send() == TV20_WIRE


# --- TV-21: unsupported codes get RCVD-2 ----------------------------------------------


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        ("ff fa e8 54 30 31 32 ff f0", "ff fa e8 03 54 ff f0"),  # VM-BIOS-UUID: not in KS-2
        ("ff fa e8 63 7a 7a ff f0", "ff fa e8 03 63 ff f0"),
        ("ff fa e8 55 ff f0", "ff fa e8 03 55 ff f0"),
        ("ff fa e8 56 41 ff f0", "ff fa e8 03 56 ff f0"),
        ("ff fa e8 57 ff f0", "ff fa e8 03 57 ff f0"),
        ("ff fa e8 2a ff f0", "ff fa e8 03 2a ff f0"),  # the gaps 42, 47 and 72
        ("ff fa e8 2f 01 ff f0", "ff fa e8 03 2f ff f0"),
        ("ff fa e8 48 ff f0", "ff fa e8 03 48 ff f0"),
        ("ff fa e8 ff ff 00 ff f0", "ff fa e8 03 ff ff ff f0"),  # code 0xff, escaped
    ],
)
def test_tv21_unsupported_code_gets_exact_rcvd2(wire: str, reply: str) -> None:
    proxy = opened()
    assert proxy.receive_data(h(wire)) == []
    assert proxy.data_to_send() == h(reply)


@pytest.mark.parametrize(
    "event",
    [
        vm.KnownSuboptions2(b"\x00"),
        vm.UnknownSuboptionRcvd2(0x28),
        vm.VMotionGoahead(b"1234abcd"),
        vm.VMotionNotNow(b"1234"),
        vm.VMotionPeerOk(b"1234"),
        vm.WillProxy(),
        vm.WontProxy(),
        vm.GetVmVcUuid(),
        vm.GetVmName(),
    ],
)
def test_listed_proxy_only_code_from_the_vm_is_a_notice(event: vm.VmwareEvent) -> None:
    # Listed in our KS-2, so RCVD-2 would be a lie; it is odd, so log it.
    proxy = opened()
    events = proxy.receive_data(vm.encode(event))
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert proxy.data_to_send() == b""


def test_malformed_listed_command_is_a_notice_without_rcvd2() -> None:
    proxy = opened()
    events = proxy.receive_data(h("ff fa e8 02 51 52 ff f0"))  # RCVD-1 with two bytes
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert proxy.data_to_send() == b""


# --- TV-22: RCVD-1 disables a code ----------------------------------------------------


def test_tv22_rcvd1_is_not_answered_and_disables_the_code() -> None:
    proxy = session()
    proxy.receive_data(OPTIONS)
    proxy.data_to_send()
    events = proxy.receive_data(h("ff fa e8 02 51 ff f0"))
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert proxy.data_to_send() == b""
    proxy.receive_data(KS1)
    out = proxy.data_to_send()
    assert h("ff fa e8 51") not in out  # GET-VM-VC-UUID never sent again
    assert out == h("ff fa e8 53 ff f0")  # GET-VM-NAME still is


def test_tv22_rcvd1_for_rcvd2_silences_rcvd2() -> None:
    proxy = opened()
    proxy.receive_data(h("ff fa e8 02 03 ff f0"))
    proxy.receive_data(h("ff fa e8 63 ff f0"))
    assert proxy.data_to_send() == b""


# --- TV-23: PEER with an unknown cookie -----------------------------------------------


def test_tv23_peer_is_only_reported() -> None:
    proxy = session()
    proxy.receive_data(OPTIONS)
    proxy.data_to_send()
    events = proxy.receive_data(KS1 + h("ff fa e8 2c 01 02 03 04 05 06 07 08 ff f0"))
    assert events == [vm.VMotionPeer(h("01 02 03 04 05 06 07 08"))]
    out = proxy.data_to_send()
    assert out == GETS  # no PEER-OK: the hub did not accept it
    assert h("ff fa e8 2d") not in out


def test_tv23_peer_ok_only_when_the_caller_accepts() -> None:
    proxy = session()
    proxy.receive_data(KS1 + h("ff fa e8 2c 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0"))
    proxy.data_to_send()
    proxy.peer_ok(h("76 19 ff e9"))
    assert proxy.data_to_send() == h("ff fa e8 2d 76 19 ff ff e9 ff f0")
    with pytest.raises(LocalProtocolError):
        proxy.peer_ok(h("76 19 ff e9"))  # one PEER, one PEER-OK


# --- TV-24: stray COMPLETE / ABORT ----------------------------------------------------


def test_tv24_stray_complete_and_abort_are_events_without_bytes() -> None:
    proxy = opened()
    events = proxy.receive_data(h("ff fa e8 2e 09 09 09 09 ff f0 ff fa e8 30 ff f0"))
    assert events == [vm.VMotionComplete(h("09 09 09 09")), vm.VMotionAbort()]
    assert proxy.data_to_send() == b""
    assert proxy.receive_data(h("ff fa e8 28 0a 0b 0c 0d ff f0")) == [
        vm.VMotionBegin(h("0a 0b 0c 0d"))
    ]
    proxy.goahead(h("0a 0b 0c 0d"), h("01 02 03 04"))
    assert proxy.data_to_send() == h("ff fa e8 29 0a 0b 0c 0d 01 02 03 04 ff f0")


# --- TV-25: empty command, every split ------------------------------------------------


def test_tv25_empty_vmware_command_is_ignored() -> None:
    proxy = opened()
    assert proxy.receive_data(h("ff fa e8 ff f0")) == []
    assert proxy.data_to_send() == b""


TV25_WIRE = (
    OPTIONS
    + KS1
    + h("ff fa e8 ff f0")
    + DO_PROXY
    + h("ff fa e8 2c 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0 ff fb 2c")
    + VM_VC_UUID
    + h("41 ff ff 42 ff fa e8 63 ff f0 43")
    + VM_NAME
    + h("ff fa e8 28 76 19 ff ff e9 ff f0 ff fa e8 2e 01 ff f0 ff fa e8 30 ff f0 44")
)


def replay(chunks: Iterable[bytes]) -> tuple[list[SessionEvent], bytes]:
    """Feed `chunks` to a fresh session; the merged events and every byte it queued."""
    proxy = ProxySession()
    proxy.initiate()
    events: list[SessionEvent] = []
    for chunk in chunks:
        events += proxy.receive_data(chunk)
    return merge(events), proxy.data_to_send()


def test_tv25_every_split_gives_the_same_events_and_bytes() -> None:
    whole = replay([TV25_WIRE])
    assert vm.VMotionBegin(h("76 19 ff e9")) in whole[0]
    assert VmData(b"A\xffBC") in whole[0]
    for cut in range(1, len(TV25_WIRE)):
        assert replay([TV25_WIRE[:cut], TV25_WIRE[cut:]]) == whole, cut


def test_tv25_byte_at_a_time_gives_the_same_events_and_bytes() -> None:
    one_by_one = [TV25_WIRE[i : i + 1] for i in range(len(TV25_WIRE))]
    assert replay(one_by_one) == replay([TV25_WIRE])


def test_tv25_segment_ending_in_iac() -> None:
    proxy = opened()
    assert proxy.receive_data(h("41 ff")) == [VmData(b"A")]
    assert proxy.receive_data(h("ff 42 ff")) == [VmData(b"\xffB")]
    assert proxy.receive_data(h("fa e8 28 01 ff")) == []
    assert proxy.receive_data(h("ff ff")) == []
    assert proxy.receive_data(h("f0")) == [vm.VMotionBegin(h("01 ff"))]


def test_replies_keep_the_order_of_the_requests_in_one_segment() -> None:
    # The destination's segment `<KS-1> <PEER> IAC WILL 2c` (docs/protocol.md §3.5): the GETs
    # answer KS-1, which comes first, so they precede `IAC DONT 2c`, whatever the
    # segmentation.  (Fed whole, the segment used to put DONT 2c first: see `_pieces`.)
    segment = KS1 + h("ff fa e8 2c 01 02 03 04 05 06 07 08 ff f0 ff fb 2c")
    whole = replay([segment])[1]
    assert whole.endswith(GETS + h("ff fe 2c"))
    assert replay([segment[i : i + 1] for i in range(len(segment))])[1] == whole


# --- TV-31: DO-PROXY directions and queries -------------------------------------------


@pytest.mark.parametrize(
    ("body", "reply", "expected"),
    [
        (b"CvSPC.py", WONT_PROXY, ProxyRequested("C", "vSPC.py", None, accepted=False)),
        (b"SvSPC.py?port", WILL_PROXY, ProxyRequested("S", "vSPC.py?port", "", accepted=True)),
        (
            b"SvSPC.py?port=console2",
            WILL_PROXY,
            ProxyRequested("S", "vSPC.py?port=console2", "console2", accepted=True),
        ),
        (b"", WONT_PROXY, ProxyRequested("", "", None, accepted=False)),
        (b"X", WONT_PROXY, ProxyRequested("X", "", None, accepted=False)),
    ],
)
def test_tv31_do_proxy_gets_a_defined_answer(
    body: bytes, reply: bytes, expected: ProxyRequested
) -> None:
    proxy = session()
    proxy.receive_data(OPTIONS)
    proxy.data_to_send()
    assert proxy.receive_data(h("ff fa e8 46") + body + h("ff f0")) == [expected]
    assert proxy.data_to_send() == reply
    assert proxy.proxy == expected


def test_tv31_c_exact_wont_proxy_bytes() -> None:
    proxy = session()
    proxy.receive_data(h("ff fa e8 46 43 76 53 50 43 2e 70 79 ff f0"))
    assert proxy.data_to_send() == h("ff fa e8 49 ff f0")


def test_do_proxy_policy_is_the_callers() -> None:
    proxy = ProxySession(accept_proxy=lambda request: True)
    proxy.receive_data(h("ff fa e8 46 43 76 53 50 43 2e 70 79 ff f0"))
    assert proxy.data_to_send() == WILL_PROXY


def test_do_proxy_is_answered_once() -> None:
    proxy = opened()
    events = proxy.receive_data(DO_PROXY)
    assert len(events) == 1 and isinstance(events[0], Notice)
    assert proxy.data_to_send() == b""


# --- KNOWN-SUBOPTIONS-2 (§3.2, TV-04) -------------------------------------------------


def test_ks2_goes_out_when_232_is_agreed_and_answers_the_first_ks1() -> None:
    proxy = session()
    proxy.receive_data(h("ff fb e8"))
    assert proxy.data_to_send() == KS2
    proxy.receive_data(KS1)
    assert proxy.data_to_send() == GETS  # the early KS-2 already answered this KS-1


def test_ks2_at_most_once_per_ks1_and_identical() -> None:
    proxy = session()
    proxy.receive_data(h("ff fb e8") + KS1)
    assert proxy.data_to_send().count(KS2) == 1
    for _ in range(3):
        proxy.receive_data(KS1)
        assert proxy.data_to_send() == KS2  # no second GETs either
    proxy.receive_data(KS1 + KS1)
    assert proxy.data_to_send() == KS2 + KS2


def test_ks2_without_option_negotiation() -> None:
    proxy = session()
    proxy.receive_data(KS1)
    assert proxy.data_to_send() == KS2 + GETS
    proxy.receive_data(h("ff fb e8"))  # 232 agreed late: KS-2 was already sent
    assert proxy.data_to_send() == b""


def test_ks2_lists_the_vmotion_codes() -> None:
    for code in h("03 28 29 2b 2c 2d 2e 30"):
        assert code in vm.PROXY_KNOWN_CODES


def test_gets_only_for_codes_the_vm_lists() -> None:
    proxy = session()
    proxy.receive_data(h("ff fa e8 00 00 01 53 ff f0"))
    assert proxy.data_to_send() == KS2 + h("ff fa e8 53 ff f0")


# --- vMotion replies and caller misuse ------------------------------------------------


def test_goahead_escapes_sequence_and_secret() -> None:
    # TV-15 with the secret hook of §6.4: every 0xff doubled.
    proxy = opened()
    proxy.receive_data(h("ff fa e8 28 76 19 ff ff e9 ff f0"))
    proxy.goahead(h("76 19 ff e9"), h("ff 00 ff 10"))
    assert proxy.data_to_send() == h("ff fa e8 29 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0")


def test_goahead_follows_client_data_queued_before_it() -> None:
    # docs/protocol.md §4.4 duty 1: one ordered buffer.
    proxy = opened()
    proxy.send_data(b"ab\xff")
    proxy.receive_data(h("ff fa e8 28 44 da 87 f1 ff f0"))
    proxy.goahead(h("44 da 87 f1"), h("3c e6 4d ab"))
    assert proxy.data_to_send() == b"ab\xff\xff" + h("ff fa e8 29 44 da 87 f1 3c e6 4d ab ff f0")


def test_notnow_is_the_sequence_only() -> None:
    proxy = opened()
    proxy.receive_data(h("ff fa e8 28 cd 52 67 55 ff f0"))
    proxy.notnow(h("cd 52 67 55"))
    assert proxy.data_to_send() == h("ff fa e8 2b cd 52 67 55 ff f0")


def test_goahead_without_begin_is_local_error() -> None:
    proxy = opened()
    with pytest.raises(LocalProtocolError):
        proxy.goahead(h("01 02 03 04"), h("05 06 07 08"))
    with pytest.raises(LocalProtocolError):
        proxy.notnow(h("01 02 03 04"))
    assert proxy.data_to_send() == b""


def test_begin_is_answered_once() -> None:
    proxy = opened()
    proxy.receive_data(h("ff fa e8 28 01 02 03 04 ff f0"))
    proxy.goahead(h("01 02 03 04"), h("05 06 07 08"))
    with pytest.raises(LocalProtocolError):
        proxy.notnow(h("01 02 03 04"))
    with pytest.raises(LocalProtocolError):
        proxy.goahead(h("01 02 03 04"), h("05 06 07 08"))
    with pytest.raises(LocalProtocolError):
        proxy.goahead(h("01 02 03"), h("04 05 06 07 08"))  # not the pending sequence


def test_peer_ok_without_peer_is_local_error() -> None:
    proxy = opened()
    with pytest.raises(LocalProtocolError):
        proxy.peer_ok(h("01 02 03 04"))
    proxy.receive_data(h("ff fa e8 2c 01 02 03 04 05 06 07 08 ff f0"))
    with pytest.raises(LocalProtocolError):
        proxy.peer_ok(h("09 02 03 04"))
    assert proxy.data_to_send() == b""


# --- arbitrary input ------------------------------------------------------------------

_BYTE = st.one_of(
    st.sampled_from([0xFF, 0xFA, 0xF0, 0xE8, 0xFB, 0xFD, 0x00, 0x02, 0x28, 0x2C, 0x46, 0x50]),
    st.integers(0, 255),
)
_STREAM = st.lists(_BYTE, max_size=150).map(bytes)
# Real commands glued together, so decoded events are reached, not only framing.
_PIECES = st.lists(
    st.sampled_from(
        [KS1, DO_PROXY, VM_VC_UUID, VM_NAME, OPTIONS, h("ff fa e8 ff f0"), h("ff ff 41")]
    )
    | _STREAM,
    max_size=6,
).map(b"".join)


def _outcome(chunks: Iterable[bytes]) -> tuple[list[SessionEvent], bytes] | None:
    proxy = ProxySession(sb_limit=64)
    proxy.initiate()
    events: list[SessionEvent] = []
    try:
        for chunk in chunks:
            events += proxy.receive_data(chunk)
    except TelnetProtocolError:
        return None
    return merge(events), proxy.data_to_send()


@settings(max_examples=300, deadline=None)
@given(_PIECES, st.lists(st.integers(1, 400), max_size=10))
def test_arbitrary_bytes_raise_only_protocol_errors_and_chunking_is_invisible(
    data: bytes, cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    # _outcome lets only TelnetProtocolError through; anything else fails the test.
    assert _outcome(chunks) == _outcome([data])
