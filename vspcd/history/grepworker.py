"""The console-log search worker: a child process of vspcd (`python -m`).

Spec: docs/operations.md "Searching console history" (`vspc grep`).  vspcd never scans
log files on its event loop: vspcd/history/grep.py starts this module as a
subprocess, writes one JSON job to its stdin and reads JSON lines from its stdout:
``{"i": FILE_ID, "t": UNIX_TIME_OR_NULL, "l": LINE}`` per matching line, then
``{"done": true, "truncated": BOOL}``.  It stops after `limit` matches.

A job: ``{"pattern", "ignore_case", "since", "until", "limit", "files": [[ID, PATH,
STAMPED], ...]}``; files of one console oldest first (rotated `.N` and `.N.gz`, then
the current one, vspcd/history/naming.py).  Lines are matched with terminal escapes
removed; in a `--log-timestamps` file (vspcd/history/lineformat.py) the stamp gives
the line's time and `--since`/`--until` filter on it, and a leading `^` of the
pattern anchors after the stamp.  Without stamps a file last modified before `since`
is skipped whole.

Speed: the pattern's required literal text (vspcd/history/alerts.py `anchors`) is
the pre-filter.  A plain file is memory-mapped and searched for the literals with
`mmap.find` (memchr speed, no copy, no decoding); only the line around each
occurrence is decoded and matched with the regular expression.  A gzipped
generation is decompressed in blocks of whole lines and a block without any literal
is skipped after one search per literal.  Files with escape sequences (one could
split a literal) and patterns without literal text are matched whole, as text.  The
worker imports only the stdlib and that sans-IO module, so it starts fast.
"""

from __future__ import annotations

import calendar
import gzip
import json
import mmap
import os
import re
import sys
import time
import zlib
from typing import Any, TextIO

from vspc.vspcd.history.alerts import anchors, folded_anchors

Buffer = bytes | mmap.mmap

_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]|\x1b"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
STAMP_WIDTH = 25
MAX_LINE = 4096
_CHUNK = 4 << 20  # bytes of a gzipped file decompressed at a time
_MMAP_MIN = 1 << 20  # smaller files are read whole


def _stamp_time(text: str) -> float | None:
    if _STAMP.match(text) is None:
        return None
    whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + int(text[20:23]) / 1000


def _clean(line: str) -> str:
    line = line.rstrip("\r")
    if "\r" in line:  # a line that overwrote itself: what was left on the screen
        line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    return _CONTROLS.sub("", line)[:MAX_LINE]


