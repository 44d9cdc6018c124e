"""TelnetCodec: framing (RFC 854/855), RFC 1143 negotiation, chunk-boundary invariance.

docs/protocol.md §1 (framing rules 2, 4, 5, 6) and §3.1 (negotiation without loops).  The
chunk tests follow h11's `test_chunk_boundaries`: whatever the segmentation, the events,
once adjacent `Data` pieces are merged, and the queued replies are the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common.telnet import (
    Command,
    Data,
    Event,
    Negotiation,
    Opt,
    OptionChanged,
    Subnegotiation,
    TelnetCodec,
    TelnetProtocolError,
    Verb,
    escape,
    subnegotiation,
)

FAST = settings(max_examples=200, deadline=None)


def merge_data(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent `Data` events, so chunking cannot change the comparison."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].payload + event.payload)
        else:
            merged.append(event)
    return merged


def feed(codec: TelnetCodec, chunks: Iterable[bytes]) -> list[Event]:
    return [event for chunk in chunks for event in codec.receive_data(chunk)]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """`data` cut at the given positions (sorted, deduplicated, clipped to the data)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def vm_codec(sb_limit: int = 64 * 1024) -> TelnetCodec:
    """A codec configured like vspcd's VM side (docs/protocol.md §3.1)."""
    return TelnetCodec(
        local_ok=(Opt.BINARY, Opt.SGA),
        remote_ok=(Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT),
        sb_limit=sb_limit,
    )


# --- IAC doubling -----------------------------------------------------------------------


def test_iac_iac_decodes_to_one_data_byte() -> None:
    assert TelnetCodec().receive_data(bytes.fromhex("41 ff ff 42")) == [Data(b"A\xffB")]


def test_send_data_and_escape_double_every_iac() -> None:
    assert escape(b"\xff") == b"\xff\xff"
    assert TelnetCodec().send_data(b"\x00\xff\xff\x11") == b"\x00\xff\xff\xff\xff\x11"


def test_send_data_does_not_touch_the_reply_queue() -> None:
    codec = TelnetCodec()
    codec.offer_local(Opt.BINARY)
    assert codec.send_data(b"x") == b"x"
    assert codec.data_to_send() == bytes.fromhex("ff fb 00")


@FAST
@given(st.binary(max_size=200))
def test_escape_then_receive_round_trips(payload: bytes) -> None:
    assert merge_data(TelnetCodec().receive_data(escape(payload))) == (
        [Data(payload)] if payload else []
    )


def test_binary_data_passes_untouched() -> None:
    # docs/protocol.md §1 rule 5 / TV-20: NUL, XON and CR LF are data, never rewritten.
    wire = bytes.fromhex("00 11 ff ff 0d 0a 0d 00 41")
    assert TelnetCodec().receive_data(wire) == [Data(bytes.fromhex("00 11 ff 0d 0a 0d 00 41"))]


# --- subnegotiation -------------------------------------------------------------------


def test_subnegotiation_payload_is_unescaped() -> None:
    wire = bytes.fromhex("ff fa e8 28 76 19 ff ff e9 ff f0")
    assert TelnetCodec().receive_data(wire) == [
        Subnegotiation(0xE8, bytes.fromhex("28 76 19 ff e9"))
    ]


def test_subnegotiation_helper_doubles_iac_in_payload() -> None:
    assert subnegotiation(0xE8, bytes.fromhex("29 ff 00")) == bytes.fromhex(
        "ff fa e8 29 ff ff 00 ff f0"
    )


def test_subnegotiation_keeps_nul_bytes() -> None:
    wire = bytes.fromhex("ff fa e8 00 00 01 02 00 ff f0")
    assert TelnetCodec().receive_data(wire) == [
        Subnegotiation(0xE8, bytes.fromhex("00 00 01 02 00"))
    ]


