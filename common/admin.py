"""Admin protocol v1: JSON lines between vspcd and its operator tools, sans-IO.

Boundary: bytes in, request dicts out (`LineFramer`); dicts in, bytes out
(`encode_message`); plus the closed sets (`ErrorCode`, `LockMode`, `EventName`), the
command table (`COMMANDS`, `validate_request`) and typed views of what the daemon sends
back (`ConsoleInfo`, `ClientInfo`, `Hello`, `AttachGrant`, `Event`).  Shared by the
daemon's admin server, the `vspc` client, its shell and the TUI.  No sockets, no
asyncio, no logging, no clock.

Spec: docs/admin-protocol.md (issue #4).  In short:

- one JSON object per ``\\n``-terminated UTF-8 line, at most `MAX_LINE` bytes;
- requests ``{"cmd": ..., "id": optional, ...}``;
- replies ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``,
  echoing ``id``;
- pushed messages (events) carry ``"event"`` and never ``"ok"``;
- console bytes inside JSON are base64 (RFC 4648 §4, padded) under ``"data_b64"``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

__all__ = [
    "COMMANDS",
    "MAX_ID_LENGTH",
    "MAX_LINE",
    "MAX_REASON",
    "MAX_REPLAY",
    "PROTOCOL_VERSION",
    "Access",
    "AdminError",
    "AttachGrant",
    "ClientInfo",
    "ClientKind",
    "CommandSpec",
    "ConsoleInfo",
    "ErrorCode",
    "Event",
    "EventName",
    "FieldKind",
    "FieldSpec",
    "Hello",
    "LineFramer",
    "LockMode",
    "Request",
    "RequestId",
    "TailChunk",
    "VMotionPhase",
    "decode_bytes",
    "decode_message",
    "encode_bytes",
    "encode_message",
    "failed",
    "is_event",
    "is_reply",
    "ok",
    "optional_bool",
    "optional_enum",
    "optional_int",
    "optional_str",
    "parse_request",
    "raise_for_reply",
    "require_int",
    "require_str",
    "required_access",
    "validate_request",
]

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # bytes per line, not counting the b"\n" (docs: "Limits")
MAX_REPLAY = 1 << 20  # largest `replay` / tail `bytes` a request may ask for
MAX_ID_LENGTH = 256  # a string id longer than this is bad_field
MAX_REASON = 1024  # characters of a clear/kick reason
MAX_STR = 4096  # any other string field
_MAX_SAFE_INT = (1 << 53) - 1  # ids must survive JavaScript clients unchanged

RequestId = str | int


class ErrorCode(StrEnum):
    """Every `error.code` vspcd may send (docs/admin-protocol.md, "Error codes")."""

    BAD_JSON = "bad_json"  # the line is not valid JSON
    NOT_UTF8 = "not_utf8"  # the line is not valid UTF-8
    LINE_TOO_LONG = "line_too_long"  # more than MAX_LINE bytes before b"\n"
    BAD_REQUEST = "bad_request"  # valid JSON, but not an object or without "cmd"
    UNKNOWN_CMD = "unknown_cmd"  # "cmd" names no command
    BAD_FIELD = "bad_field"  # a field is missing, unknown, of the wrong type or range
    PERMISSION_DENIED = "permission_denied"  # the peer's access level forbids it
    VM_NOT_FOUND = "vm_not_found"  # no console matches the selector
    AMBIGUOUS_VM = "ambiguous_vm"  # several consoles match the selector
    NOT_ATTACHED = "not_attached"  # kick: no attached client has that id
    LOCK_FAILED = "lock_failed"  # attach: the lock mode conflicts (see LockMode)
    CLIENT_LIMIT = "client_limit"  # attach: the console has its maximum of clients
    BUSY = "busy"  # rate limit or connection limit: not executed, retry later
    FLOOD = "flood"  # too many failed requests in a row: the daemon closes
    TIMEOUT = "timeout"  # an unfinished line sat too long: the daemon closes
    OVERRUN = "overrun"  # the peer does not read its events: the daemon closes
    SHUTTING_DOWN = "shutting_down"  # vspcd is stopping
    INTERNAL = "internal"  # a bug in vspcd; the message says what was logged


class AdminError(Exception):
    """A request failed; `code` goes on the wire, the message is for humans.

    `id` is the request's id when it is known (the line parsed far enough), so the
    error reply can echo it.
    """

    def __init__(self, code: ErrorCode, message: str, id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def __repr__(self) -> str:
        return f"AdminError({self.code.value!r}, {self.message!r}, id={self.id!r})"

    def to_reply(self) -> dict[str, Any]:
        """The `{"ok": false, ...}` reply for this error."""
        return failed(self.code, self.message, id=self.id)


class LockMode(StrEnum):
    """Attach modes, with vSPC.py's names (docs/admin-protocol.md, "Lock modes").

    EXCLUSIVE: only this client may be attached; refused if anyone is attached.
    WRITE: this client is the only writer; others stay or join read-only.
    FREE_FOR_ALL: read-write, no lock; refused while anyone holds a lock.
    FREE_FOR_ALL_OR_READONLY: as FREE_FOR_ALL, but joins read-only under a write lock.
    """

    EXCLUSIVE = "exclusive"
    WRITE = "write"
    FREE_FOR_ALL = "free_for_all"
    FREE_FOR_ALL_OR_READONLY = "free_for_all_or_readonly"


class Access(StrEnum):
    """What a peer may do: everything, or watch only (`--readonly-group`)."""

    FULL = "full"
    READONLY = "readonly"


class VMotionPhase(StrEnum):
    """A console's vMotion phase (PROTOCOL.md §4.5)."""

    NORMAL = "normal"
    PENDING = "pending"  # GOAHEAD sent, no destination yet
    PEERED = "peered"  # destination bound, waiting for COMPLETE