class _Search:
    """One job's pattern, the literals that pre-filter it, and its output."""

    def __init__(self, job: dict[str, Any], out: TextIO) -> None:
        ignore_case = bool(job.get("ignore_case"))
        flags = re.MULTILINE | (re.IGNORECASE if ignore_case else 0)
        pattern: str = job["pattern"]
        self.plain = re.compile(pattern, flags)
        self.stamped_rx = re.compile(
            f"^.{{{STAMP_WIDTH}}}(?:{pattern[1:]})" if pattern.startswith("^") else pattern,
            flags,
        )
        # The required literals (vspcd/history/alerts.py): a line without one of them
        # cannot match, so only lines around a literal's occurrence are decoded and
        # matched.  Ignore-case patterns look in the lower-cased text.
        self.fold = ignore_case
        self.literals = folded_anchors(f"(?i){pattern}") if ignore_case else anchors(pattern)
        self.since: float | None = job.get("since")
        self.until: float | None = job.get("until")
        self.left: int = job["limit"]
        self.truncated = False
        self._out = out

    def emit(self, ident: int, line: str, stamped: bool) -> bool:
        """Report one matching line (already known to match); False once over the limit."""
        if self.left <= 0:
            self.truncated = True  # one more match than asked for: say so
            return False
        when = None
        if stamped:
            when = _stamp_time(line)
            if when is not None:
                line = line[STAMP_WIDTH:]
            if when is not None and (
                (self.since is not None and when < self.since)
                or (self.until is not None and when > self.until)
            ):
                return True
        self._out.write(json.dumps({"i": ident, "t": when, "l": _clean(line)}) + "\n")
        self.left -= 1
        return True

    def text(self, ident: int, data: bytes, stamped: bool) -> bool:
        """Match the whole of `data` (escapes removed, decoded); False to stop."""
        if b"\x1b" in data:
            data = _ESCAPES.sub(b"", data)
        text = data.decode("utf-8", "replace")
        rx = self.stamped_rx if stamped else self.plain
        position = 0
        while position < len(text):  # (not the empty "line" after a final LF)
            match = rx.search(text, position)
            if match is None:
                return True
            start = text.rfind("\n", 0, match.start()) + 1
            stop = text.find("\n", match.start())
            stop = len(text) if stop < 0 else stop
            position = stop + 1
            if not self.emit(ident, text[start:stop], stamped):
                return False
        return True

    def candidates(self, ident: int, data: Buffer, stop: int, stamped: bool) -> bool:
        """Match the lines of `data[:stop]` (whole lines, no escapes) that contain a
        literal: `find` (memchr speed) to each occurrence, then that line alone."""
        assert self.literals
        haystack = data[:stop].lower() if self.fold else data
        rx = self.stamped_rx if stamped else self.plain
        upcoming = {lit: haystack.find(lit, 0, stop) for lit in self.literals}
        while True:
            found = [p for p in upcoming.values() if p >= 0]
            if not found:
                return True
            at = min(found)
            start = haystack.rfind(b"\n", 0, at) + 1
            end = haystack.find(b"\n", at, stop)
            end = stop if end < 0 else end
            line = bytes(data[start:end]).decode("utf-8", "replace")
            if rx.search(line) is not None and not self.emit(ident, line, stamped):
                return False
            for lit, position in upcoming.items():
                if 0 <= position <= end:
                    upcoming[lit] = haystack.find(lit, end + 1, stop)

    def file(self, ident: int, path: str, stamped: bool) -> bool:
        """Search one file; False to stop (the limit was passed)."""
        if path.endswith(".gz"):
            return self._gzip(ident, path, stamped)
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size == 0:
                return True
            if not self.literals or size < _MMAP_MIN:
                return self._blocks(ident, stream.read(), stamped)
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                if mapped.find(b"\x1b") >= 0:  # an escape may split a literal
                    return self.text(ident, mapped[:], stamped)
                return self.candidates(ident, mapped, size, stamped)

    def _blocks(self, ident: int, data: bytes, stamped: bool) -> bool:
        if not self.literals or b"\x1b" in data:
            return self.text(ident, data, stamped)
        return self.candidates(ident, data, len(data), stamped)

    def _gzip(self, ident: int, path: str, stamped: bool) -> bool:
        """Stream a gzipped generation in blocks of whole lines; a block without any
        literal is skipped after one search per literal."""
        tail = b""
        with gzip.open(path, "rb") as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    return self._blocks(ident, tail, stamped) if tail else True
                block = tail + chunk if tail else chunk
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    tail = block[: 4 * _CHUNK]  # a line longer than this is cut
                    continue
                tail = block[cut:]
                if self.literals and b"\x1b" not in block:
                    lowered = block[:cut].lower() if self.fold else block
                    if not any(lowered.find(lit, 0, cut) >= 0 for lit in self.literals):
                        continue
                if not self._blocks(ident, block[:cut], stamped):
                    return False


def scan(job: dict[str, Any], out: TextIO) -> None:
    """Run one job, writing result lines to `out`."""
    search = _Search(job, out)
    for ident, path, stamped in job["files"]:
        try:
            if search.since is not None and not stamped and os.stat(path).st_mtime < search.since:
                continue
            if not search.file(ident, path, stamped):
                break
        except (OSError, EOFError, ValueError, gzip.BadGzipFile, zlib.error):
            continue
    out.write(json.dumps({"done": True, "truncated": search.truncated}) + "\n")
    out.flush()


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    scan(job, sys.stdout)


if __name__ == "__main__":
    main()