def test_data_before_a_command_comes_first_as_one_run() -> None:
    wire = b"ab" + bytes.fromhex("ff ff") + b"c" + bytes.fromhex("ff fa e8 30 ff f0") + b"d"
    assert TelnetCodec().receive_data(wire) == [
        Data(b"ab\xffc"),
        Subnegotiation(0xE8, b"\x30"),
        Data(b"d"),
    ]


@pytest.mark.parametrize("limit", [1, 4, 16])
def test_subnegotiation_at_the_limit_is_accepted(limit: int) -> None:
    payload = bytes([0x41]) * (limit - 1) + b"\xff"  # the escaped IAC counts as one byte
    codec = TelnetCodec(sb_limit=limit)
    assert codec.receive_data(subnegotiation(0xE8, payload)) == [Subnegotiation(0xE8, payload)]


@pytest.mark.parametrize("payload", [b"ABCDE", b"ABCD\xff", b"\xff" * 5])
def test_subnegotiation_over_the_limit_raises(payload: bytes) -> None:
    with pytest.raises(TelnetProtocolError):
        TelnetCodec(sb_limit=4).receive_data(subnegotiation(0xE8, payload))


def test_subnegotiation_over_the_limit_raises_across_chunks() -> None:
    codec = TelnetCodec(sb_limit=8)
    codec.receive_data(bytes.fromhex("ff fa e8") + b"A" * 8)
    with pytest.raises(TelnetProtocolError):
        codec.receive_data(b"B")


def test_unterminated_subnegotiation_without_limit_breach_just_waits() -> None:
    codec = TelnetCodec(sb_limit=8)
    assert codec.receive_data(bytes.fromhex("ff fa e8 01 02")) == []
    assert codec.receive_data(bytes.fromhex("ff f0")) == [Subnegotiation(0xE8, b"\x01\x02")]


def test_iac_sb_inside_a_subnegotiation_raises() -> None:
    with pytest.raises(TelnetProtocolError):
        TelnetCodec().receive_data(bytes.fromhex("ff fa e8 01 ff fa e8 02 ff f0"))


def test_other_command_inside_subnegotiation_is_left_out_of_the_payload() -> None:
    wire = bytes.fromhex("ff fa 18 41 ff f1 42 ff f0")
    assert TelnetCodec().receive_data(wire) == [Subnegotiation(0x18, b"AB")]


def test_iac_sb_iac_se_has_no_option_and_reports_nothing() -> None:
    wire = bytes.fromhex("41 ff fa ff f0 42")
    assert merge_data(TelnetCodec().receive_data(wire)) == [Data(b"AB")]


def test_stray_se_outside_subnegotiation_is_dropped() -> None:
    wire = bytes.fromhex("41 ff f0 42")
    assert merge_data(TelnetCodec().receive_data(wire)) == [Data(b"AB")]


def test_empty_vmware_subnegotiation_is_an_empty_payload() -> None:
    # Rule 6: the codec reports it; option-232 decoding turns it into "no event".
    assert TelnetCodec().receive_data(bytes.fromhex("ff fa e8 ff f0")) == [
        Subnegotiation(0xE8, b"")
    ]


def test_plain_commands_are_reported() -> None:
    wire = bytes.fromhex("ff f1 41 ff f3 ff f6")
    assert TelnetCodec().receive_data(wire) == [
        Command(0xF1),
        Data(b"A"),
        Command(0xF3),
        Command(0xF6),
    ]


# --- IAC at chunk ends ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"A\xff", b"\xffB"], [Data(b"A\xffB")]),
        ([b"A\xff", b"\xff", b"B"], [Data(b"A\xffB")]),
        ([b"\xff", b"\xfb\x01"], [Negotiation(Verb.WILL, 1)]),
        ([b"\xff\xfb", b"\x01"], [Negotiation(Verb.WILL, 1)]),
        ([b"\xff\xfa\xe8\x01\xff", b"\xf0"], [Subnegotiation(0xE8, b"\x01")]),
        ([b"\xff\xfa\xe8\x01\xff", b"\xff\xff", b"\xf0"], [Subnegotiation(0xE8, b"\x01\xff")]),
        ([b"\xff", b"\xfa", b"\xe8", b"\xff", b"\xf0"], [Subnegotiation(0xE8, b"")]),
        ([b"A\xff", b"\xf0B"], [Data(b"AB")]),
    ],
)
def test_iac_at_chunk_end(chunks: list[bytes], expected: list[Event]) -> None:
    assert merge_data(feed(TelnetCodec(), chunks)) == expected


