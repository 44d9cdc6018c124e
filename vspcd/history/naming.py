"""Console log file names: one file per console, never shared (docs/operations.md, "Console logs").

Boundary: pure naming plus one small index file; no asyncio, no console objects.
`ConsoleLogs` (vspcd/history/consolelog.py) asks `OwnerIndex.assign(key, wanted)` for the
file a console writes and gets back the name it must use.

Naming (`--log-name`):

* `name` (default, vSPC.py's layout): `PREFIX-NAME`, NAME the console's display name.
* `uuid`: the console key alone, no prefix: 32 hex digits (`_LABEL` appended for a
  labelled port).  This is the `serial_log_dir` layout OpenStack's vmware-vspc writes
  and Nova's VMware driver reads (`get_console_output`: `serial_log_dir` + the
  instance UUID with its dashes removed).
* `name-uuid`: `PREFIX-NAME-KEY`, both of the above.

Ownership (why a VM cannot write into another VM's log).  A VM chooses its own name,
so two consoles may want the same file.  The first console that ever claimed a file
name keeps it; any other console wanting it gets `NAME~UUID8` (the first 8 hex digits
of its VC UUID), or `NAME~KEY` (its whole key) if that is taken as well; the key is
unique, so the last form always is.  Claims are remembered in `DIR/.vspcd-owners`
(JSON lines `{"key": ..., "file": ...}`, appended when a console claims a new file
name or moves to another of its files, never rewritten), so the rule holds across
restarts whether or not `--persist-file` is used.  Deleting that file forgets the
claims (the next claimant of a name keeps it).

Claims are compared by *stem*: the file name without the suffixes vspcd itself adds
(`.events`, rotation's `.N`, `.N.gz`), so a VM named `db01.1` cannot write into
`vmlog-db01`'s first rotated file either.  The price is that `db.1` and `db.2`
(same stem `db`) are told apart by a suffix too.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import unicodedata
from pathlib import Path

from vspc.vspcd.history.fileio import failing

log = logging.getLogger(__name__)

__all__ = ["OWNERS_FILE", "LogNaming", "OwnerIndex", "log_file_name", "stem", "wanted_name"]

OWNERS_FILE = ".vspcd-owners"  # a leading '.' is something log_file_name never makes

# NAME_MAX is 255 bytes; leave room for the suffixes added to a console's file name
# (`~` + a 32-hex key + label is cut too, see _with_suffix; `.12345.gz.tmp`, `.events`).
_NAME_BUDGET = 255 - 24
_STEM_RE = re.compile(r"(?:\.events|\.\d+(?:\.gz(?:\.tmp)?)?)$")


class LogNaming(enum.Enum):
    """How a console's log file is named (`--log-name`)."""

    NAME = "name"
    UUID = "uuid"
    NAME_UUID = "name-uuid"


def _safe_char(char: str) -> str:
    if char == "/" or unicodedata.category(char) == "Cc":
        return "_"
    return char


def _cut(text: str, budget: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) > budget:
        return encoded[:budget].decode("utf-8", "ignore")
    return text


def log_file_name(prefix: str, display_name: str) -> str:
    """`PREFIX-NAME` with NAME safe as one file name component.

    '/' and control characters become '_', a leading '.' becomes '_' (no hidden
    files, no '..'), an empty name becomes '_', and the result is cut to 231 bytes
    of UTF-8 (NAME_MAX less room for the suffixes rotation and events add).  An
    empty prefix gives just NAME.
    """
    name = "".join(_safe_char(c) for c in display_name) or "_"
    if name.startswith("."):
        name = "_" + name[1:]
    full = f"{prefix}-{name}" if prefix else name
    return _cut(full, _NAME_BUDGET)


def wanted_name(naming: LogNaming, prefix: str, key: str, display_name: str) -> str:
    """The file name a console asks for before ownership is checked.

    Args:
        naming: the `--log-name` layout.
        prefix: `--log-prefix` (not used by `uuid`).
        key: the console key as events name it (`str(ConsoleKey)`).
        display_name: the console's display name (NAME_LABEL).
    """
    if naming is LogNaming.UUID:
        return log_file_name("", key)
    if naming is LogNaming.NAME_UUID:
        return log_file_name(prefix, f"{display_name}-{key}")
    return log_file_name(prefix, display_name)


def stem(file_name: str) -> str:
    """`file_name` without one suffix vspcd adds (`.events`, `.N`, `.N.gz`)."""
    return _STEM_RE.sub("", file_name)


def _with_suffix(name: str, suffix: str) -> str:
    # Cut the name, not the suffix: the suffix is what makes it unique.
    return _cut(name, _NAME_BUDGET - len(suffix.encode("utf-8"))) + suffix


class OwnerIndex:
    """Which console owns which log file name; remembered in `DIR/.vspcd-owners`.

    Args:
        directory: the log directory; None keeps the index in memory only (tests).
    """

    def __init__(self, directory: Path | None) -> None:
        self._path = None if directory is None else directory / OWNERS_FILE
        self._owner: dict[str, str] = {}  # stem -> key
        self._latest: dict[str, str] = {}  # key -> file name it claimed last
        self._failed = False
        if self._path is not None:
            self._load(self._path)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("console log owners %s: cannot read (%s); starting empty", path, exc)
            return
        bad = 0
        for line in text.splitlines():
            try:
                row = json.loads(line)
                key, file_name = row["key"], row["file"]
                if not isinstance(key, str) or not isinstance(file_name, str):
                    raise TypeError("key and file must be strings")
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            # The first claim of a stem wins, as it did when it was written.
            self._owner.setdefault(stem(file_name), key)
            if self._owner[stem(file_name)] == key:
                self._latest[key] = file_name
        if bad:
            log.warning("console log owners %s: %d unreadable line(s) skipped", path, bad)

    def owner(self, file_name: str) -> str | None:
        """The key owning `file_name`'s stem, or None."""
        return self._owner.get(stem(file_name))

    def latest(self, key: str) -> str | None:
        """The file name `key` claimed last (its current log), or None."""
        return self._latest.get(key)

    def assign(self, key: str, wanted: str, uuid8: str) -> str:
        """The file name console `key` writes when it wants `wanted`; claims it.

        Args:
            key: the console key (`str(ConsoleKey)`).
            wanted: from `wanted_name`.
            uuid8: the first 8 hex digits of the console's VC UUID.
        """
        for candidate in (wanted, _with_suffix(wanted, f"~{uuid8}")):
            owner = self._owner.get(stem(candidate))
            if owner is None or owner == key:
                self._claim(key, candidate, new=owner is None)
                return candidate
        # The key is unique, so this stem can only be ours (or a forged index line).
        last = _with_suffix(wanted, "~" + log_file_name("", key))
        self._claim(key, last, new=self._owner.get(stem(last)) is None)
        return last

    def _claim(self, key: str, file_name: str, *, new: bool) -> None:
        # A line per new claim, and per change of a key's current file (a rename), so
        # that `latest` is right after a restart too; renames are rare.
        moved = self._latest.get(key) != file_name
        self._latest[key] = file_name
        if not new and not moved:
            return
        self._owner[stem(file_name)] = key
        if self._path is None:
            return
        line = json.dumps({"key": key, "file": file_name}) + "\n"
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            self._failed = failing(
                self._failed,
                log,
                "console log owners %s: cannot record a claim (%s); claims hold until restart",
                self._path,
                exc.strerror or exc,
            )
            return
        self._failed = False
