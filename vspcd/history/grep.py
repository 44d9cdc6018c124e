"""Searching every console's history: the admin `grep` command's engine.

Spec: docs/operations.md "Searching console history", docs/admin-protocol.md `grep`.
Boundary: finds what to search and runs the search off the event loop's critical
path; who may see which console is the caller's business (`visible`, judged by the
admin server, vspcd/faces/admin/handlers.py).

* Console logs (`--log-dir`): every console's current file and its rotated
  generations (`FILE.N`, `FILE.N.gz`; vspcd/history/naming.py, lineformat.py),
  files of consoles long gone included.  Which console a file belongs to comes from
  the directory's owners index (`.vspcd-owners`), or for `--log-name uuid` from the
  name itself.  The files are scanned by child processes
  (vspcd/history/grepworker.py, one per CPU up to `WORKERS`): the daemon only reads
  their result lines, a few at a time, between other work.
* Live scrollback, for consoles without a log file (no `--log-dir`, or nothing
  written yet): scanned in the daemon, one console per event-loop turn (the
  scrollback is bounded by `--scrollback`).

Results: console key and name, Unix time where `--log-timestamps` recorded it (else
None), and the line, terminal escapes removed; at most `limit`, with `truncated`
set when there were more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vspc.vspcd.history.grepworker import MAX_LINE, _clean
from vspc.vspcd.history.naming import LogNaming, OwnerIndex, stem
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.hub.selectors import ConsoleRef

log = logging.getLogger(__name__)

__all__ = ["WORKERS", "GrepMatch", "GrepQuery", "GrepResult", "LogPlace", "grep"]

WORKERS = 4  # child processes scanning files at once (fewer on fewer CPUs)

_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]|\x1b"
)


@dataclass(frozen=True, slots=True)
class LogPlace:
    """Where console logs are (the `--log-*` options that matter for reading)."""

    directory: Path
    prefix: str
    naming: LogNaming
    timestamps: bool


@dataclass(frozen=True, slots=True)
class GrepQuery:
    pattern: str  # a Python regular expression (checked by the caller)
    ignore_case: bool = False
    since: float | None = None  # Unix time
    until: float | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class GrepMatch:
    key: str
    name: str
    time: float | None
    line: str
    source: str  # "log" or "scrollback"

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "name": self.name,
            "time": self.time,
            "line": self.line,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class GrepResult:
    matches: tuple[GrepMatch, ...]
    truncated: bool
    consoles: int  # consoles searched


@dataclass(frozen=True, slots=True)
class _LogConsole:
    key: str
    name: str
    ref: ConsoleRef
    files: tuple[Path, ...]  # oldest first


def _key_ref(key: str, name: str) -> ConsoleRef:
    uuid, _, label = key.partition("_")
    return ConsoleRef(name, name, uuid, label)


_GENERATION = re.compile(r"\.(\d+)(\.gz)?$")


def log_consoles(place: LogPlace, live: dict[str, Console]) -> list[_LogConsole]:
    """Every console with log files in `place`, live or long gone (one directory
    listing, whatever the number of consoles)."""
    owners = OwnerIndex(place.directory)
    try:
        names = os.listdir(place.directory)
    except OSError as exc:
        log.warning("grep: cannot list %s: %s", place.directory, exc)
        return []
    current: set[str] = set()
    rotated: dict[str, dict[int, str]] = {}  # stem -> N -> file name (`.N` over `.N.gz`)
    for name in names:
        if name.startswith(".") or name.endswith((".events", ".tmp")):
            continue
        base = stem(name)
        if base == name:
            current.add(name)
            continue
        found = _GENERATION.search(name)
        if found is None or name[: found.start()] != base:
            continue
        generations = rotated.setdefault(base, {})
        number = int(found.group(1))
        if found.group(2) is None or number not in generations:
            generations[number] = name
    result: list[_LogConsole] = []
    for base in sorted(current | set(rotated)):
        key = owners.owner(base)
        if key is None and place.naming is LogNaming.UUID:
            key = base
        if key is None:
            continue
        files = [place.directory / n for _, n in sorted(rotated.get(base, {}).items())]
        if base in current:
            files.append(place.directory / base)
        console = live.get(key)
        if console is not None:
            name = console.display_name
            ref = ConsoleRef(name, console.name, console.key.uuid, console.key.label)
        else:
            prefix = place.prefix + "-"
            name = base[len(prefix) :] if place.prefix and base.startswith(prefix) else base
            ref = _key_ref(key, name)
        result.append(_LogConsole(key, name, ref, tuple(files)))
    return result


async def grep(
    query: GrepQuery,
    *,
    consoles: Iterable[Console],
    place: LogPlace | None,
    visible: Callable[[ConsoleRef], bool],
    wanted: Callable[[ConsoleRef], bool] = lambda ref: True,
    flush: Callable[[], None] | None = None,
) -> GrepResult:
    """Search the logs in `place` and the scrollback of `consoles` without one.

    Args:
        visible: whether the caller may see a console (access rules).
        wanted: whether the caller asked for it (selectors; default all).
        flush: writes buffered console-log output first (`ConsoleLogs.flush`).

    Raises:
        re.error: a bad pattern.
    """
    flags = re.MULTILINE | (re.IGNORECASE if query.ignore_case else 0)
    rx = re.compile(query.pattern, flags)
    live = {str(c.key): c for c in consoles}
    logged: list[_LogConsole] = []
    if place is not None:
        if flush is not None:
            flush()
        logged = [c for c in log_consoles(place, live) if visible(c.ref) and wanted(c.ref)]
    matches: list[GrepMatch] = []
    truncated = False
    if logged:
        # One worker per CPU (at most WORKERS), each on every n-th console; results
        # in console order, cut at the limit.
        count = max(1, min(WORKERS, os.cpu_count() or 1, len(logged)))
        parts: list[list[GrepMatch]] = [[] for _ in range(count)]
        cut = await asyncio.gather(
            *(_run_worker(query, logged[i::count], place, parts[i]) for i in range(count))
        )
        order = {c.key: n for n, c in enumerate(logged)}
        merged = sorted((m for part in parts for m in part), key=lambda m: order[m.key])
        truncated = any(cut) or len(merged) > query.limit
        matches.extend(merged[: query.limit])
    have = {c.key for c in logged}
    searched = len(logged)
    for key, console in live.items():
        if truncated or key in have:
            continue
        ref = ConsoleRef(console.display_name, console.name, console.key.uuid, console.key.label)
        if not (visible(ref) and wanted(ref)):
            continue
        searched += 1
        data = console.scrollback.last(console.scrollback.limit)
        truncated = _scan_scrollback(rx, console.key, console.display_name, data, query, matches)
        await asyncio.sleep(0)  # one console per turn: other connections go first
    return GrepResult(tuple(matches), truncated, searched)


def _scan_scrollback(
    rx: re.Pattern[str],
    key: ConsoleKey,
    name: str,
    data: bytes,
    query: GrepQuery,
    matches: list[GrepMatch],
) -> bool:
    if b"\x1b" in data:
        data = _ESCAPES.sub(b"", data)
    text = data.decode("utf-8", "replace")
    position = 0
    while position <= len(text):
        match = rx.search(text, position)
        if match is None:
            return False
        if len(matches) >= query.limit:
            return True
        start = text.rfind("\n", 0, match.start()) + 1
        stop = text.find("\n", match.start())
        stop = len(text) if stop < 0 else stop
        position = stop + 1
        line = _clean(text[start:stop])[:MAX_LINE]
        matches.append(GrepMatch(str(key), name, None, line, "scrollback"))
    return False


async def _run_worker(
    query: GrepQuery,
    logged: list[_LogConsole],
    place: LogPlace | None,
    matches: list[GrepMatch],
) -> bool:
    assert place is not None
    files: list[list[object]] = []
    owners: list[_LogConsole] = []
    for console in logged:
        for path in console.files:
            files.append([len(owners), str(path), place.timestamps])
        owners.append(console)
    job = {
        "pattern": query.pattern,
        "ignore_case": query.ignore_case,
        "since": query.since,
        "until": query.until,
        "limit": query.limit - len(matches),
        "files": [[i, p, s] for i, p, s in files],
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vspc.vspcd.history.grepworker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=4 * MAX_LINE + 1024,
    )
    assert process.stdin is not None and process.stdout is not None
    truncated = False
    try:
        process.stdin.write(json.dumps(job).encode())
        await process.stdin.drain()
        process.stdin.close()
        while True:
            raw = await process.stdout.readline()
            if not raw:
                break
            item = json.loads(raw)
            if item.get("done"):
                truncated = bool(item.get("truncated"))
                break
            console = owners[item["i"]]
            matches.append(GrepMatch(console.key, console.name, item["t"], item["l"], "log"))
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
    return truncated
