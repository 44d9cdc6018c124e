"""Option-232 commands <-> events, UUID forms and serviceURI parsing.

docs/protocol.md §1 (framing, 0xff doubling, opaque fields), §2 (command table), §3.3
(DO-PROXY, `?port=`), §3.4 (UUID wire form and canonical key).
"""

from __future__ import annotations

import typing
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common import vmware as vm
from vspc.common.telnet import Subnegotiation, TelnetCodec

FAST = settings(max_examples=300, deadline=None)

# Opaque fields: random bytes, biased towards 0xff, NUL and IAC SE so escaping is hit.
_OPAQUE = st.binary(max_size=24) | st.lists(
    st.sampled_from([0xFF, 0x00, 0xF0, 0xFA, 0x41]), max_size=12
).map(bytes)
_TEXT = st.text(max_size=40)
_CODE = st.integers(0, 255)
_UNLISTED = _CODE.filter(lambda c: c not in set(vm.Code))

# One strategy per event class, so every class is exercised (and none forgotten).
BY_TYPE: dict[type, st.SearchStrategy[vm.VmwareEvent]] = {
    vm.KnownSuboptions1: st.builds(vm.KnownSuboptions1, _OPAQUE),
    vm.KnownSuboptions2: st.builds(vm.KnownSuboptions2, _OPAQUE),
    vm.UnknownSuboptionRcvd1: st.builds(vm.UnknownSuboptionRcvd1, _CODE),
    vm.UnknownSuboptionRcvd2: st.builds(vm.UnknownSuboptionRcvd2, _CODE),
    vm.VMotionBegin: st.builds(vm.VMotionBegin, _OPAQUE),
    vm.VMotionGoahead: st.builds(vm.VMotionGoahead, _OPAQUE),
    vm.VMotionNotNow: st.builds(vm.VMotionNotNow, _OPAQUE),
    vm.VMotionPeer: st.builds(vm.VMotionPeer, _OPAQUE),
    vm.VMotionPeerOk: st.builds(vm.VMotionPeerOk, _OPAQUE),
    vm.VMotionComplete: st.builds(vm.VMotionComplete, _OPAQUE),
    vm.VMotionAbort: st.builds(vm.VMotionAbort, _OPAQUE),
    vm.DoProxy: st.builds(vm.DoProxy, st.sampled_from(["S", "C"]), _TEXT),
    vm.WillProxy: st.just(vm.WillProxy()),
    vm.WontProxy: st.just(vm.WontProxy()),
    vm.VmVcUuid: st.builds(vm.VmVcUuid, _TEXT),
    vm.GetVmVcUuid: st.just(vm.GetVmVcUuid()),
    vm.VmName: st.builds(vm.VmName, _TEXT),
    vm.GetVmName: st.just(vm.GetVmName()),
    vm.VmBiosUuid: st.builds(vm.VmBiosUuid, _TEXT),
    vm.GetVmBiosUuid: st.just(vm.GetVmBiosUuid()),
    vm.VmLocationUuid: st.builds(vm.VmLocationUuid, _TEXT),
    vm.GetVmLocationUuid: st.just(vm.GetVmLocationUuid()),
    vm.Unsupported: st.builds(vm.Unsupported, _UNLISTED, _OPAQUE)
    # A listed one-byte code with a body of the wrong size stays Unsupported.
    | st.builds(
        vm.Unsupported,
        st.sampled_from([vm.Code.UNKNOWN_SUBOPTION_RCVD_1, vm.Code.UNKNOWN_SUBOPTION_RCVD_2]),
        _OPAQUE.filter(lambda b: len(b) != 1),
    ),
}


def test_every_event_type_has_a_strategy() -> None:
    assert set(BY_TYPE) == set(typing.get_args(vm.VmwareEvent))


