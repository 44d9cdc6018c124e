"""Render peer-controlled text safely for humans (docs/vspc.md, "Output is safe to print").

A VM chooses its own name (docs/protocol.md §3.4, VM-NAME), its port label (§3.3,
`?port=label`) and, through the daemon, reasons and addresses that end up in
`vspc list`, the shell, the TUI and the daemon log.  Printed raw, a name such as
``"evil\\nFAKE-ROW"`` forges a table row and ``"\\x1b]0;pwned\\x07"`` retitles the
operator's window.  `safe()` is the one function every human-facing output uses to
turn such a string into inert, visible text; JSON output (`--json`, the admin
protocol itself) stays exact and never goes through it.

The rule: every character that a terminal would *act on* rather than show is replaced
by a visible escape, so the result is one line whose width is what it looks like:

- C0 controls, DEL and C1 controls (Unicode category ``Cc``) become ``\\xNN``
  (``\\n``, ``\\r`` and ``\\t`` keep their familiar short forms);
- every other character Python does not call printable -- format characters (``Cf``:
  bidi overrides such as U+202E, zero-width joiners), separators other than the ASCII
  space (``Zs``, ``Zl``, ``Zp``: a no-break space would make ``web01`` and
  ``web01\\u00a0`` look alike), surrogates, private-use and unassigned code points --
  becomes ``\\uNNNN`` (or ``\\UNNNNNNNN``);
- a backslash is doubled, so ``safe()`` is injective: two different names never
  render alike, and an escape shown is never a literal the VM typed.

Console *data* (attach, tail) is the terminal's business and never goes through here.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["safe", "safe_bytes"]

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


@lru_cache(maxsize=4096)
def _escape_char(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: object) -> str:
    """`text` (any object, via `str()`) as one inert, visible line of text.

    Pure ASCII-printable input without a backslash is returned unchanged (the common
    case costs one `isprintable` scan).
    """
    string = text if isinstance(text, str) else str(text)
    if string.isascii() and string.isprintable() and "\\" not in string:
        return string
    return "".join(_escape_char(c) for c in string)


def safe_bytes(data: bytes) -> str:
    """Bytes a peer sent (e.g. an undecodable name) as safe text: UTF-8 where it is
    valid, every other byte as ``\\xNN``."""
    parts: list[str] = []
    while data:
        try:
            parts.append(safe(data.decode("utf-8")))
            break
        except UnicodeDecodeError as error:
            parts.append(safe(data[: error.start].decode("utf-8")))
            parts.extend(f"\\x{byte:02x}" for byte in data[error.start : error.end])
            data = data[error.end :]
    return "".join(parts)
