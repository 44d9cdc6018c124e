"""Admin protocol v1: JSON lines between vspcd and its operator tools, sans-IO.

Boundary: bytes in, request dicts out (`LineFramer`); dicts in, bytes out
(`encode_message`); plus the closed sets (`ErrorCode`, `LockMode`, `EventName`), the
command table (`COMMANDS`, `validate_request`) and typed views of what the daemon sends
back (`ConsoleInfo`, `ClientInfo`, `Hello`, `AttachGrant`, `Event`).  Shared by the
daemon's admin server, the `vspc` client, its shell and the TUI.  No sockets, no
asyncio, no logging, no clock.

Spec: docs/admin-protocol.md.  In short:

- one JSON object per ``\\n``-terminated UTF-8 line, at most `MAX_LINE` bytes;
- requests ``{"cmd": ..., "id": optional, ...}``;
- replies ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``,
  echoing ``id``;
- pushed messages (events) carry ``"event"`` and never ``"ok"``;
- console bytes inside JSON are base64 (RFC 4648 §4, padded) under ``"data_b64"``.

The code lives in one module per concern; import from here, which
names everything the package offers, or from a module when only that concern is needed:

    errors      ErrorCode, AdminError, failed           what fails and how it is sent
    enums       LockMode, Access, VMotionPhase, ...     the other closed vocabularies
    messages    encode/decode_message, ok, bytes        JSON lines and the reply envelope
    framing     LineFramer, parse_request               bytes -> request dicts
    validate    require_*/optional_*                    one checked value per field
    commands    COMMANDS, FieldSpec, validate_request   the one schema of the requests
    infos       ConsoleInfo, ClientInfo, Event, ...     typed replies and events

Imports point down this list only (errors and enums import nothing of ours).
"""

from __future__ import annotations

from vspc.common.admin.commands import (
    COMMANDS,
    MAX_ALERTS,
    MAX_GREP,
    MAX_REASON,
    MAX_REPLAY,
    CommandSpec,
    FieldKind,
    FieldSpec,
    Request,
    required_access,
    required_level,
    validate_request,
)
from vspc.common.admin.enums import Access, ClientKind, EventName, Level, LockMode, VMotionPhase
from vspc.common.admin.errors import AdminError, ErrorCode, RequestId, failed
from vspc.common.admin.framing import MAX_LINE, LineFramer, parse_request
from vspc.common.admin.infos import (
    AttachGrant,
    ClientInfo,
    ConsoleInfo,
    Event,
    Hello,
    LatencyHistogram,
    Stats,
    TailChunk,
)
from vspc.common.admin.messages import (
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    decode_bytes,
    decode_message,
    encode_bytes,
    encode_message,
    is_event,
    is_reply,
    ok,
    raise_for_reply,
)
from vspc.common.admin.validate import (
    MAX_STR,
    optional_bool,
    optional_enum,
    optional_int,
    optional_str,
    require_enum,
    require_int,
    require_str,
)

__all__ = [
    "COMMANDS",
    "MAX_ID_LENGTH",
    "MAX_LINE",
    "MAX_ALERTS",
    "MAX_GREP",
    "MAX_REASON",
    "MAX_REPLAY",
    "MAX_STR",
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
    "LatencyHistogram",
    "Level",
    "Stats",
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
    "require_enum",
    "require_int",
    "require_str",
    "required_access",
    "required_level",
    "validate_request",
]
