"""Admin protocol messages: JSON lines, the reply envelope, console bytes in JSON.

Boundary: dicts in, bytes out (`encode_message`); one line in, one dict out
(`decode_message`).  Part of the sans-IO admin codec (`vspc.common.admin`, which
re-exports the public names); no sockets, no asyncio, no logging, no clock.

Spec: docs/admin-protocol.md.  One JSON object per ``\\n``-terminated UTF-8 line;
replies ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``
echoing ``id``; pushed events carry ``"event"`` and never ``"ok"``; console bytes are
base64 (RFC 4648 §4, padded) under ``"data_b64"``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, NoReturn

from vspc.common.admin.errors import AdminError, ErrorCode, RequestId

__all__ = [
    "MAX_ID_LENGTH",
    "PROTOCOL_VERSION",
    "decode_bytes",
    "decode_message",
    "encode_bytes",
    "encode_message",
    "id_of",
    "is_event",
    "is_reply",
    "ok",
    "raise_for_reply",
    "valid_id",
]

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 256  # a string id longer than this is bad_field
_MAX_SAFE_INT = (1 << 53) - 1  # ids must survive JavaScript clients unchanged


def ok(id: RequestId | None = None, **fields: Any) -> dict[str, Any]:
    """A success reply: ``{"ok": true, "id": id?, **fields}`` (id left out if None)."""
    reply: dict[str, Any] = {"ok": True}
    if id is not None:
        reply["id"] = id
    reply.update(fields)
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
    """A pushed message: "event" and no "ok" (docs/development.md: they cannot be mistaken)."""
    return "ok" not in message and isinstance(message.get("event"), str)


def raise_for_reply(reply: Mapping[str, Any]) -> None:
    """Raise the `AdminError` an ``{"ok": false}`` reply carries; return on success.

    An unknown code (a newer daemon) becomes INTERNAL with the code in the message.

    Raises:
        AdminError: the reply is a failure, or is malformed (BAD_FIELD).
    """
    rid = id_of(reply)
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


def valid_id(value: object) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; true is not an id
        return False
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def id_of(message: Mapping[str, Any]) -> RequestId | None:
    rid = message.get("id")
    return rid if valid_id(rid) else None
