"""Admin protocol framing: bytes in, request dicts out, one JSON object per line.

Boundary: `LineFramer` takes what the socket gave and hands out requests whose
envelope (`parse_request`) is checked; whether the command exists is
`commands.validate_request`'s business.  Part of the sans-IO admin codec
(`vspc.common.admin`, which re-exports it).  Spec: docs/admin-protocol.md, "Framing"
and "Limits and bad input".
"""

from __future__ import annotations

from typing import Any

from vspc.common.admin.errors import AdminError, ErrorCode
from vspc.common.admin.messages import MAX_ID_LENGTH, decode_message, id_of, valid_id

__all__ = ["MAX_LINE", "LineFramer", "parse_request"]

MAX_LINE = 1 << 20  # bytes per line, not counting the b"\n" (docs: "Limits ...")


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
    if "id" in obj and not valid_id(obj["id"]):
        raise AdminError(
            ErrorCode.BAD_FIELD,
            f"field 'id' must be a string of at most {MAX_ID_LENGTH} characters or an integer",
        )
    rid = id_of(obj)
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
        the client sent after its attach line is already console input (the same
        for a cluster splice, vspcd/cluster).  The tail of an overlong line being
        discarded is not a request's and is dropped.
        """
        rest = b"" if self._discarding else bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = self._scan = 0
        self._discarding = False
        return rest
