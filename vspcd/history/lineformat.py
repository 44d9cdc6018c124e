"""Console log contents: timestamps in, timestamps out, and tails across rotation.

See docs/operations.md, "Console logs: `--log-dir`".

Boundary: pure functions on bytes plus plain file reads; no asyncio, no hub.

Timestamps (`--log-timestamps`, ConMan's `logopts=timestamp`).  Every line of a
timestamped log file starts with a fixed-width UTC stamp that vspcd wrote::

    2026-11-30T17:45:00.123Z <the console's bytes, unchanged, up to and including \\n>

`STAMP_WIDTH` (25) bytes: ISO 8601 date and time with milliseconds, `Z`, one space.
The stamp is the time the line's first byte reached vspcd.  A line is what follows a
`\\n` (the console's `\\r\\n` ends one); a new file (first open, rotation, SIGHUP
reopen) starts with a stamp even in the middle of a console line, so every line of
every file begins with one.  Removing the first 25 bytes of every line gives back the
console's bytes exactly (`strip_timestamps`, or `sed -E 's/^.{25}//'` for text).  A
VM that prints something that looks like a stamp cannot hide vspcd's: the stamp is
always the first 25 bytes of the line, whatever follows.

Tails.  `read_tail(path, n)` returns the last `n` console bytes of a log, continuing
into its rotated files (`PATH.N`, highest N newest, or `PATH.N.gz`) when the current
file alone is shorter: scrollback restored after a restart and the HTTP console-log
route both read across a rotation's cut.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from pathlib import Path

__all__ = [
    "STAMP_WIDTH",
    "format_stamp",
    "read_tail",
    "rotated_files",
    "stamp_lines",
    "strip_timestamps",
]

STAMP_WIDTH = 25
_STAMP_RE = re.compile(rb"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
_READ_BLOCK = 64 * 1024


def format_stamp(now: float) -> bytes:
    """The 25-byte stamp for Unix time `now` (UTC, milliseconds)."""
    whole = int(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode() + b".%03dZ " % millis


def stamp_lines(data: bytes, stamp: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """Insert `stamp` at the start of every line that begins in `data`.

    Args:
        data: a chunk of console output.
        stamp: from `format_stamp`.
        at_line_start: whether the chunk begins a line (the previous one ended in
            `\\n`, or the file is new).

    Returns:
        The stamped bytes, and whether the next chunk begins a line.  A trailing
        `\\n` gets no stamp after it yet: the next line has not begun, and its stamp
        should carry the time it does.
    """
    ends = data.endswith(b"\n")
    core = data[:-1] if ends else data
    out = core.replace(b"\n", b"\n" + stamp)
    if at_line_start:
        out = stamp + out
    if ends:
        out += b"\n"
    return out, ends


def strip_timestamps(data: bytes) -> bytes:
    """The console bytes of a timestamped log (which must start at a line start)."""
    # `^` in MULTILINE matches only at the start and after `\n`, and matching resumes
    # after the removed stamp, so a stamp-like text the VM printed stays.
    return _STAMP_RE.sub(b"", data)


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """`path`'s rotated files as (N, file), oldest first; `PATH.N` wins over `.N.gz`."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)(\.gz)?")
    found: dict[int, Path] = {}
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        seq = int(match.group(1))
        if match.group(2) is None or seq not in found:
            found[seq] = path.parent / name
    return sorted(found.items())


def _file_tail(path: Path, want: int, stamped: bool) -> tuple[bytes, bool]:
    """Up to `want` console bytes from the end of one file; and whether that is all
    the file holds (so an older file may add more)."""
    if path.name.endswith(".gz"):
        # A rotated file is at most --log-max-size (plus one write), so streaming it
        # through and keeping the tail is bounded work.
        raw = bytearray()
        keep = want * (STAMP_WIDTH + 1) if stamped else want
        with gzip.open(path, "rb") as stream:
            while block := stream.read(_READ_BLOCK):
                raw += block
                if len(raw) > 2 * keep:
                    del raw[: len(raw) - keep]
        # Too much was kept unless the whole file fit, so `complete` is conservative.
        data = bytes(raw)
        complete = len(raw) <= keep
        if stamped:
            data = _stripped_from_line_start(data, complete)
        return data[max(0, len(data) - want) :], complete and len(data) <= want
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        span = want if not stamped else want * 2 + STAMP_WIDTH * 4
        while True:
            start = max(0, size - span)
            stream.seek(start)
            data = stream.read(size - start)
            if stamped:
                data = _stripped_from_line_start(data, start == 0)
            if len(data) >= want or start == 0:
                return data[max(0, len(data) - want) :], start == 0 and len(data) <= want
            span *= 4  # short lines: each carries a 25-byte stamp; read further back


def _stripped_from_line_start(data: bytes, at_file_start: bool) -> bytes:
    if not at_file_start:
        cut = data.find(b"\n")
        data = b"" if cut < 0 else data[cut + 1 :]  # drop the partial first line
    return strip_timestamps(data)


def read_tail(path: Path, want: int, *, stamped: bool = False) -> bytes:
    """The last `want` console bytes of log `path` and, if it is shorter, of its
    rotated files, newest first.  Missing or unreadable files contribute nothing.

    Args:
        path: the console's current log file.
        want: how many bytes.
        stamped: the files carry `--log-timestamps` stamps (removed here).
    """
    parts: list[bytes] = []
    have = 0
    candidates: list[Path] = [path] + [p for _, p in reversed(rotated_files(path))]
    for candidate in candidates:
        if have >= want:
            break
        try:
            data, complete = _file_tail(candidate, want - have, stamped)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        parts.append(data)
        have += len(data)
        if not complete:
            break
    return b"".join(reversed(parts))[-want:] if want else b""
