"""Console logs: every console's output appended to a file (`--log-dir`).

Boundary: a hub output listener (`Hub.add_output_listener`) and observer; it reads
consoles, never changes them.  This is vSPC.py's Logging backend
(`--backend Logging --backend-args '-l DIR -p PREFIX -m MODE'`), grown with timestamps,
events, rotation, naming and a flush policy, and a file is never shared by two
consoles (docs/operations.md, "Console logs: `--log-dir`").

* File names (vspcd/history/naming.py): `DIR/PREFIX-NAME` (`--log-name name`, the default),
  `DIR/KEY` (`uuid`, OpenStack's layout) or `DIR/PREFIX-NAME-KEY` (`name-uuid`).  A
  name another console claimed first gets a `~UUID8` suffix; the daemon log says at
  INFO which file each console writes.  Until ESXi sends VM-NAME a console is named
  by its UUID; the file is opened at the first flush, by which time the name has
  normally arrived.  If the console was already logging under its UUID, that file is
  renamed to the new name (unless a file of that name exists; then new output simply
  goes there).
* Files are opened `O_APPEND` and created with `mode` (not narrowed by the umask).
* Flush policy (`--log-flush SECONDS`): output is buffered per console and written at
  most once a `flush_interval` (timer armed only while something is buffered) or when
  a buffer passes `buffer_limit`; `0` writes every chunk as it arrives.  Never an
  fsync: a written byte survives `kill -9` of vspcd (it is in the page cache), not a
  power cut.  `flush()` runs at shutdown.
* Timestamps (`--log-timestamps`, vspcd/history/lineformat.py): every line starts with a
  25-byte UTC stamp; stripping it gives the console's bytes exactly.
* Events (`--log-events`, vspcd/history/eventlog.py): one JSON line per console event in
  `FILE.events` beside the log, so nothing a VM prints can pass for one.
* Rotation (`--log-max-size`, `--log-keep`, `--log-compress`): a write that would take
  a file past the size first moves it to `FILE.N` (N counts up: the highest N is the
  newest, and nothing already rotated is ever renamed again), keeps the newest `keep`
  of those, and optionally has them gzipped to `FILE.N.gz` by a subprocess (see
  vspcd/history/gzipper.py; never on the event loop).  `tail()` reads across the cut.
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vspc.common import vmware as vm
from vspc.vspcd.history.fileio import failing, recovered, write_fully
from vspc.vspcd.history.lineformat import (
    STAMP_WIDTH,
    format_stamp,
    read_tail,
    rotated_files,
    stamp_lines,
)
from vspc.vspcd.history.naming import LogNaming, OwnerIndex, log_file_name, wanted_name
from vspc.vspcd.hub.console import Cancellable, Console
from vspc.vspcd.hub.events import (
    ConsoleExpired,
    HubEvent,
    VmConnected,
    VmDisconnected,
    VmRenamed,
)

log = logging.getLogger(__name__)

__all__ = ["ConsoleLogs", "LogSettings", "log_file_name"]


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Where and how console logs are written."""

    directory: Path
    prefix: str = "vmlog"
    mode: int = 0o600
    flush_interval: float = 1.0  # 0: write every chunk at once
    buffer_limit: int = 64 * 1024
    naming: LogNaming = LogNaming.NAME
    timestamps: bool = False
    events: bool = False
    max_size: int = 0  # bytes; 0: never rotate
    keep: int = 5  # rotated files kept per console
    compress: bool = False  # gzip rotated files (needs a `compress` callable)


class _LogFile:
    """One console's log: its buffer and, once opened, its file."""

    __slots__ = (
        "console",
        "key",
        "name",
        "by_uuid",
        "path",
        "fd",
        "size",
        "buffer",
        "failed",
        "dirty",
        "at_line_start",
        "buf_line_start",
        "file_line_start",
        "rotated",
        "rotate_failed",
    )

    def __init__(self, console: Console) -> None:
        self.console = console
        self.key = str(console.key)
        self.name = ""  # the display name `path` was derived from
        self.by_uuid = False  # ... which was the UUID placeholder (no VM-NAME yet)
        self.path: Path | None = None
        self.fd: int | None = None
        self.size = 0  # bytes in the open file (for rotation)
        self.buffer = bytearray()
        self.failed = False  # an error was logged and not yet followed by success
        self.dirty = False  # in ConsoleLogs._dirty
        # Timestamps: whether the console stream, the buffer's first byte and the
        # open file are each at the start of a line.  They differ only across a file
        # boundary (rotation, reopen, restart), which `_write` repairs.
        self.at_line_start = True
        self.buf_line_start = True
        self.file_line_start = True
        self.rotated: list[int] | None = None  # rotated file numbers, oldest first
        self.rotate_failed = False  # a failed rotation was logged, none has worked since