# --- RFC 1143 negotiation -------------------------------------------------------------


def test_acknowledgement_of_our_offer_gets_no_reply() -> None:
    codec = vm_codec()
    codec.offer_local(Opt.BINARY)
    codec.request_remote(Opt.VMWARE_EXT)
    assert codec.data_to_send() == bytes.fromhex("ff fb 00 ff fd e8")
    events = codec.receive_data(bytes.fromhex("ff fd 00 ff fb e8"))
    assert events == [
        Negotiation(Verb.DO, 0),
        OptionChanged(0, local=True, enabled=True),
        Negotiation(Verb.WILL, 0xE8),
        OptionChanged(0xE8, local=False, enabled=True),
    ]
    assert codec.data_to_send() == b""
    assert codec.local_enabled(0) and codec.remote_enabled(0xE8)


def test_repeated_request_for_a_state_in_effect_gets_no_reply() -> None:
    codec = vm_codec()
    codec.receive_data(bytes.fromhex("ff fd 00"))
    assert codec.data_to_send() == bytes.fromhex("ff fb 00")  # agreed once
    assert codec.receive_data(bytes.fromhex("ff fd 00 ff fd 00")) == [
        Negotiation(Verb.DO, 0),
        Negotiation(Verb.DO, 0),
    ]
    assert codec.data_to_send() == b""


def test_offer_is_sent_once_while_pending_or_in_effect() -> None:
    codec = vm_codec()
    codec.offer_local(Opt.SGA)
    codec.offer_local(Opt.SGA)
    codec.request_remote(Opt.SGA)
    codec.request_remote(Opt.SGA)
    assert codec.data_to_send() == bytes.fromhex("ff fb 03 ff fd 03")
    codec.receive_data(bytes.fromhex("ff fd 03 ff fb 03"))
    codec.offer_local(Opt.SGA)
    codec.request_remote(Opt.SGA)
    assert codec.data_to_send() == b""


@pytest.mark.parametrize(
    ("request_", "refusal", "settle"),
    [
        ("ff fb 25", "ff fe 25", "ff fc 25"),  # WILL AUTH -> DONT AUTH (TV-01)
        ("ff fb 2c", "ff fe 2c", "ff fc 2c"),  # WILL COM-PORT -> DONT COM-PORT (TV-06)
        ("ff fd 01", "ff fc 01", "ff fe 01"),  # unsolicited DO ECHO -> WONT ECHO (TV-02)
        ("ff fd e8", "ff fc e8", "ff fe e8"),  # we never perform 232 ourselves
    ],
)
def test_unwanted_request_gets_exactly_one_refusal(
    request_: str, refusal: str, settle: str
) -> None:
    codec = vm_codec()
    events = codec.receive_data(bytes.fromhex(request_))
    assert codec.data_to_send() == bytes.fromhex(refusal)
    assert not any(isinstance(e, OptionChanged) for e in events)
    # The peer may confirm the refusal with its own negative: that is no new request.
    codec.receive_data(bytes.fromhex(settle))
    assert codec.data_to_send() == b""


def test_negative_for_an_option_already_off_gets_no_reply() -> None:
    codec = vm_codec()
    codec.receive_data(bytes.fromhex("ff fc 00 ff fe 00 ff fc 25 ff fe 01"))
    assert codec.data_to_send() == b""


