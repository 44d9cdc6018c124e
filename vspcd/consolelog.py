"""Console logs: every console's output appended to a file (`--log-dir`).

Boundary: a hub output listener (`Hub.add_output_listener`) and observer; it reads
consoles, never changes them.  This is vSPC.py's Logging backend
(`--backend Logging --backend-args '-l DIR -p PREFIX -m MODE'`).

* Each console logs to `DIR/PREFIX-NAME`, NAME being the console's display name
  (`NAME_LABEL` for a labelled port), made safe for a file name by `log_file_name`.
  Until ESXi sends VM-NAME a console is named by its UUID; the file is opened at the
  first flush, by which time the name has normally arrived.  If the console was
  already logging under its UUID, that file is renamed to the new name (unless a file
  of that name exists; then new output simply goes there).
* Files are opened `O_APPEND` and created with `mode` (not narrowed by the umask).
* Output is buffered per console and written at most once a `flush_interval`
  (timer armed only while something is buffered) or when a buffer passes
  `buffer_limit`: never a write per chunk, never an fsync.  `flush()` runs at
  shutdown.
* `reopen()` (SIGHUP) flushes, closes and reopens every open file by name, so
  logrotate's `create` (move, then reopen) and `copytruncate` both work.
* A failed open or write (permissions, disk full) is logged once per file, until it
  works again; the bytes that could not be written are dropped, so a broken disk
  costs log lines, never memory, other consoles or the daemon.
"""

from __future__ import annotations

import errno
import logging
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vspc.common import vmware as vm
from vspc.vspcd.console import Cancellable, Console

log = logging.getLogger(__name__)

__all__ = ["ConsoleLogs", "LogSettings", "log_file_name"]

_NAME_MAX = 255  # bytes in one path component (NAME_MAX on Linux filesystems)


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Where and how console logs are written."""

    directory: Path
    prefix: str = "vmlog"
    mode: int = 0o600
    flush_interval: float = 1.0
    buffer_limit: int = 64 * 1024


def _safe_char(char: str) -> str:
    if char == "/" or unicodedata.category(char) == "Cc":
        return "_"
    return char


def log_file_name(prefix: str, display_name: str) -> str:
    """`PREFIX-NAME` with NAME safe as one file name component.

    '/' and control characters become '_', a leading '.' becomes '_' (no hidden
    files, no '..'), an empty name becomes '_', and the result is cut to 255 bytes
    of UTF-8.  An empty prefix gives just NAME.
    """
    name = "".join(_safe_char(c) for c in display_name) or "_"
    if name.startswith("."):
        name = "_" + name[1:]
    full = f"{prefix}-{name}" if prefix else name
    encoded = full.encode("utf-8")
    if len(encoded) > _NAME_MAX:
        full = encoded[:_NAME_MAX].decode("utf-8", "ignore")
    return full


class _LogFile:
    """One console's log: its buffer and, once opened, its file."""

    __slots__ = ("console", "name", "by_uuid", "path", "fd", "buffer", "failed", "dirty")

    def __init__(self, console: Console) -> None:
        self.console = console
        self.name = ""  # the display name `path` was derived from
        self.by_uuid = False  # ... which was the UUID placeholder (no VM-NAME yet)
        self.path: Path | None = None
        self.fd: int | None = None
        self.buffer = bytearray()
        self.failed = False  # an error was logged and not yet followed by success
        self.dirty = False  # in ConsoleLogs._dirty