def wire_round_trip(event: vm.VmwareEvent) -> vm.VmwareEvent | None:
    """Encode, parse the frame with the telnet codec, decode the payload."""
    events = TelnetCodec().receive_data(vm.encode(event))
    assert len(events) == 1  # every 0xff doubled: the frame cannot end early
    (frame,) = events
    assert isinstance(frame, Subnegotiation) and frame.option == 0xE8
    assert frame.payload == vm.payload_of(event)
    return vm.decode(frame.payload)


@pytest.mark.parametrize("kind", list(BY_TYPE), ids=lambda kind: kind.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip(kind: type, data: st.DataObject) -> None:
    event = data.draw(BY_TYPE[kind])
    assert type(event) is kind
    assert wire_round_trip(event) == event


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (vm.VMotionBegin(bytes.fromhex("76 19 ff e9")), "ff fa e8 28 76 19 ff ff e9 ff f0"),
        (
            vm.VMotionGoahead(bytes.fromhex("76 19 ff e9 ff 00 ff 10")),
            "ff fa e8 29 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0",
        ),
        (vm.VMotionNotNow(bytes.fromhex("cd 52 67 55")), "ff fa e8 2b cd 52 67 55 ff f0"),
        (vm.VMotionPeerOk(bytes.fromhex("76 19 ff e9")), "ff fa e8 2d 76 19 ff ff e9 ff f0"),
        (vm.VMotionAbort(), "ff fa e8 30 ff f0"),
        (vm.DoProxy("S", "vSPC.py"), "ff fa e8 46 53 76 53 50 43 2e 70 79 ff f0"),
        (vm.WillProxy(), "ff fa e8 47 ff f0"),
        (vm.WontProxy(), "ff fa e8 49 ff f0"),
        (vm.GetVmVcUuid(), "ff fa e8 51 ff f0"),
        (vm.GetVmName(), "ff fa e8 53 ff f0"),
        (vm.VmName("vm-00000"), "ff fa e8 52 76 6d 2d 30 30 30 30 30 ff f0"),
        (vm.UnknownSuboptionRcvd2(0x54), "ff fa e8 03 54 ff f0"),
        (vm.UnknownSuboptionRcvd2(0xFF), "ff fa e8 03 ff ff ff f0"),
        (
            vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES),
            "ff fa e8 01 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 52 53 ff f0",
        ),
    ],
)
def test_encode_matches_the_capture(event: vm.VmwareEvent, wire: str) -> None:
    assert vm.encode(event) == bytes.fromhex(wire)


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        ("", None),  # `ff fa e8 ff f0`: no code (docs/protocol.md §1 rule 6)
        ("30", vm.VMotionAbort()),
        ("02 51", vm.UnknownSuboptionRcvd1(0x51)),
        ("02 51 52", vm.Unsupported(2, b"\x51\x52")),
        ("03", vm.Unsupported(3, b"")),
        ("46", vm.DoProxy("", "")),
        ("46 43", vm.DoProxy("C", "")),
        ("2a", vm.Unsupported(0x2A)),
        ("2f 01", vm.Unsupported(0x2F, b"\x01")),
        ("48", vm.Unsupported(0x48)),
        ("52 76 ff", vm.VmName("v\ufffd")),
        ("00 00 01 02", vm.KnownSuboptions1(b"\x00\x01\x02")),
    ],
)
def test_decode_table(payload: str, event: vm.VmwareEvent | None) -> None:
    assert vm.decode(bytes.fromhex(payload)) == event


def test_do_proxy_direction_is_raw_text() -> None:
    event = vm.decode(b"\x46XvSPC.py")
    assert event == vm.DoProxy("X", "vSPC.py")
    assert vm.Direction(vm.DoProxy("S", "").direction) is vm.Direction.SERVER
    with pytest.raises(ValueError):
        vm.Direction("X")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda c, b: bytes([c]) + b, _CODE, _OPAQUE))
def test_decode_never_raises(payload: bytes) -> None:
    event = vm.decode(payload)
    assert (event is None) == (payload == b"")
    if event is not None:
        # Whatever it decoded to encodes to a frame that carries the same code.
        assert vm.payload_of(event)[0] == payload[0]