def test_peer_turning_an_option_off_is_acknowledged_once() -> None:
    codec = vm_codec()
    codec.receive_data(bytes.fromhex("ff fb 00 ff fd 00"))
    assert codec.data_to_send() == bytes.fromhex("ff fd 00 ff fb 00")
    events = codec.receive_data(bytes.fromhex("ff fc 00 ff fe 00 ff fc 00"))
    assert OptionChanged(0, local=False, enabled=False) in events
    assert OptionChanged(0, local=True, enabled=False) in events
    assert codec.data_to_send() == bytes.fromhex("ff fe 00 ff fc 00")
    assert not codec.local_enabled(0) and not codec.remote_enabled(0)


def test_refused_offer_settles_without_reply() -> None:
    codec = vm_codec()
    codec.request_remote(Opt.VMWARE_EXT)
    codec.data_to_send()
    events = codec.receive_data(bytes.fromhex("ff fc e8"))
    assert events == [Negotiation(Verb.WONT, 0xE8)]
    assert codec.data_to_send() == b"" and not codec.remote_enabled(0xE8)


def test_peer_offer_of_an_option_we_want_is_agreed_once() -> None:
    codec = vm_codec()
    assert codec.receive_data(bytes.fromhex("ff fb e8")) == [
        Negotiation(Verb.WILL, 0xE8),
        OptionChanged(0xE8, local=False, enabled=True),
    ]
    assert codec.data_to_send() == bytes.fromhex("ff fd e8")


def _pump(a: TelnetCodec, b: TelnetCodec, rounds: int = 20) -> tuple[int, int]:
    """Shuttle replies between two codecs until both are quiet; return (rounds, bytes)."""
    moved = 0
    for n in range(rounds):
        ab, ba = a.data_to_send(), b.data_to_send()
        if not ab and not ba:
            return n, moved
        moved += len(ab) + len(ba)
        b.receive_data(ab)
        a.receive_data(ba)
    raise AssertionError("negotiation did not settle: a loop")


def test_two_codecs_settle_like_proxy_and_esxi() -> None:
    proxy = vm_codec()
    esxi = TelnetCodec(
        local_ok=(Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT), remote_ok=(Opt.BINARY, Opt.SGA, Opt.ECHO)
    )
    esxi.offer_local(Opt.AUTHENTICATION)
    for option in (Opt.BINARY, Opt.SGA):
        proxy.offer_local(option)
    for option in (Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT):
        proxy.request_remote(option)
    rounds, _ = _pump(proxy, esxi)
    assert rounds <= 3
    for option in (Opt.BINARY, Opt.SGA):
        assert proxy.local_enabled(option) and esxi.remote_enabled(option)
        assert proxy.remote_enabled(option) and esxi.local_enabled(option)
    assert proxy.remote_enabled(Opt.VMWARE_EXT) and esxi.local_enabled(Opt.VMWARE_EXT)
    assert not proxy.remote_enabled(Opt.AUTHENTICATION)
    assert not esxi.local_enabled(Opt.AUTHENTICATION)


_OPTIONS = st.sampled_from([0, 1, 3, 37, 44, 232])


@FAST
@given(
    a_local=st.frozensets(_OPTIONS),
    a_remote=st.frozensets(_OPTIONS),
    b_local=st.frozensets(_OPTIONS),
    b_remote=st.frozensets(_OPTIONS),
    a_offers=st.lists(st.tuples(st.booleans(), _OPTIONS), max_size=8),
    b_offers=st.lists(st.tuples(st.booleans(), _OPTIONS), max_size=8),
)
def test_two_codecs_never_loop_and_agree(
    a_local: frozenset[int],
    a_remote: frozenset[int],
    b_local: frozenset[int],
    b_remote: frozenset[int],
    a_offers: list[tuple[bool, int]],
    b_offers: list[tuple[bool, int]],
) -> None:
    a = TelnetCodec(local_ok=a_local, remote_ok=a_remote)
    b = TelnetCodec(local_ok=b_local, remote_ok=b_remote)
    for codec, offers in ((a, a_offers), (b, b_offers)):
        for local, option in offers:
            (codec.offer_local if local else codec.request_remote)(option)
    _, moved = _pump(a, b)
    # Each option moves through at most offer + answer in each direction, both sides.
    assert moved <= 3 * 4 * 6
    for option in (0, 1, 3, 37, 44, 232):
        assert a.local_enabled(option) == b.remote_enabled(option)
        assert a.remote_enabled(option) == b.local_enabled(option)