class ConsoleLogs:
    """Appends console output to per-console files.

    Args:
        settings: directory, prefix, file mode, flush timing.
        call_later: `loop.call_later`, for the periodic flush.
    """

    def __init__(
        self,
        settings: LogSettings,
        *,
        call_later: Callable[[float, Callable[[], None]], Cancellable],
    ) -> None:
        self._settings = settings
        self._call_later = call_later
        self._files: dict[str, _LogFile] = {}  # by str(console.key), as events name it
        self._dirty: list[_LogFile] = []
        self._timer: Cancellable | None = None

    def check_directory(self) -> None:
        """Create the log directory if missing (0755) and check it is writable.

        Raises:
            OSError: it cannot be created or written (the message names it).
        """
        directory = self._settings.directory
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"log directory {directory}: {exc.strerror or exc}") from None
        if not directory.is_dir():
            raise OSError(f"log directory {directory}: not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(f"log directory {directory}: not writable by this user")

    # -- hub hooks ----------------------------------------------------------------

    def output(self, console: Console, data: bytes) -> None:
        """Hub output listener: buffer `data` for `console`'s file."""
        key = str(console.key)
        entry = self._files.get(key)
        if entry is None or entry.console is not console:
            if entry is not None:  # a console of the same key that expired unseen
                self._write(entry)
                self._close(entry)
            entry = self._files[key] = _LogFile(console)
        entry.buffer += data
        if len(entry.buffer) >= self._settings.buffer_limit:
            self._write(entry)
        elif not entry.dirty:
            entry.dirty = True
            self._dirty.append(entry)
            if self._timer is None:
                self._timer = self._call_later(self._settings.flush_interval, self._on_timer)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Hub observer: follow renames; close a console's file once its VM is gone."""
        if event in ("vm_disconnected", "vm_expired"):
            entry = self._files.pop(fields["key"], None)
            if entry is not None:
                self._write(entry)
                self._close(entry)
        elif event == "vm_renamed":
            # Rename the file now, not at the next write: the VM may stay silent.
            entry = self._files.get(fields["key"])
            if entry is not None and entry.fd is not None:
                self._follow_name(entry)

    # -- flushing -----------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered byte now."""
        dirty, self._dirty = self._dirty, []
        for entry in dirty:
            entry.dirty = False
            self._write(entry)

    def reopen(self) -> None:
        """Flush, close and reopen every open log by name (SIGHUP, after logrotate)."""
        self.flush()
        count = 0
        for entry in self._files.values():
            if entry.fd is not None:
                self._close(entry)
                self._open(entry)
                count += 1
        log.info("reopened %d console log(s) in %s", count, self._settings.directory)

    def close(self) -> None:
        """Flush and close everything (shutdown); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        for entry in self._files.values():
            self._close(entry)
        self._files.clear()

    @property
    def open_count(self) -> int:
        """Log files currently open (for the fd-pressure estimate)."""
        return sum(1 for entry in self._files.values() if entry.fd is not None)

    # -- files --------------------------------------------------------------------

    def _write(self, entry: _LogFile) -> None:
        if not entry.buffer:
            return
        if entry.fd is None:
            self._open(entry)
        elif entry.name != entry.console.display_name:
            self._follow_name(entry)
        data = entry.buffer
        if entry.fd is None:
            self._lost(entry, len(data))
            data.clear()
            return
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.write(entry.fd, view[written:])
        except OSError as exc:
            self._error(entry, f"write failed: {exc.strerror or exc}")
            self._lost(entry, len(view) - written)
        else:
            if entry.failed:
                log.info("console log %s: writing again", entry.path)
                entry.failed = False
        finally:
            view.release()
        data.clear()

    def _open(self, entry: _LogFile) -> None:
        console = entry.console
        entry.name = console.display_name
        entry.by_uuid = console.name == vm.display_uuid(console.key.uuid)
        entry.path = path = self._settings.directory / log_file_name(
            self._settings.prefix, entry.name
        )
        try:
            entry.fd = _open_append(path, self._settings.mode)
        except OSError as exc:
            entry.fd = None
            self._error(entry, f"cannot open: {exc.strerror or exc}")

    def _follow_name(self, entry: _LogFile) -> None:
        """The console's name changed: continue in the file of the new name.

        A log still named after the UUID (VM-NAME came late) is renamed, so one
        file holds the whole console; an existing file of the new name wins.
        """
        old_path = entry.path
        self._close(entry)
        new_path = self._settings.directory / log_file_name(
            self._settings.prefix, entry.console.display_name
        )
        if entry.by_uuid and old_path is not None and not new_path.exists():
            try:
                old_path.rename(new_path)
            except OSError as exc:
                log.warning("console log %s: cannot rename to %s: %s", old_path, new_path, exc)
        self._open(entry)

    def _close(self, entry: _LogFile) -> None:
        if entry.fd is not None:
            try:
                os.close(entry.fd)
            except OSError as exc:  # e.g. a delayed write error reported by close(2)
                self._error(entry, f"close failed: {exc.strerror or exc}")
            entry.fd = None

    def _error(self, entry: _LogFile, what: str) -> None:
        if not entry.failed:
            entry.failed = True
            path = entry.path if entry.path is not None else entry.console.display_name
            log.error("console log %s: %s; its output is dropped until this clears", path, what)

    def _lost(self, entry: _LogFile, count: int) -> None:
        log.debug("console log %s: %d bytes dropped", entry.path, count)


def _open_append(path: Path, mode: int) -> int:
    """An O_APPEND descriptor on `path`; a new file gets exactly `mode`.

    Raises:
        OSError: open failed.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    for _ in range(3):  # bounded: the file may vanish between the two opens
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                continue
        try:
            os.fchmod(fd, mode)  # the umask narrowed it; the operator asked for `mode`
        except OSError:
            os.close(fd)
            raise
        return fd
    raise OSError(errno.ENOENT, "created and removed repeatedly", str(path))