# --- UUIDs ------------------------------------------------------------------------------

KEY = "0123456789abcdeffedcba9800000000"
WIRE_TEXT = "01 23 45 67 89 ab cd ef-fe dc ba 98 00 00 00 00"


@pytest.mark.parametrize(
    "text",
    [
        WIRE_TEXT,  # ESXi's wire form, 47 characters
        WIRE_TEXT.upper(),
        "01234567-89ab-cdef-fedc-ba9800000000",  # 8-4-4-4-12
        "0123456789ABCDEFFEDCBA9800000000",  # vmware/vspc
        "0123456789abcdef-fedcba9800000000",  # pbhenson/vSPC.py
        KEY,
        " 0123456789abcdeffedcba9800000000 ",
        "01-23-45-67-89-ab-cd-ef-fe-dc-ba-98-00-00-00-00",
    ],
)
def test_canonical_uuid_accepts(text: str) -> None:
    assert vm.canonical_uuid(text) == KEY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0123456789abcdeffedcba980000000",  # 31 digits
        "0123456789abcdeffedcba98000000000",  # 33 digits
        "0123456789abcdeffedcba980000000g",
        "{01234567-89ab-cdef-fedc-ba9800000000}",
        "urn:uuid:01234567-89ab-cdef-fedc-ba9800000000",
        "01 23 45 67 89 ab cd ef\tfe dc ba 98 00 00 00 00",
        "01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:00:00:00:00",
        "0123456789abcdeffedcba98000000\u0660\u0660",  # Arabic-Indic zeros are not hex
        "0x23456789abcdeffedcba9800000000",
        "not a uuid",
    ],
)
def test_canonical_uuid_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad VM-VC-UUID"):
        vm.canonical_uuid(text)


def test_display_uuid() -> None:
    assert vm.display_uuid(KEY) == "01234567-89ab-cdef-fedc-ba9800000000"


def test_wire_uuid_matches_esxi() -> None:
    assert vm.wire_uuid(KEY) == WIRE_TEXT
    assert len(vm.wire_uuid(KEY)) == 47


_KEYS = st.builds(lambda n: f"{n:032x}", st.integers(0, 2**128 - 1))


@FAST
@given(_KEYS)
def test_uuid_forms_round_trip(key: str) -> None:
    assert vm.canonical_uuid(vm.wire_uuid(key)) == key
    assert vm.canonical_uuid(vm.display_uuid(key)) == key
    assert vm.canonical_uuid(key.upper()) == key
    assert uuid.UUID(vm.display_uuid(key)).hex == key
    assert len(vm.wire_uuid(key)) == 47


# --- serviceURI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("vSPC.py", ("vSPC.py", None)),
        ("vSPC.py?port=console2", ("vSPC.py", "console2")),
        ("vSPC.py?port", ("vSPC.py", "")),  # malformed, still defined (TV-31)
        ("vSPC.py?port=", ("vSPC.py", "")),
        ("vSPC.py?port=a&port=b", ("vSPC.py", "a")),  # the first one wins
        ("vSPC.py?other=1", ("vSPC.py", None)),
        ("vSPC.py?other=1&port=x", ("vSPC.py", "x")),
        ("vSPC.py?", ("vSPC.py", None)),
        ("vSPC.py?port=a%20b", ("vSPC.py", "a b")),
        ("vSPC.py?port=a?b", ("vSPC.py", "a?b")),  # only the first "?" splits
        ("", ("", None)),
        ("?port=x", ("", "x")),
    ],
)
def test_parse_service_uri(uri: str, expected: tuple[str, str | None]) -> None:
    assert vm.parse_service_uri(uri) == expected


@FAST
@given(_TEXT)
def test_parse_service_uri_never_raises(uri: str) -> None:
    base, label = vm.parse_service_uri(uri)
    assert uri.startswith(base)