# --- chunk boundaries -----------------------------------------------------------------

WIRE = (
    bytes.fromhex("ff fb 25 ff fd 00 ff fd 03 ff fd 01 ff fb 00 ff fb 03 ff fb e8")
    + subnegotiation(0xE8, bytes.fromhex("00 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51"))
    + subnegotiation(0xE8, b"\x2c\x76\x19\xff\xe9\xff\x00\xff\x10")
    + bytes.fromhex("ff fb 2c 20 21 ff ff 00 11 0d 0a ff f1 ff fa e8 ff f0 22 ff f0 23")
    + bytes.fromhex("ff fa ff f0 24 ff fa 18 41 ff f1 42 ff f0 25 ff")
)


def parse(chunks: Iterable[bytes], sb_limit: int = 64 * 1024) -> tuple[list[Event], bytes]:
    """Merged events and all queued replies for `chunks` fed in order."""
    codec = vm_codec(sb_limit)
    codec.offer_local(Opt.BINARY)
    codec.request_remote(Opt.VMWARE_EXT)
    codec.data_to_send()
    events: list[Event] = []
    replies = bytearray()
    for chunk in chunks:
        events += codec.receive_data(chunk)
        replies += codec.data_to_send()
    return merge_data(events), bytes(replies)


def test_whole_wire_parses_as_expected() -> None:
    events, replies = parse([WIRE])
    assert Subnegotiation(0xE8, b"\x2c\x76\x19\xff\xe9\xff\x00\xff\x10") in events
    assert Data(b"\x20\x21\xff\x00\x11\x0d\x0a") in events
    assert replies == bytes.fromhex("ff fe 25 ff fb 03 ff fc 01 ff fd 00 ff fd 03 ff fe 2c")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, len(WIRE)])
def test_chunk_size_never_changes_events(size: int) -> None:
    chunks = [WIRE[i : i + size] for i in range(0, len(WIRE), size)]
    assert parse(chunks) == parse([WIRE])


def test_every_two_way_split_gives_the_same_events() -> None:
    whole = parse([WIRE])
    for cut in range(1, len(WIRE)):
        assert parse([WIRE[:cut], WIRE[cut:]]) == whole, cut


def test_every_three_way_split_gives_the_same_events() -> None:
    whole = parse([WIRE])
    for first in range(1, len(WIRE)):
        for second in range(first + 1, len(WIRE), 3):
            assert parse(split_at(WIRE, [first, second])) == whole, (first, second)


# --- arbitrary input ------------------------------------------------------------------

# Mostly bytes that mean something to the tokenizer, so short streams reach every state.
_TELNET_BYTE = st.one_of(
    st.sampled_from([0xFF, 0xFA, 0xF0, 0xFB, 0xFC, 0xFD, 0xFE, 0xF1, 0xE8, 0x00, 0x01, 0x03]),
    st.integers(0, 255),
)
_STREAM = st.lists(_TELNET_BYTE, max_size=120).map(bytes)


def _outcome(chunks: Iterable[bytes]) -> tuple[list[Event], bytes] | None:
    """Merged events and replies, or None if the stream broke framing."""
    try:
        return parse(chunks, sb_limit=8)  # small, so the limit is reached too
    except TelnetProtocolError:
        return None


