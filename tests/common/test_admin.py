"""Admin protocol v1 codec (common/admin/, docs/admin-protocol.md): no sockets."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common.admin import (
    COMMANDS,
    MAX_ID_LENGTH,
    MAX_REPLAY,
    Access,
    AdminError,
    AttachGrant,
    ClientInfo,
    ClientKind,
    ConsoleInfo,
    ErrorCode,
    Event,
    EventName,
    Hello,
    LineFramer,
    LockMode,
    Request,
    TailChunk,
    VMotionPhase,
    decode_bytes,
    decode_message,
    encode_bytes,
    encode_message,
    failed,
    is_event,
    is_reply,
    ok,
    optional_bool,
    optional_enum,
    optional_int,
    parse_request,
    raise_for_reply,
    require_int,
    require_str,
    required_access,
    validate_request,
)


def codes(results: list[dict[str, Any] | AdminError]) -> list[str]:
    return [r.code.value if isinstance(r, AdminError) else r["cmd"] for r in results]


# ===================================================================== framing


def test_one_request_per_line() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"cmd":"list"}\n{"cmd":"show","vm":"db01","id":7}\n') == [
        {"cmd": "list"},
        {"cmd": "show", "vm": "db01", "id": 7},
    ]
    assert not framer.partial


WIRE = (
    b'{"cmd":"list","id":"a"}\r\n\n  \n{"cmd":"tail","vm":"\xc3\xa9t\xc3\xa9"}\n{"cmd":"hello"}\n'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, len(WIRE)])
def test_chunk_size_never_changes_requests(size: int) -> None:
    whole = LineFramer().feed(WIRE)
    framer = LineFramer()
    parts = [r for i in range(0, len(WIRE), size) for r in framer.feed(WIRE[i : i + size])]
    assert parts == whole
    assert codes(whole) == ["list", "tail", "hello"]
    assert whole[1] == {"cmd": "tail", "vm": "été"}


def test_partial_line_is_reported_until_its_newline() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"cmd":') == []
    assert framer.partial
    assert framer.feed(b'"list"}\n') == [{"cmd": "list"}]
    assert not framer.partial


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{nope", ErrorCode.BAD_JSON),
        (b'{"cmd": NaN}', ErrorCode.BAD_JSON),
        (b'{"cmd": "list", "x": Infinity}', ErrorCode.BAD_JSON),
        (b"\xef\xbb\xbf{}", ErrorCode.BAD_JSON),  # a BOM is not JSON whitespace
        (b"[" * 100_000, ErrorCode.BAD_JSON),  # deeper than the interpreter's recursion
        (b'{"n": ' + b"9" * 5000 + b"}", ErrorCode.BAD_JSON),  # int digit limit
        (b'{"cmd":"list","vm":"\xff"}', ErrorCode.NOT_UTF8),
        (b"\xed\xa0\x80", ErrorCode.NOT_UTF8),  # UTF-8-encoded surrogate
        (b"[]", ErrorCode.BAD_REQUEST),
        (b'"list"', ErrorCode.BAD_REQUEST),
        (b"null", ErrorCode.BAD_REQUEST),
        (b"{}", ErrorCode.BAD_REQUEST),
        (b'{"cmd": 3}', ErrorCode.BAD_FIELD),
        (b'{"cmd": "list", "id": true}', ErrorCode.BAD_FIELD),
        (b'{"cmd": "list", "id": 1.5}', ErrorCode.BAD_FIELD),
        (b'{"cmd": "list", "id": [1]}', ErrorCode.BAD_FIELD),
        (b'{"cmd": "list", "id": 9007199254740992}', ErrorCode.BAD_FIELD),
        (b'{"cmd": "list", "id": "' + b"x" * (MAX_ID_LENGTH + 1) + b'"}', ErrorCode.BAD_FIELD),
    ],
)
def test_each_bad_line_gets_its_code_and_the_next_line_still_parses(
    line: bytes, code: ErrorCode
) -> None:
    results = LineFramer().feed(line + b'\n{"cmd":"list"}\n')
    assert len(results) == 2
    error = results[0]
    assert isinstance(error, AdminError)
    assert error.code is code
    assert error.message
    assert results[1] == {"cmd": "list"}


def test_error_keeps_the_id_when_it_was_readable() -> None:
    (error,) = LineFramer().feed(b'{"id": "q1"}\n')
    assert isinstance(error, AdminError)
    assert (error.code, error.id) == (ErrorCode.BAD_REQUEST, "q1")
    assert error.to_reply() == {
        "ok": False,
        "id": "q1",
        "error": {"code": "bad_request", "message": "request has no 'cmd'"},
    }
    (error,) = LineFramer().feed(b'{"id": false, "cmd": "list"}\n')
    assert isinstance(error, AdminError)
    assert error.id is None  # an invalid id is never echoed


def test_line_too_long_is_reported_before_its_newline_and_then_discarded() -> None:
    framer = LineFramer(limit=16)
    assert framer.feed(b'{"cmd":"list"}\n') == [{"cmd": "list"}]  # 14 bytes: fine
    results = framer.feed(b"x" * 17)
    assert codes(results) == ["line_too_long"]
    assert framer.partial  # still inside the long line
    # The rest of the long line is dropped as it arrives, however much there is.
    assert framer.feed(b"y" * 100_000) == []
    assert framer.feed(b'yyy\n{"cmd":"hello"}\n') == [{"cmd": "hello"}]
    assert not framer.partial


def test_line_exactly_at_the_limit_is_fine() -> None:
    line = b'{"cmd":"list"}'
    assert LineFramer(limit=len(line)).feed(line + b"\n") == [{"cmd": "list"}]
    assert codes(LineFramer(limit=len(line) - 1).feed(line + b"\n")) == ["line_too_long"]


def test_long_complete_line_in_one_chunk_is_too_long() -> None:
    framer = LineFramer(limit=8)
    results = framer.feed(b'{"cmd":"list","pad":"xxxxxxxx"}\n{"cmd":"list"}\n')
    assert codes(results) == ["line_too_long", "line_too_long"]
    assert framer.feed(b"{}\n") != []  # and the framer carries on


def test_client_that_never_sends_a_newline_stays_bounded() -> None:
    framer = LineFramer(limit=1024)
    errors = 0
    for _ in range(100):
        errors += len(framer.feed(b"a" * 500))
        assert len(framer._buf) <= 1024 + 500  # limit plus one chunk
    assert errors == 1  # reported once, not per chunk


def test_take_remaining_hands_over_raw_bytes_after_the_attach_line() -> None:
    framer = LineFramer()
    framer.receive_data(b'{"cmd":"attach","vm":"db01"}\nraw \xff bytes\n{"not":"a request"')
    assert framer.next_request() == {"cmd": "attach", "vm": "db01"}
    assert framer.take_remaining() == b'raw \xff bytes\n{"not":"a request"'
    assert not framer.partial


def test_many_small_lines_in_one_chunk() -> None:
    chunk = b'{"cmd":"list"}\n' * 20_000
    assert len(LineFramer().feed(chunk)) == 20_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_framer_raises_only_admin_errors(chunks: list[bytes]) -> None:
    framer = LineFramer(limit=32)
    for chunk in chunks:
        for result in framer.feed(chunk):
            if isinstance(result, dict):
                assert isinstance(result["cmd"], str)
                with contextlib.suppress(AdminError):
                    validate_request(result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(COMMANDS) + ["nope"]),
    st.dictionaries(
        st.sampled_from(["vm", "lock", "readonly", "replay", "port", "client", "bytes", "x"]),
        json_values,
    ),
)
def test_fuzz_validation_raises_only_admin_errors(cmd: str, fields: dict[str, Any]) -> None:
    line = json.dumps({"cmd": cmd, **fields}).encode()
    (result,) = LineFramer().feed(line + b"\n")
    if isinstance(result, AdminError):
        return
    try:
        request = validate_request(result)
    except AdminError as exc:
        assert exc.code in (ErrorCode.BAD_FIELD, ErrorCode.UNKNOWN_CMD)
    else:
        assert request.cmd == cmd
        required_access(request)


# ===================================================================== messages


def test_encode_message_is_one_compact_ascii_line() -> None:
    wire = encode_message(ok(3, name="été\nx", ports=[1]))
    assert wire == b'{"ok":true,"id":3,"name":"\\u00e9t\\u00e9\\nx","ports":[1]}\n'
    assert wire.count(b"\n") == 1
    assert decode_message(wire[:-1]) == {"ok": True, "id": 3, "name": "été\nx", "ports": [1]}


def test_encode_message_survives_lone_surrogates_and_refuses_nan() -> None:
    wire = encode_message({"event": "x", "name": "\udcff"})
    assert decode_message(wire.rstrip(b"\n"))["name"] == "\udcff"
    with pytest.raises(ValueError):
        encode_message({"x": float("nan")})


def test_ok_and_failed_shapes() -> None:
    assert ok() == {"ok": True}
    assert ok("a", consoles=[]) == {"ok": True, "id": "a", "consoles": []}
    assert failed(ErrorCode.UNKNOWN_CMD, "unknown command 'x'", id=0) == {
        "ok": False,
        "id": 0,
        "error": {"code": "unknown_cmd", "message": "unknown command 'x'"},
    }


def test_replies_and_events_cannot_be_confused() -> None:
    assert is_reply(ok()) and not is_event(ok())
    assert is_reply(failed(ErrorCode.BUSY, "slow down"))
    event = {"event": "vm_connected", "key": "k"}
    assert is_event(event) and not is_reply(event)
    assert not is_event({"event": "x", "ok": True})


def test_raise_for_reply() -> None:
    raise_for_reply(ok(1))
    with pytest.raises(AdminError) as info:
        raise_for_reply(failed(ErrorCode.LOCK_FAILED, "held", id=4))
    assert (info.value.code, info.value.message, info.value.id) == (
        ErrorCode.LOCK_FAILED,
        "held",
        4,
    )
    with pytest.raises(AdminError) as info:
        raise_for_reply({"ok": False, "error": {"code": "from_the_future", "message": "m"}})
    assert info.value.code is ErrorCode.INTERNAL
    assert "from_the_future" in info.value.message
    for bad in ({}, {"ok": "yes"}, {"ok": False}, {"ok": False, "error": "x"}):
        with pytest.raises(AdminError):
            raise_for_reply(bad)


@pytest.mark.parametrize("data", [b"", b"\x00\xff\r\n", bytes(range(256))])
def test_bytes_round_trip_through_base64(data: bytes) -> None:
    assert decode_bytes(encode_bytes(data)) == data


@pytest.mark.parametrize("text", ["not base64!", "QQ", 3, None, "é"])
def test_bad_base64_is_bad_field(text: object) -> None:
    with pytest.raises(AdminError) as info:
        decode_bytes(text)
    assert info.value.code is ErrorCode.BAD_FIELD


# ===================================================================== validators


def test_validators() -> None:
    request = {"id": "r", "vm": "db01", "n": 5, "b": True, "lock": "write", "empty": ""}
    assert require_str(request, "vm") == "db01"
    assert require_int(request, "n", minimum=0, maximum=5) == 5
    assert optional_int(request, "missing", 9) == 9
    assert optional_bool(request, "b") is True
    assert optional_enum(request, "lock", LockMode) is LockMode.WRITE
    for call in (
        lambda: require_str(request, "n"),
        lambda: require_str(request, "missing"),
        lambda: require_str(request, "empty"),
        lambda: require_str(request, "vm", max_length=3),
        lambda: require_int(request, "b"),  # true is not an integer
        lambda: require_int(request, "n", maximum=4),
        lambda: optional_bool({"x": 1}, "x"),
        lambda: optional_enum({"lock": "mine"}, "lock", LockMode),
    ):
        with pytest.raises(AdminError) as info:
            call()
        assert info.value.code is ErrorCode.BAD_FIELD
        assert info.value.message.startswith("field ")


def test_validate_request_fills_defaults() -> None:
    request = validate_request({"cmd": "attach", "id": 1, "vm": "db01"})
    assert request == Request(
        "attach",
        1,
        {
            "vm": "db01",
            "lock": LockMode.FREE_FOR_ALL_OR_READONLY,
            "readonly": False,
            "replay": 0,
            "quiet": False,
        },
    )
    assert validate_request({"cmd": "tail", "vm": "x"}).fields == {
        "vm": "x",
        "bytes": 4096,
        "follow": False,
    }
    assert validate_request({"cmd": "list"}) == Request("list", None, {})


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"cmd": "frobnicate", "id": 2}, ErrorCode.UNKNOWN_CMD),
        ({"cmd": "list", "verbose": True}, ErrorCode.BAD_FIELD),
        ({"cmd": "show"}, ErrorCode.BAD_FIELD),
        ({"cmd": "show", "vm": ""}, ErrorCode.BAD_FIELD),
        ({"cmd": "attach", "vm": "a", "lock": "mine"}, ErrorCode.BAD_FIELD),
        ({"cmd": "attach", "vm": "a", "replay": MAX_REPLAY + 1}, ErrorCode.BAD_FIELD),
        ({"cmd": "attach", "vm": "a", "replay": -1}, ErrorCode.BAD_FIELD),
        ({"cmd": "attach", "vm": "a", "readonly": "yes"}, ErrorCode.BAD_FIELD),
        ({"cmd": "attach", "vm": "a", "readonly": True, "lock": "write"}, ErrorCode.BAD_FIELD),
        ({"cmd": "clear"}, ErrorCode.BAD_FIELD),
        ({"cmd": "clear", "vm": "a", "port": 50000}, ErrorCode.BAD_FIELD),
        ({"cmd": "clear", "port": 70000}, ErrorCode.BAD_FIELD),
        ({"cmd": "kick", "client": 0}, ErrorCode.BAD_FIELD),
        ({"cmd": "kick", "client": "3"}, ErrorCode.BAD_FIELD),
        ({"cmd": "tail", "vm": "a", "follow": 1}, ErrorCode.BAD_FIELD),
    ],
)
def test_validate_request_refuses(request_: dict[str, Any], code: ErrorCode) -> None:
    with pytest.raises(AdminError) as info:
        validate_request(request_)
    assert info.value.code is code


def test_validate_request_echoes_the_id_in_errors() -> None:
    with pytest.raises(AdminError) as info:
        validate_request({"cmd": "show", "id": "x1"})
    assert info.value.id == "x1"


@pytest.mark.parametrize(
    ("fields", "access"),
    [
        ({"cmd": "list"}, Access.READONLY),
        ({"cmd": "tail", "vm": "a", "follow": True}, Access.READONLY),
        ({"cmd": "attach", "vm": "a"}, Access.READONLY),  # downgraded for readonly peers
        ({"cmd": "attach", "vm": "a", "readonly": True}, Access.READONLY),
        ({"cmd": "attach", "vm": "a", "lock": "free_for_all"}, Access.FULL),
        ({"cmd": "attach", "vm": "a", "lock": "write"}, Access.FULL),
        ({"cmd": "attach", "vm": "a", "lock": "exclusive"}, Access.FULL),
        ({"cmd": "clear", "port": 50000}, Access.FULL),
        ({"cmd": "kick", "client": 3}, Access.FULL),
    ],
)
def test_required_access(fields: dict[str, Any], access: Access) -> None:
    assert required_access(validate_request(fields)) is access


def test_command_table_names_match_keys_and_fields_are_unique() -> None:
    for name, spec in COMMANDS.items():
        assert spec.name == name
        names = [f.name for f in spec.fields]
        assert len(names) == len(set(names))
        assert not {"cmd", "id"} & set(names)


# ===================================================================== typed replies

CLIENT = ClientInfo(
    id=3,
    kind=ClientKind.ATTACH,
    peer="unix",
    mode=LockMode.WRITE,
    readonly=False,
    since=1764000000.5,
    uid=1000,
    user="alice",
)
CONSOLE = ConsoleInfo(
    key="0123456789abcdeffedcba9800000000_console2",
    name="db01_console2",
    uuid="01234567-89ab-cdef-fedc-ba9800000000",
    vm_name="db01",
    label="console2",
    port=50001,
    connected=True,
    clients=1,
    vmotion=VMotionPhase.PEERED,
    expires_in=None,
    lock=LockMode.WRITE,
    lock_holder=CLIENT,
    attached=(CLIENT,),
)


@pytest.mark.parametrize(
    "value",
    [
        CLIENT,
        CONSOLE,
        ConsoleInfo("k", "n", "u"),
        ConsoleInfo(
            "k",
            "n",
            "u",
            service_uri="vSPC.py",
            vm_peer="10.0.0.1:4000",
            counters={"bytes_from_vm": 10},
        ),
        Hello(1, "0.1.0", ("list", "attach"), Access.READONLY, uid=0, user="root"),
        AttachGrant("k", "db01", 7, LockMode.FREE_FOR_ALL_OR_READONLY, True),
        TailChunk("k", "db01", b"\x00\xffboot\r\n"),
        Event("vm_expired", "k", "db01", {"port": 50001}),
        Event("something_new"),
    ],
)
def test_typed_messages_round_trip_through_the_wire(value: Any) -> None:
    wire = encode_message(value.to_json())
    assert type(value).from_json(decode_message(wire.rstrip(b"\n"))) == value


def test_list_rows_leave_out_show_only_fields() -> None:
    assert set(CONSOLE.to_json()) == {
        "key", "name", "vm_name", "uuid", "label", "port", "connected", "clients",
        "vmotion", "expires_in", "lock", "lock_holder", "attached",
    }  # fmt: skip


def test_from_json_ignores_unknown_keys_and_checks_known_ones() -> None:
    row = CONSOLE.to_json() | {"future_field": [1, 2]}
    assert ConsoleInfo.from_json(row) == CONSOLE
    for key, bad in (
        ("port", "50001"),
        ("connected", 1),
        ("attached", {}),
        ("lock", "mine"),
        ("counters", {"x": "1"}),
        ("expires_in", True),
        ("name", None),
    ):
        with pytest.raises(AdminError) as info:
            ConsoleInfo.from_json(row | {key: bad})
        assert info.value.code is ErrorCode.BAD_FIELD


def test_event_accessors() -> None:
    attached = Event.from_json(
        {"event": "client_attached", "key": "k", "name": "db01", "client": CLIENT.to_json()}
    )
    assert attached.event == EventName.CLIENT_ATTACHED
    assert attached.client == CLIENT
    assert attached.console is None
    output = Event.from_json({"event": "output", "key": "k", "data_b64": encode_bytes(b"hi\r\n")})
    assert output.data == b"hi\r\n"
    connected = Event("vm_connected", "k", "n", {"console": CONSOLE.to_json()})
    assert connected.console == CONSOLE
    with pytest.raises(AdminError):
        Event.from_json({"event": "x", "ok": True})


def test_parse_request_is_what_the_framer_uses() -> None:
    assert parse_request(b' {"cmd":"list"} \r') == {"cmd": "list"}
