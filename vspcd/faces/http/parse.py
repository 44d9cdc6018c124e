"""HTTP/1.x request heads, sans-IO (RFC 9112 §2-§5), for vspcd's small GET listener.

Boundary: bytes in, a `Request` or an `HttpError` out; no sockets, no clock (the
adapter in vspcd/faces/http/server.py owns both, like h11 and uvicorn).  Only what a GET server
needs: the request line, header fields and the end of the head.  A request body is
refused (413 when it announces one: a GET/HEAD server has no use for it), every
connection carries one request (`Connection: close`), so there is no pipelining
state.

Limits: the whole head at most `max_head` bytes (431 when exceeded, 414 when the
request line alone does), at most `max_fields` header fields (431).  Errors say what
was wrong in a short reason the adapter sends back; none of them are exceptions that
escape to the event loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["HttpError", "Request", "RequestParser"]

# RFC 9110 §5.6.2 token characters, for methods and field names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value: visible ASCII, obs-text, space and tab (RFC 9110 §5.5); no CR/LF/NUL.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")


class HttpError(Exception):
    """The request cannot be served; `status` and `reason` are the reply."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head."""

    method: str
    target: str  # as sent
    path: str  # percent-decoded, without the query
    query: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order

    def header(self, name: str) -> str | None:
        """The first value of field `name` (any case), or None."""
        name = name.lower()
        return next((value for field, value in self.headers if field == name), None)


class RequestParser:
    """Accumulates bytes until one request head is complete.

    `feed(data)` returns the `Request` once the blank line ending the head has
    arrived, None while more is needed, and raises `HttpError` for a bad or
    oversized request.  After a result or an error the parser is done: further
    input is an error (the connection carries one request).
    """

    def __init__(self, *, max_head: int = 8192, max_fields: int = 64) -> None:
        self._buf = bytearray()
        self._max_head = max_head
        self._max_fields = max_fields
        self._done = False

    def feed(self, data: bytes) -> Request | None:
        if self._done:
            raise HttpError(400, "one request per connection")
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        sep_len = 4
        lf_end = self._buf.find(b"\n\n")  # bare LF line ends are tolerated (RFC 9112 §2.2)
        if lf_end >= 0 and (end < 0 or lf_end < end):
            end, sep_len = lf_end, 2
        if end < 0:
            first = self._buf.find(b"\n")
            if first < 0 and len(self._buf) > self._max_head:
                self._done = True
                raise HttpError(414, "request line too long")
            if len(self._buf) > self._max_head:
                self._done = True
                raise HttpError(431, "request header fields too large")
            return None
        self._done = True
        if end + sep_len > self._max_head:
            raise HttpError(431, "request header fields too large")
        return _parse_head(bytes(self._buf[:end]), self._max_fields)


def _parse_head(head: bytes, max_fields: int) -> Request:
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and lines[0] == b"":  # RFC 9112 §2.2: ignore leading empty lines
        lines.pop(0)
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    if not _VERSION.fullmatch(version):
        raise HttpError(400, "unsupported HTTP version")
    if not target.startswith(b"/") or not all(0x21 <= b <= 0x7E for b in target):
        raise HttpError(400, "malformed request target")
    fields = lines[1:]
    if len(fields) > max_fields:
        raise HttpError(431, "too many header fields")
    headers: list[tuple[str, str]] = []
    for line in fields:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obs-fold (RFC 9112 §5.2)
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise HttpError(400, "malformed header field value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    for field, text in headers:
        if field == "transfer-encoding" or (field == "content-length" and text.strip() != "0"):
            raise HttpError(413, "request bodies are not accepted")
    raw_target = target.decode("ascii")
    raw_path, _, query = raw_target.partition("?")
    try:
        path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
    except UnicodeDecodeError:
        raise HttpError(400, "path is not UTF-8 once decoded") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise HttpError(400, "control character in path")
    return Request(method.decode("ascii"), raw_target, path, query, tuple(headers))