@settings(max_examples=400, deadline=None)
@given(_STREAM, st.lists(st.integers(1, 119), max_size=12))
def test_arbitrary_chunked_streams_only_raise_protocol_errors(data: bytes, cuts: list[int]) -> None:
    codec = TelnetCodec(local_ok=(0, 3), remote_ok=(0, 232), sb_limit=8)
    try:
        for chunk in split_at(data, cuts):
            codec.receive_data(chunk)
            codec.data_to_send()
    except TelnetProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(_STREAM, st.lists(st.integers(1, 119), max_size=12))
def test_chunking_never_changes_merged_events(data: bytes, cuts: list[int]) -> None:
    assert _outcome(split_at(data, cuts)) == _outcome([data])


# --- ERROR: a failed codec refuses all further input ---------------------------------

_ERRORS = [
    pytest.param(bytes.fromhex("ff fa e8") + b"A" * 9, "longer than 8 bytes", id="sb_limit"),
    pytest.param(bytes.fromhex("ff fa e8 01 ff fa"), "IAC SB inside", id="sb_in_sb"),
]


@pytest.mark.parametrize(("wire", "fault"), _ERRORS)
def test_error_is_final_and_later_input_names_the_first_fault(wire: bytes, fault: str) -> None:
    codec = TelnetCodec(sb_limit=8)
    assert not codec.failed
    with pytest.raises(TelnetProtocolError, match=fault) as first:
        codec.receive_data(wire)
    assert codec.failed and codec.error is first.value
    # An earlier codec went back to DATA and these bytes came out as data.
    for later in (b"plain data", b"", bytes.fromhex("ff fa e8 01 ff f0")):
        with pytest.raises(TelnetProtocolError, match=f"already failed.*{fault}") as again:
            codec.receive_data(later)
        assert again.value.__cause__ is first.value
    with pytest.raises(TelnetProtocolError, match="already failed"):
        next(codec.iter_events(b"x"))


def test_output_still_works_after_an_error() -> None:
    codec = TelnetCodec(local_ok=(0,), sb_limit=8)
    with pytest.raises(TelnetProtocolError):
        codec.receive_data(bytes.fromhex("ff fd 00 ff fa e8 01 ff fa"))
    assert codec.data_to_send() == bytes.fromhex("ff fb 00")  # queued before the fault
    codec.offer_local(Opt.SGA)
    assert codec.data_to_send() == bytes.fromhex("ff fb 03")
    assert codec.send_data(b"\xff") == b"\xff\xff"


@settings(max_examples=300, deadline=None)
@given(_STREAM, st.lists(st.integers(1, 119), max_size=12), _STREAM)
def test_after_any_error_any_input_raises(data: bytes, cuts: list[int], later: bytes) -> None:
    # Whatever broke framing, and wherever the chunks fell, nothing more is parsed.
    codec = TelnetCodec(local_ok=(0, 3), remote_ok=(0, 232), sb_limit=8)
    first: TelnetProtocolError | None = None
    for chunk in [*split_at(data, cuts), later, b""]:
        try:
            codec.receive_data(chunk)
        except TelnetProtocolError as exc:
            if first is None:
                first = exc
            else:
                assert exc.__cause__ is first and str(first) in str(exc)
        else:
            assert first is None, "input accepted after a protocol error"
    assert codec.failed is (first is not None)
    assert codec.error is first


def _negotiated(*chunks: bytes) -> TelnetCodec:
    codec = TelnetCodec(local_ok={Opt.BINARY, Opt.SGA}, remote_ok={Opt.BINARY})
    codec.offer_local(Opt.SGA)
    for chunk in chunks:
        codec.receive_data(chunk)
    return codec


def test_codecs_in_the_same_state_share_one_option_table() -> None:
    # The RFC 1143 table is copied on write and shared (one per state, not per codec).
    first = _negotiated(bytes([255, 253, 3, 255, 251, 0]))  # DO SGA, WILL BINARY
    second = _negotiated(bytes([255, 253, 3, 255, 251, 0]))
    assert first._q is second._q
    assert first.local_enabled(Opt.SGA) and first.remote_enabled(Opt.BINARY)
    # A change to one codec leaves the other (and the shared table) alone.
    first.receive_data(bytes([255, 252, 0]))  # WONT BINARY
    assert not first.remote_enabled(Opt.BINARY)
    assert second.remote_enabled(Opt.BINARY) and first._q is not second._q
    assert TelnetCodec()._q == {}