class ClientKind(StrEnum):
    """How an operator is connected to a console."""

    TELNET = "telnet"  # the console's own telnet port
    ATTACH = "attach"  # the admin protocol's attach channel


class EventName(StrEnum):
    """Every `event` vspcd pushes (docs/admin-protocol.md, "Events")."""

    VM_CONNECTED = "vm_connected"
    VM_DISCONNECTED = "vm_disconnected"
    VM_EXPIRED = "vm_expired"
    VM_RENAMED = "vm_renamed"  # VM-NAME arrived or changed; `name` is the new display name
    VMOTION_BEGIN = "vmotion_begin"
    VMOTION_PEER = "vmotion_peer"
    VMOTION_COMPLETE = "vmotion_complete"
    VMOTION_ABORT = "vmotion_abort"
    VMOTION_NOTNOW = "vmotion_notnow"
    CLIENT_ATTACHED = "client_attached"
    CLIENT_DETACHED = "client_detached"
    LOCK_CHANGED = "lock_changed"
    OUTPUT = "output"  # tail --follow data
    TAIL_END = "tail_end"  # a followed console went away


# ===================================================================== replies


def ok(id: RequestId | None = None, **fields: Any) -> dict[str, Any]:
    """A success reply: ``{"ok": true, "id": id?, **fields}`` (id left out if None)."""
    reply: dict[str, Any] = {"ok": True}
    if id is not None:
        reply["id"] = id
    reply.update(fields)
    return reply


def failed(code: ErrorCode, message: str, id: RequestId | None = None) -> dict[str, Any]:
    """An error reply: ``{"ok": false, "id": id?, "error": {"code", "message"}}``."""
    reply: dict[str, Any] = {"ok": False}
    if id is not None:
        reply["id"] = id
    reply["error"] = {"code": code.value, "message": message}
    return reply


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One message as one wire line: compact JSON + b"\\n".

    ASCII-only output (``ensure_ascii``) is always valid UTF-8, even for a VM name with
    a lone surrogate, and a JSON string can never contain a raw newline, so the line
    framing cannot break.

    Raises:
        ValueError: NaN or infinity in `message` (not JSON).
        TypeError: a value JSON cannot represent (bytes: use `encode_bytes`).
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


def is_reply(message: Mapping[str, Any]) -> bool:
    """A reply to a request (has "ok"), as opposed to a pushed event."""
    return "ok" in message


def is_event(message: Mapping[str, Any]) -> bool:
    """A pushed message: "event" and no "ok" (STYLE.md: they cannot be mistaken)."""
    return "ok" not in message and isinstance(message.get("event"), str)


