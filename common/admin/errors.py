"""Admin protocol errors: the closed set of codes, the exception, the error reply.

Boundary: part of the sans-IO admin codec (`vspc.common.admin`, which re-exports it);
no sockets, no asyncio, no logging.  Spec: docs/admin-protocol.md, "Error codes".
Every failure that reaches the wire carries an `ErrorCode` (docs/development.md, "Errors").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = ["AdminError", "ErrorCode", "RequestId", "failed"]

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
    VM_NOT_CONNECTED = "vm_not_connected"  # break: the console has no VM connection
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


def failed(code: ErrorCode, message: str, id: RequestId | None = None) -> dict[str, Any]:
    """An error reply: ``{"ok": false, "id": id?, "error": {"code", "message"}}``."""
    reply: dict[str, Any] = {"ok": False}
    if id is not None:
        reply["id"] = id
    reply["error"] = {"code": code.value, "message": message}
    return reply
