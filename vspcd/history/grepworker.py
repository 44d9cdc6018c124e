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
is skipped whole.  Stdlib only, so the child starts fast.
"""

from __future__ import annotations

import calendar
import gzip
import json
import os
import re
import sys
import time
from typing import Any, TextIO

_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]|\x1b"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
STAMP_WIDTH = 25
MAX_LINE = 4096


def _stamp_time(text: str) -> float | None:
    if _STAMP.match(text) is None:
        return None
    whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + int(text[20:23]) / 1000


def _read(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            return stream.read()
    with open(path, "rb") as stream:
        return stream.read()


def _clean(line: str) -> str:
    line = line.rstrip("\r")
    if "\r" in line:  # a line that overwrote itself: what was left on the screen
        line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    return _CONTROLS.sub("", line)[:MAX_LINE]


def scan(job: dict[str, Any], out: TextIO) -> None:
    """Run one job, writing result lines to `out`."""
    flags = re.MULTILINE | (re.IGNORECASE if job.get("ignore_case") else 0)
    pattern: str = job["pattern"]
    plain = re.compile(pattern, flags)
    stamped_rx = re.compile(
        f"^.{{{STAMP_WIDTH}}}(?:{pattern[1:]})" if pattern.startswith("^") else pattern,
        flags,
    )
    since, until = job.get("since"), job.get("until")
    left: int = job["limit"]
    truncated = False
    for ident, path, stamped in job["files"]:
        if truncated:
            break
        try:
            if since is not None and not stamped and os.stat(path).st_mtime < since:
                continue
            data = _read(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if b"\x1b" in data:
            data = _ESCAPES.sub(b"", data)
        text = data.decode("utf-8", "replace")
        rx = stamped_rx if stamped else plain
        position = 0
        while position <= len(text):
            match = rx.search(text, position)
            if match is None:
                break
            if left <= 0:
                truncated = True  # one more match than asked for: say so
                break
            start = text.rfind("\n", 0, match.start()) + 1
            stop = text.find("\n", match.start())
            stop = len(text) if stop < 0 else stop
            position = stop + 1
            line = text[start:stop]
            when = None
            if stamped:
                when = _stamp_time(line)
                if when is not None:
                    line = line[STAMP_WIDTH:]
                if when is not None and (
                    (since is not None and when < since) or (until is not None and when > until)
                ):
                    continue
            out.write(json.dumps({"i": ident, "t": when, "l": _clean(line)}) + "\n")
            left -= 1
    out.write(json.dumps({"done": True, "truncated": truncated}) + "\n")
    out.flush()


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    scan(job, sys.stdout)


if __name__ == "__main__":
    main()