def raise_for_reply(reply: Mapping[str, Any]) -> None:
    """Raise the `AdminError` an ``{"ok": false}`` reply carries; return on success.

    An unknown code (a newer daemon) becomes INTERNAL with the code in the message.

    Raises:
        AdminError: the reply is a failure, or is malformed (BAD_FIELD).
    """
    rid = _id_of(reply)
    status = reply.get("ok")
    if status is True:
        return
    if status is not False:
        raise AdminError(ErrorCode.BAD_FIELD, "reply has no boolean 'ok'", rid)
    error = reply.get("error")
    if not isinstance(error, dict):
        raise AdminError(ErrorCode.BAD_FIELD, "failed reply without an 'error' object", rid)
    raw, message = error.get("code"), error.get("message")
    text = message if isinstance(message, str) else "(no message)"
    try:
        code = ErrorCode(str(raw))
    except ValueError:
        raise AdminError(ErrorCode.INTERNAL, f"[{raw}] {text}", rid) from None
    raise AdminError(code, text, rid)


# ===================================================================== bytes in JSON


def encode_bytes(data: bytes) -> str:
    """Console bytes for a JSON string: standard base64, padded (RFC 4648 §4)."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: object, field_name: str = "data_b64") -> bytes:
    """Inverse of `encode_bytes`.

    Raises:
        AdminError: BAD_FIELD if `text` is not a string of valid padded base64.
    """
    if not isinstance(text, str):
        raise AdminError(ErrorCode.BAD_FIELD, f"field {field_name!r} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise AdminError(ErrorCode.BAD_FIELD, f"field {field_name!r} is not base64") from None


# ===================================================================== framing


def _reject_constant(name: str) -> NoReturn:
    # json.loads accepts NaN/Infinity by default; they are not JSON (RFC 8259 §6).
    raise ValueError(f"{name} is not valid JSON")


def decode_message(line: bytes) -> dict[str, Any]:
    """One line (without b"\\n") -> a JSON object; what clients use for replies/events.

    Raises:
        AdminError: NOT_UTF8, BAD_JSON, or BAD_REQUEST (valid JSON but not an object).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdminError(ErrorCode.NOT_UTF8, f"line is not UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # "[[[[..." nested deeper than the interpreter allows
        raise AdminError(ErrorCode.BAD_JSON, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() digit limits
        raise AdminError(ErrorCode.BAD_JSON, f"invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise AdminError(ErrorCode.BAD_REQUEST, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; true is not an id
        return False
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _id_of(message: Mapping[str, Any]) -> RequestId | None:
    rid = message.get("id")
    return rid if _valid_id(rid) else None


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line (without b"\\n") -> the request object, envelope checked.

    Checks UTF-8, JSON, that it is an object, that "id" (if present) is a string of
    at most MAX_ID_LENGTH characters or a safe integer, and that "cmd" is a string.
    Does not check that the command exists (`validate_request` does).

    Raises:
        AdminError: NOT_UTF8, BAD_JSON, BAD_REQUEST (no "cmd") or BAD_FIELD ("id" or
            "cmd" of the wrong type); `.id` is set whenever the id was readable.
    """
    obj = decode_message(line)
    if "id" in obj and not _valid_id(obj["id"]):
        raise AdminError(
            ErrorCode.BAD_FIELD,
            f"field 'id' must be a string of at most {MAX_ID_LENGTH} characters or an integer",
        )
    rid = _id_of(obj)
    if "cmd" not in obj:
        raise AdminError(ErrorCode.BAD_REQUEST, "request has no 'cmd'", rid)
    if not isinstance(obj["cmd"], str):
        raise AdminError(ErrorCode.BAD_FIELD, "field 'cmd' must be a string", rid)
    return obj


class LineFramer:
    """Bytes -> request dicts, one JSON object per b"\\n"-terminated line.

    Use h11-style: `receive_data()` what the socket gave, then call `next_request()`
    until it returns None.  A bad line raises `AdminError` from `next_request()` and
    is consumed, so the next call carries on with the following line: the daemon
    answers the error and keeps the connection.  Blank lines are skipped; a trailing
    b"\\r" is JSON whitespace and harmless.

    A line longer than `limit` raises LINE_TOO_LONG as soon as that is known (not
    when its newline finally arrives); its remaining bytes are then discarded up to
    the next b"\\n" without being buffered, so memory stays bounded by `limit` plus
    one received chunk whatever the peer sends.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._start = 0  # consumed prefix of _buf, cut lazily (one memmove per chunk)
        self._scan = 0  # _buf[_start:_scan] is known to hold no b"\n"
        self._discarding = False  # inside an over-long line

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished line are waiting (arm the daemon's line timer)."""
        return self._discarding or len(self._buf) > self._start

    def take_pending(self) -> bytes:
        """Bytes received but not yet returned as requests (an unfinished line or
        lines not yet asked for); the framer is empty afterwards.  Used when the
        connection stops being JSON lines (the daemon's cluster splice)."""
        pending = b"" if self._discarding else bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = self._scan = 0
        self._discarding = False
        return pending

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._discarding = False
            data = data[newline + 1 :]
        if self._start:
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0
        self._buf += data

    def next_request(self) -> dict[str, Any] | None:
        """The next complete request, or None until more data arrives.

        Raises:
            AdminError: this line is bad (see `parse_request`), or LINE_TOO_LONG.
        """
        while True:
            newline = self._buf.find(b"\n", self._scan)
            if newline < 0:
                self._scan = len(self._buf)
                if len(self._buf) - self._start > self._limit:
                    self._buf.clear()
                    self._start = self._scan = 0
                    self._discarding = True
                    raise AdminError(
                        ErrorCode.LINE_TOO_LONG,
                        f"line longer than {self._limit} bytes; discarded up to its newline",
                    )
                return None
            line = bytes(self._buf[self._start : newline])
            self._start = self._scan = newline + 1
            if len(line) > self._limit:
                raise AdminError(
                    ErrorCode.LINE_TOO_LONG, f"line longer than {self._limit} bytes; discarded"
                )
            if line.strip():
                return parse_request(line)

    def feed(self, data: bytes) -> list[dict[str, Any] | AdminError]:
        """`receive_data` + drain: each complete line as a request or its error."""
        self.receive_data(data)
        out: list[dict[str, Any] | AdminError] = []
        while True:
            try:
                request = self.next_request()
            except AdminError as exc:
                out.append(exc)
                continue
            if request is None:
                return out
            out.append(request)

    def take_remaining(self) -> bytes:
        """Everything received after the last returned line, then forget it.

        After `attach` succeeds the connection carries raw console bytes; whatever
        the client sent after its attach line is already console input.
        """
        rest = bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = self._scan = 0
        self._discarding = False
        return rest


# ===================================================================== field validators

_E = TypeVar("_E", bound=StrEnum)


def _bad(request: Mapping[str, Any], message: str) -> AdminError:
    return AdminError(ErrorCode.BAD_FIELD, message, _id_of(request))


def require_str(
    request: Mapping[str, Any], name: str, *, max_length: int = MAX_STR, empty: bool = False
) -> str:
    """The string field `name`.

    Raises:
        AdminError: BAD_FIELD if missing, not a string, empty (unless `empty`) or
            longer than `max_length` characters.
    """
    if name not in request:
        raise _bad(request, f"field {name!r} is required")
    value = request[name]
    if not isinstance(value, str):
        raise _bad(request, f"field {name!r} must be a string")
    if not value and not empty:
        raise _bad(request, f"field {name!r} must not be empty")
    if len(value) > max_length:
        raise _bad(request, f"field {name!r} is longer than {max_length} characters")
    return value


def optional_str(
    request: Mapping[str, Any],
    name: str,
    default: str | None = None,
    *,
    max_length: int = MAX_STR,
) -> str | None:
    """The string field `name`, or `default` if absent or null (see `require_str`)."""
    if request.get(name) is None:
        return default
    return require_str(request, name, max_length=max_length, empty=True)


def require_int(
    request: Mapping[str, Any], name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """The integer field `name` (JSON true/false and 1.0 are not integers).

    Raises:
        AdminError: BAD_FIELD if missing, not an integer, or outside the bounds.
    """
    if name not in request:
        raise _bad(request, f"field {name!r} is required")
    value = request[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(request, f"field {name!r} must be an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        joiner = " and" if low and high else ""
        raise _bad(request, f"field {name!r} must be{low}{joiner}{high}, got {value}")
    return value


def optional_int(
    request: Mapping[str, Any],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """The integer field `name`, or `default` if absent or null (see `require_int`)."""
    if request.get(name) is None:
        return default
    return require_int(request, name, minimum=minimum, maximum=maximum)


def optional_bool(request: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """The boolean field `name`, or `default` if absent or null.

    Raises:
        AdminError: BAD_FIELD if present and not a JSON boolean (0/1 are not booleans).
    """
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(request, f"field {name!r} must be true or false")
    return value


def optional_enum(
    request: Mapping[str, Any], name: str, enum: type[_E], default: _E | None = None
) -> _E | None:
    """The field `name` as a member of `enum`, or `default` if absent or null.

    Raises:
        AdminError: BAD_FIELD if present and not one of the enum's values.
    """
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    choices = ", ".join(member.value for member in enum)
    raise _bad(request, f"field {name!r} must be one of: {choices}")


# ===================================================================== the command table


class FieldKind(StrEnum):
    """JSON type of a request field."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    ENUM = "enum"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One request field: its JSON type, whether it is required, default and bounds."""

    name: str
    kind: FieldKind
    help: str
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = MAX_STR
    choices: type[StrEnum] | None = None  # for ENUM

    def read(self, request: Mapping[str, Any]) -> Any:
        """Validate this field of `request`; the value, or the default if absent.

        Raises:
            AdminError: BAD_FIELD.
        """
        match self.kind:
            case FieldKind.STR if self.required:
                return require_str(request, self.name, max_length=self.max_length)
            case FieldKind.STR:
                return optional_str(request, self.name, self.default, max_length=self.max_length)
            case FieldKind.INT if self.required:
                return require_int(request, self.name, minimum=self.minimum, maximum=self.maximum)
            case FieldKind.INT:
                return optional_int(
                    request, self.name, self.default, minimum=self.minimum, maximum=self.maximum
                )
            case FieldKind.BOOL:
                return optional_bool(request, self.name, bool(self.default))
            case FieldKind.ENUM:
                assert self.choices is not None, "ENUM fields name their StrEnum"
                if self.required and request.get(self.name) is None:
                    raise _bad(request, f"field {self.name!r} is required")
                return optional_enum(request, self.name, self.choices, self.default)
        raise AssertionError(f"unhandled field kind {self.kind}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One admin command: its fields and who may run it.

    `access` is what the command needs in general; `required_access` refines it for
    attach (read-only attaches are open to read-only peers).  `exactly_one` names
    fields of which exactly one must be given (clear: vm or port).
    """

    name: str
    help: str
    fields: tuple[FieldSpec, ...] = ()
    access: Access = Access.READONLY
    exactly_one: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: command, id and every field with defaults filled in."""

    cmd: str
    id: RequestId | None
    fields: Mapping[str, Any] = field(default_factory=dict)


def _check_attach(request: Mapping[str, Any], fields: dict[str, Any]) -> None:
    # A read-only client holding a lock would stop everyone from typing: refuse it.
    if fields["readonly"] and fields["lock"] in (LockMode.EXCLUSIVE, LockMode.WRITE):
        raise _bad(request, f"a read-only attach cannot take the {fields['lock']} lock")


_VM = FieldSpec("vm", FieldKind.STR, "console: name, NAME_LABEL, key, UUID or port", True)
_REASON = FieldSpec(
    "reason", FieldKind.STR, "shown to the disconnected clients", max_length=MAX_REASON
)

COMMANDS: Mapping[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "hello",
            "protocol version, daemon version, capabilities, your access",
            (FieldSpec("client", FieldKind.STR, "client name/version, for the log"),),
        ),
        CommandSpec("list", "every console with its lock and clients"),
        CommandSpec("show", "one console in detail", (_VM,)),
        CommandSpec(
            "attach",
            "switch this connection to the console's raw byte stream",
            (
                _VM,
                FieldSpec(
                    "lock",
                    FieldKind.ENUM,
                    "lock mode",
                    default=LockMode.FREE_FOR_ALL_OR_READONLY,
                    choices=LockMode,
                ),
                FieldSpec("readonly", FieldKind.BOOL, "never send input", default=False),
                FieldSpec(
                    "replay",
                    FieldKind.INT,
                    "bytes of scrollback to send first",
                    default=0,
                    minimum=0,
                    maximum=MAX_REPLAY,
                ),
            ),
            check=_check_attach,
        ),
        CommandSpec(
            "clear",
            "disconnect every client of a console",
            (
                FieldSpec("vm", FieldKind.STR, "console (as for show)"),
                FieldSpec(
                    "port", FieldKind.INT, "console by telnet port", minimum=1, maximum=65535
                ),
                _REASON,
            ),
            access=Access.FULL,
            exactly_one=("vm", "port"),
        ),
        CommandSpec(
            "kick",
            "disconnect one client",
            (
                FieldSpec("client", FieldKind.INT, "client id (list/show)", True, minimum=1),
                _REASON,
            ),
            access=Access.FULL,
        ),
        CommandSpec("subscribe", "push state-change events on this connection"),
        CommandSpec("unsubscribe", "stop pushing state-change events"),
        CommandSpec(
            "tail",
            "a console's recent output, optionally followed as output events",
            (
                _VM,
                FieldSpec(
                    "bytes",
                    FieldKind.INT,
                    "scrollback bytes to return",
                    default=4096,
                    minimum=0,
                    maximum=MAX_REPLAY,
                ),
                FieldSpec("follow", FieldKind.BOOL, "then push output events", default=False),
            ),
        ),
        CommandSpec("untail", "stop following a console", (_VM,)),
    )
}


def validate_request(request: Mapping[str, Any]) -> Request:
    """Check a parsed request against `COMMANDS`; fill in defaults.

    Unknown fields are refused rather than ignored, so a typo or a field this daemon
    does not know yet fails loudly instead of silently doing something else.

    Raises:
        AdminError: UNKNOWN_CMD or BAD_FIELD, with the request's id.
    """
    rid = _id_of(request)
    cmd = request.get("cmd")
    spec = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if spec is None:
        raise AdminError(ErrorCode.UNKNOWN_CMD, f"unknown command {cmd!r}", rid)
    known = {"cmd", "id", *(f.name for f in spec.fields)}
    unknown = sorted(name for name in request if name not in known)
    if unknown:
        raise _bad(request, f"unknown field(s) for {spec.name}: {', '.join(unknown)}")
    fields = {f.name: f.read(request) for f in spec.fields}
    if spec.exactly_one:
        given = [name for name in spec.exactly_one if fields.get(name) is not None]
        if len(given) != 1:
            names = " or ".join(repr(name) for name in spec.exactly_one)
            raise _bad(request, f"{spec.name} needs exactly one of {names}")
    if spec.check is not None:
        spec.check(request, fields)
    return Request(spec.name, rid, fields)


def required_access(request: Request) -> Access:
    """The access level `request` needs (docs: "Access control").

    Read-only peers may attach read-only, and an attach with the default
    free_for_all_or_readonly mode is downgraded to read-only for them rather than
    refused; every other lock mode is a write request.
    """
    if request.cmd == "attach":
        if (
            request.fields["readonly"]
            or request.fields["lock"] is LockMode.FREE_FOR_ALL_OR_READONLY
        ):
            return Access.READONLY
        return Access.FULL
    return COMMANDS[request.cmd].access


# ===================================================================== typed replies


def _str(obj: Mapping[str, Any], name: str) -> str:
    return require_str(obj, name, max_length=1 << 20, empty=True)


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return optional_str(obj, name, max_length=1 << 20)


def _opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    return optional_int(obj, name)


def _float(obj: Mapping[str, Any], name: str, default: float | None = None) -> float | None:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(obj, f"field {name!r} must be a number")
    return float(value)


def _enum(obj: Mapping[str, Any], name: str, enum: type[_E]) -> _E:
    value = optional_enum(obj, name, enum)
    if value is None:
        raise _bad(obj, f"field {name!r} is required")
    return value


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(obj, f"field {name!r} must be an object")
    return value


def _drop_none(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if obj.get(name) is None:
            obj.pop(name, None)
    return obj


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """One attached operator, as in `list`, `show` and `client_attached`.

    `since` is Unix time (seconds); `uid`/`user` come from SO_PEERCRED and are null
    for TCP and telnet peers.  `bytes_in` (typed by the client and accepted for the
    VM) and `bytes_out` (console output delivered to it, before any slow-reader drop)
    are optional: absent from daemons before issue #8.
    """

    id: int
    kind: ClientKind
    peer: str
    mode: LockMode
    readonly: bool
    since: float
    uid: int | None = None
    user: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ClientInfo:
        """Raises AdminError(BAD_FIELD) on a malformed object; unknown keys are ignored."""
        return cls(
            id=require_int(obj, "id"),
            kind=_enum(obj, "kind", ClientKind),
            peer=_str(obj, "peer"),
            mode=_enum(obj, "mode", LockMode),
            readonly=optional_bool(obj, "readonly"),
            since=_float(obj, "since", 0.0) or 0.0,
            uid=_opt_int(obj, "uid"),
            user=_opt_str(obj, "user"),
            bytes_in=_opt_int(obj, "bytes_in"),
            bytes_out=_opt_int(obj, "bytes_out"),
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "peer": self.peer,
            "mode": self.mode.value,
            "readonly": self.readonly,
            "since": self.since,
            "uid": self.uid,
            "user": self.user,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        return _drop_none(obj, "bytes_in", "bytes_out")


@dataclass(frozen=True, slots=True)
class ConsoleInfo:
    """One console, as a `list` row or (with the show-only fields) a `show` reply.

    `name` is the display name (VM name, or NAME_LABEL for one of several ports);
    `uuid` is in 8-4-4-4-12 form; `key` is the stable identifier to pass back as
    `vm`.  `expires_in` is null unless the console has neither VM nor clients.
    `created` and `last_output` (Unix times; `last_output` absent until the VM's
    first output) are optional: absent from daemons before issue #8.
    """

    key: str
    name: str
    uuid: str
    vm_name: str = ""
    label: str = ""
    port: int | None = None
    connected: bool = False
    clients: int = 0
    vmotion: VMotionPhase = VMotionPhase.NORMAL
    expires_in: float | None = None
    lock: LockMode | None = None
    lock_holder: ClientInfo | None = None
    attached: tuple[ClientInfo, ...] = ()
    created: float | None = None
    last_output: float | None = None
    # show only: absent from list rows
    service_uri: str | None = None
    vm_peer: str | None = None
    counters: Mapping[str, int] | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConsoleInfo:
        """Raises AdminError(BAD_FIELD) on a malformed object; unknown keys are ignored."""
        attached = obj.get("attached", [])
        if not isinstance(attached, list) or not all(isinstance(c, dict) for c in attached):
            raise _bad(obj, "field 'attached' must be a list of objects")
        holder = _object(obj, "lock_holder")
        counters = _object(obj, "counters")
        if counters is not None and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counters.values()
        ):
            raise _bad(obj, "field 'counters' must map names to integers")
        lock = optional_enum(obj, "lock", LockMode)
        return cls(
            key=_str(obj, "key"),
            name=_str(obj, "name"),
            uuid=_str(obj, "uuid"),
            vm_name=optional_str(obj, "vm_name", "", max_length=1 << 20) or "",
            label=optional_str(obj, "label", "", max_length=1 << 20) or "",
            port=_opt_int(obj, "port"),
            connected=optional_bool(obj, "connected"),
            clients=optional_int(obj, "clients", 0, minimum=0) or 0,
            vmotion=optional_enum(obj, "vmotion", VMotionPhase, VMotionPhase.NORMAL)
            or VMotionPhase.NORMAL,
            expires_in=_float(obj, "expires_in"),
            lock=lock,
            lock_holder=None if holder is None else ClientInfo.from_json(holder),
            attached=tuple(ClientInfo.from_json(c) for c in attached),
            created=_float(obj, "created"),
            last_output=_float(obj, "last_output"),
            service_uri=_opt_str(obj, "service_uri"),
            vm_peer=_opt_str(obj, "vm_peer"),
            counters=None if counters is None else dict(counters),
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "vm_name": self.vm_name,
            "uuid": self.uuid,
            "label": self.label,
            "port": self.port,
            "connected": self.connected,
            "clients": self.clients,
            "vmotion": self.vmotion.value,
            "expires_in": self.expires_in,
            "lock": None if self.lock is None else self.lock.value,
            "lock_holder": None if self.lock_holder is None else self.lock_holder.to_json(),
            "attached": [c.to_json() for c in self.attached],
            "created": self.created,
            "last_output": self.last_output,
            "service_uri": self.service_uri,
            "vm_peer": self.vm_peer,
            "counters": None if self.counters is None else dict(self.counters),
        }
        return _drop_none(obj, "created", "last_output", "service_uri", "vm_peer", "counters")


@dataclass(frozen=True, slots=True)
class Hello:
    """The `hello` reply: who the daemon is and what this peer may do."""

    protocol: int
    version: str
    capabilities: tuple[str, ...]
    access: Access
    uid: int | None = None
    user: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Hello:
        caps = obj.get("capabilities", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise _bad(obj, "field 'capabilities' must be a list of strings")
        return cls(
            protocol=require_int(obj, "protocol"),
            version=_str(obj, "version"),
            capabilities=tuple(caps),
            access=_enum(obj, "access", Access),
            uid=_opt_int(obj, "uid"),
            user=_opt_str(obj, "user"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "version": self.version,
            "capabilities": list(self.capabilities),
            "access": self.access.value,
            "uid": self.uid,
            "user": self.user,
        }


@dataclass(frozen=True, slots=True)
class AttachGrant:
    """The `attach` success reply; raw console bytes follow its line."""

    key: str
    name: str
    client: int
    mode: LockMode
    readonly: bool

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AttachGrant:
        return cls(
            key=_str(obj, "key"),
            name=_str(obj, "name"),
            client=require_int(obj, "client"),
            mode=_enum(obj, "mode", LockMode),
            readonly=optional_bool(obj, "readonly"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "client": self.client,
            "mode": self.mode.value,
            "readonly": self.readonly,
        }


@dataclass(frozen=True, slots=True)
class TailChunk:
    """The `tail` reply: the last bytes of a console's output."""

    key: str
    name: str
    data: bytes

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TailChunk:
        return cls(_str(obj, "key"), _str(obj, "name"), decode_bytes(obj.get("data_b64")))

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "data_b64": encode_bytes(self.data)}


@dataclass(frozen=True, slots=True)
class Event:
    """A pushed message: ``{"event": ..., "key": ..., "name": ..., **fields}``.

    `event` stays a plain string so a client keeps working when a newer daemon adds
    events (compare with `EventName` members, which are strings).  The typed
    accessors decode the payloads docs/admin-protocol.md defines.
    """

    event: str
    key: str | None = None
    name: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        """Raises AdminError(BAD_FIELD) if "event", "key" or "name" have the wrong type."""
        if not is_event(obj):
            raise _bad(obj, "an event has a string 'event' and no 'ok'")
        rest = {k: v for k, v in obj.items() if k not in ("event", "key", "name")}
        return cls(_str(obj, "event"), _opt_str(obj, "key"), _opt_str(obj, "name"), rest)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"event": self.event}
        if self.key is not None:
            obj["key"] = self.key
        if self.name is not None:
            obj["name"] = self.name
        obj.update(self.fields)
        return obj

    @property
    def data(self) -> bytes:
        """The console bytes of an `output` event.

        Raises:
            AdminError: BAD_FIELD if there is no valid "data_b64".
        """
        return decode_bytes(self.fields.get("data_b64"))

    @property
    def client(self) -> ClientInfo | None:
        """The client object of `client_attached` (None for other events)."""
        value = self.fields.get("client")
        return ClientInfo.from_json(value) if isinstance(value, dict) else None

    @property
    def console(self) -> ConsoleInfo | None:
        """The console row of `vm_connected` (None for other events)."""
        value = self.fields.get("console")
        return ConsoleInfo.from_json(value) if isinstance(value, dict) else None