@FAST
@given(st.lists(st.tuples(st.sampled_from([251, 252, 253, 254]), st.integers(0, 255)), max_size=40))
def test_shared_option_tables_stay_bounded_and_agree_with_a_private_table(
    verbs: list[tuple[int, int]],
) -> None:
    from vspc.common import telnet

    codec = TelnetCodec(local_ok=range(256), remote_ok=range(0, 256, 2))
    wire = b"".join(bytes([255, verb, option]) for verb, option in verbs)
    codec.receive_data(wire)
    assert len(telnet._SHARED_TABLES) <= telnet._SHARED_TABLES_MAX
    # Replay on a reference: the last verb per (side, option) decides the state.
    expected_local: dict[int, bool] = {}
    expected_remote: dict[int, bool] = {}
    for verb, option in verbs:
        if verb in (253, 254):
            expected_local[option] = verb == 253
        else:
            expected_remote[option] = verb == 251 and option % 2 == 0
    for option, on in expected_local.items():
        assert codec.local_enabled(option) is on
    for option, on in expected_remote.items():
        assert codec.remote_enabled(option) is on


def test_offer_matches_one_by_one_and_is_cached() -> None:
    """`offer()` gives the bytes and table of one `offer_local`/`request_remote` each,
    on a fresh codec (from the cache the second time) and on a used one."""
    local, remote = (Opt.BINARY, Opt.SGA), (Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT)
    reference = TelnetCodec(local_ok=frozenset(local), remote_ok=frozenset(remote))
    for option in local:
        reference.offer_local(option)
    for option in remote:
        reference.request_remote(option)
    expected = reference.data_to_send()
    for _ in range(2):  # the first call fills the cache, the second uses it
        codec = TelnetCodec(local_ok=frozenset(local), remote_ok=frozenset(remote))
        codec.offer(local, remote)
        assert codec.data_to_send() == expected
        codec.receive_data(bytes((0xFF, Verb.WILL, Opt.VMWARE_EXT)))
        assert codec.remote_enabled(Opt.VMWARE_EXT)
        assert codec.data_to_send() == b""  # WANTYES -> YES: no acknowledgement
    used = TelnetCodec(local_ok=frozenset(local), remote_ok=frozenset(remote))
    used.offer_local(Opt.BINARY)
    used.offer(local, remote)
    assert used.data_to_send() == expected


class _QuietCodec(TelnetCodec):
    __slots__ = ()
    reports = frozenset({(int(Opt.SGA), False, True)})


def test_a_codec_class_may_report_only_the_option_changes_it_lists() -> None:
    # Same replies and option states as the plain codec; events only for SGA enabled
    # on the peer's side, never a Negotiation.  Repeated: the second pass is served by
    # the outcome cache, which keeps the classes apart.
    chunk = bytes([255, 251, 3, 255, 251, 0, 255, 253, 1, 255, 251, 24])  # WILL SGA, ...
    for _ in range(2):
        plain = TelnetCodec(remote_ok={Opt.SGA, Opt.BINARY}, local_ok={Opt.ECHO})
        quiet = _QuietCodec(remote_ok={Opt.SGA, Opt.BINARY}, local_ok={Opt.ECHO})
        events = plain.receive_data(chunk)
        assert Negotiation(Verb.WILL, Opt.SGA) in events
        assert OptionChanged(Opt.BINARY, False, True) in events
        assert quiet.receive_data(chunk) == [OptionChanged(Opt.SGA, False, True)]
        assert quiet.data_to_send() == plain.data_to_send()
        assert quiet._q is plain._q