class ConsoleLogs:
    """Appends console output to per-console files.

    Args:
        settings: directory, naming, file mode, flush timing, timestamps, rotation.
        call_later: `loop.call_later`, for the periodic flush.
        wall_clock: Unix time for timestamps and event lines (tests pass a fake).
        compress: called with each rotated file when `settings.compress` is on; it
            must not block (vspcd/history/gzipper.py queues a subprocess).
        remember_owners: keep file ownership in `DIR/.vspcd-owners` across restarts
            (the daemon does); otherwise it is kept in memory only.
    """

    def __init__(
        self,
        settings: LogSettings,
        *,
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        wall_clock: Callable[[], float] = time.time,
        compress: Callable[[Path], None] | None = None,
        remember_owners: bool = False,
    ) -> None:
        self._settings = settings
        self._call_later = call_later
        self._wall_clock = wall_clock
        self._compress = compress
        self._remember = remember_owners
        self._owners = OwnerIndex(settings.directory if remember_owners else None)
        self._files: dict[str, _LogFile] = {}  # by str(console.key), as events name it
        self._dirty: list[_LogFile] = []
        self._timer: Cancellable | None = None
        self._event_failed: set[Path] = set()
        # key -> (its last .events file, whether that was named by the UUID placeholder)
        self._event_files: dict[str, tuple[Path, bool]] = {}

    @property
    def settings(self) -> LogSettings:
        return self._settings

    def check_directory(self, directory: Path | None = None) -> None:
        """Create the log directory (default: the current one) if missing (0755) and
        check it is writable.

        Raises:
            OSError: it cannot be created or written (the message names it).
        """
        directory = directory or self._settings.directory
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"log directory {directory}: {exc.strerror or exc}") from None
        if not directory.is_dir():
            raise OSError(f"log directory {directory}: not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(f"log directory {directory}: not writable by this user")

    def reconfigure(self, settings: LogSettings) -> None:
        """Apply new settings (a configuration reload): everything buffered is written
        under the old ones, every file is closed and reopened under the new ones at its
        next write.  The caller checks a new directory with `check_directory`."""
        self.flush()
        for entry in self._files.values():
            self._close(entry)
            entry.rotated = None
        if settings.directory != self._settings.directory:
            self._owners = OwnerIndex(settings.directory if self._remember else None)
        self._settings = settings
        log.info("console log settings applied")

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
        if self._settings.timestamps:
            if not entry.buffer:
                entry.buf_line_start = entry.at_line_start
            stamp = format_stamp(self._wall_clock())
            data, entry.at_line_start = stamp_lines(data, stamp, entry.at_line_start)
        entry.buffer += data
        if self._settings.flush_interval <= 0 or len(entry.buffer) >= self._settings.buffer_limit:
            self._write(entry)
        elif not entry.dirty:
            entry.dirty = True
            self._dirty.append(entry)
            if self._timer is None:
                self._timer = self._call_later(self._settings.flush_interval, self._on_timer)

    def observe(self, event: HubEvent) -> None:
        """Hub observer: follow renames; close a console's file once its VM is gone."""
        match event:
            case VmDisconnected(key=key) | ConsoleExpired(key=key):
                if isinstance(event, ConsoleExpired):
                    self._event_files.pop(str(key), None)
                entry = self._files.pop(str(key), None)
                if entry is not None:
                    self._write(entry)
                    self._close(entry)
            case VmRenamed(key=key) | VmConnected(key=key):
                # Rename the file now, not at the next write: the VM may stay silent.
                # VmConnected too: a VM's first name comes with it, not as a rename.
                entry = self._files.get(str(key))
                if entry is not None and entry.fd is not None:
                    self._follow_name(entry)

    def write_event(self, key: str, display_name: str, line: bytes) -> None:
        """Append one event line to console `key`'s `.events` file (`--log-events`).

        The file is opened, appended to and closed for each event: events are rare,
        and no descriptor is held per console for them.  Failures are logged once
        per file, like the logs'.
        """
        if not self._settings.events:
            return
        entry = self._files.get(key)
        if entry is not None and entry.path is not None:
            base = entry.path
        else:
            base = self._settings.directory / self._assign(key, display_name)
        path = base.with_name(base.name + ".events")
        self._follow_events_name(key, display_name, path)
        try:
            fd = _open_append(path, self._settings.mode)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            if path not in self._event_failed:
                self._event_failed.add(path)
                log.error(
                    "console events %s: %s; events are dropped until this clears",
                    path,
                    exc.strerror or exc,
                )
            return
        if path in self._event_failed:
            self._event_failed.discard(path)
            log.info("console events %s: writing again", path)

    def _follow_events_name(self, key: str, display_name: str, path: Path) -> None:
        """Events written before VM-NAME went to a file named by the UUID; move it to
        the real name once that is known, as the console log itself is moved."""
        try:
            placeholder = display_name.startswith(vm.display_uuid(key[:32]))
        except ValueError:  # not a canonical key: never a placeholder name
            placeholder = False
        last = self._event_files.get(key)
        self._event_files[key] = (path, placeholder)
        if last is None or last[0] == path or not last[1]:
            return
        if last[0].exists() and not path.exists():
            try:
                last[0].rename(path)
            except OSError as exc:
                log.warning("console events %s: cannot rename to %s: %s", last[0], path, exc)

    def _known_path(self, key: str) -> Path | None:
        """Console `key`'s current log file: open, claimed in the owners index, or (for
        `--log-name uuid`, whose names need no index) the file its key names."""
        entry = self._files.get(key)
        if entry is not None and entry.path is not None:
            return entry.path
        latest = self._owners.latest(key)
        if latest is not None:
            return self._settings.directory / latest
        if self._settings.naming is LogNaming.UUID:
            return self._settings.directory / log_file_name("", key)
        return None

    def has_log(self, key: str) -> bool:
        """Whether console `key` has a log file (from this run or an earlier one)."""
        path = self._known_path(key)
        return path is not None and path.exists()

    def tail(self, key: str, want: int) -> bytes:
        """The last `want` bytes console `key` printed, read back from its log files
        (across rotation, timestamps removed); b"" if it has none.

        Used for scrollback after a restart and the HTTP console-log route; reads at
        most a few times `want` from disk (more only through a gzipped rotated file,
        which is at most --log-max-size).
        """
        entry = self._files.get(key)
        if entry is not None:
            self._write(entry)  # the file, not the buffer, is what is read
        path = self._known_path(key)
        if path is None:
            return b""
        return read_tail(path, want, stamped=self._settings.timestamps)

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
        capped = True  # False once a rotation failed: then the file just grows
        while entry.buffer:
            if entry.fd is None:
                self._lost(entry, len(entry.buffer))
                entry.buffer.clear()
                return
            if self._settings.timestamps:
                self._mend_line_start(entry)
            piece = self._piece(entry) if capped else len(entry.buffer)
            if piece == 0:
                capped = self._rotate(entry)
                continue
            if not self._write_piece(entry, piece):
                entry.buffer.clear()
                return
            if entry.buffer:  # the file is full: what is left starts the next one
                entry.buf_line_start = entry.file_line_start
                capped = self._rotate(entry)

    def _piece(self, entry: _LogFile) -> int:
        """How much of the buffer goes into the current file (0: rotate first).

        With `--log-max-size` a file is cut after its last whole line that fits, or
        mid-line when a line alone is longer than the room left; a file never passes
        the size, except that each file takes at least two stamps' worth (so a tiny
        size still makes progress).
        """
        buffer, max_size = entry.buffer, self._settings.max_size
        room = max_size - entry.size
        if max_size <= 0 or len(buffer) <= room:
            return len(buffer)
        stamped = self._settings.timestamps
        if entry.size == 0 and stamped:
            room = max(room, 2 * STAMP_WIDTH)
        elif room <= 0:
            return 0
        cut = buffer.rfind(b"\n", 0, room)
        if cut >= 0:
            return cut + 1
        if entry.size > 0 and entry.file_line_start:
            return 0  # start the long line in a fresh file rather than at the end of this one
        # One long line: cut it, never inside the stamp that may open the buffer.
        least = STAMP_WIDTH + 1 if stamped and entry.buf_line_start else 1
        return min(len(buffer), max(room, least))

    def _write_piece(self, entry: _LogFile, length: int) -> bool:
        """Write the first `length` buffered bytes; False (logged) if that failed."""
        assert entry.fd is not None
        with memoryview(entry.buffer)[:length] as view:
            written, error = write_fully(entry.fd, view)
            if written:
                entry.file_line_start = view[written - 1] == 0x0A
        entry.size += written
        if error is not None:
            self._error(entry, f"write failed: {error.strerror or error}")
            self._lost(entry, len(entry.buffer) - written)
            return False
        entry.failed = recovered(entry.failed, log, "console log %s: writing again", entry.path)
        del entry.buffer[:length]
        return True

    def _mend_line_start(self, entry: _LogFile) -> None:
        """Keep "every line of a file starts with a stamp" across a file boundary."""
        if entry.file_line_start and not entry.buf_line_start:
            # A new file begins in the middle of a console line: stamp it now.
            entry.buffer[0:0] = format_stamp(self._wall_clock())
        elif not entry.file_line_start and entry.buf_line_start:
            # The file (from an earlier run) ends mid-line: the stamp would land
            # inside that line, so the continuation goes unstamped instead.
            del entry.buffer[:STAMP_WIDTH]
        entry.buf_line_start = True  # whatever follows in this buffer is stamped

    def _assign(self, key: str, display_name: str) -> str:
        settings = self._settings
        wanted = wanted_name(settings.naming, settings.prefix, key, display_name)
        return self._owners.assign(key, wanted, key[:8])

    def _open(self, entry: _LogFile) -> None:
        console = entry.console
        entry.name = console.display_name
        entry.by_uuid = console.name == vm.display_uuid(console.key.uuid)
        path = self._settings.directory / self._assign(entry.key, entry.name)
        if path != entry.path:
            log.info("%s: console log %s", console.tag, path)
            entry.rotated = None
        entry.path = path
        try:
            entry.fd = _open_append(path, self._settings.mode)
        except OSError as exc:
            entry.fd = None
            self._error(entry, f"cannot open: {exc.strerror or exc}")
            return
        entry.size, entry.file_line_start = _end_of(entry.fd, path, self._settings.timestamps)

    def _follow_name(self, entry: _LogFile) -> None:
        """The console's name changed: continue in the file of the new name.

        A log still named after the UUID (VM-NAME came late) is renamed, so one
        file holds the whole console; an existing file of the new name wins.
        """
        old_path = entry.path
        new_path = self._settings.directory / self._assign(entry.key, entry.console.display_name)
        if new_path == old_path:  # --log-name uuid: the name is not in the file name
            entry.name = entry.console.display_name
            return
        self._close(entry)
        if entry.by_uuid and old_path is not None:
            for suffix in ("", ".events"):
                old, new = Path(f"{old_path}{suffix}"), Path(f"{new_path}{suffix}")
                if not old.exists() or new.exists():
                    continue
                try:
                    old.rename(new)
                except OSError as exc:
                    log.warning("console log %s: cannot rename to %s: %s", old, new, exc)
        self._open(entry)

    def _rotate(self, entry: _LogFile) -> bool:
        """Move the full file to FILE.N (N one more than any before), keep `keep`.

        Returns False if the file could not be moved (logged once; it is reopened
        and keeps growing until a later rotation works)."""
        path = entry.path
        assert path is not None
        self._close(entry)
        if entry.rotated is None:
            entry.rotated = [seq for seq, _ in rotated_files(path)]
        keep = self._settings.keep
        seq = (entry.rotated[-1] if entry.rotated else 0) + 1
        target = path.with_name(f"{path.name}.{seq}")
        try:
            if keep > 0:
                os.rename(path, target)
                entry.rotated.append(seq)
            else:
                os.unlink(path)
        except OSError as exc:
            entry.rotate_failed = failing(
                entry.rotate_failed,
                log,
                "console log %s: cannot rotate (%s); it grows past the size until this clears",
                path,
                exc.strerror or exc,
            )
            self._open(entry)
            return False
        else:
            entry.rotate_failed = recovered(
                entry.rotate_failed, log, "console log %s: rotating again", path
            )
            log.info("console log %s rotated%s", path, f" to {target.name}" if keep else "")
            while len(entry.rotated) > keep:
                old = entry.rotated.pop(0)
                for name in (f"{path.name}.{old}", f"{path.name}.{old}.gz"):
                    try:
                        os.unlink(path.with_name(name))
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("console log %s: cannot remove %s: %s", path, name, exc)
            if keep > 0 and self._settings.compress and self._compress is not None:
                self._compress(target)
        self._open(entry)
        return True

    def _close(self, entry: _LogFile) -> None:
        if entry.fd is not None:
            try:
                os.close(entry.fd)
            except OSError as exc:  # e.g. a delayed write error reported by close(2)
                self._error(entry, f"close failed: {exc.strerror or exc}")
            entry.fd = None

    def _error(self, entry: _LogFile, what: str) -> None:
        path = entry.path if entry.path is not None else entry.console.display_name
        entry.failed = failing(
            entry.failed,
            log,
            "console log %s: %s; its output is dropped until this clears",
            path,
            what,
        )

    def _lost(self, entry: _LogFile, count: int) -> None:
        log.debug("console log %s: %d bytes dropped", entry.path, count)


def _end_of(fd: int, path: Path, need_last_byte: bool) -> tuple[int, bool]:
    """An open log's size, and whether it ends at a line start (empty, or `\\n`).

    The descriptor is write-only, so the last byte (wanted only for timestamps) is
    read through a second, read-only open.
    """
    size = os.fstat(fd).st_size
    if size == 0 or not need_last_byte:
        return size, True
    try:
        with open(path, "rb") as stream:
            stream.seek(size - 1)
            return size, stream.read(1) in (b"\n", b"")
    except OSError:
        return size, True


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
