"""The audit trail file (`--audit-log FILE`): one JSON line per audit record.

Spec: docs/security.md "Audit trail", docs/operations.md "Audit log".  Boundary: an
audit observer of the hub (`Hub.subscribe_audit`, vspcd/hub/audit.py); it reads
records, never changes anything.

The console logs' write strategy (vspcd/history/consolelog.py): records are buffered
and written by a timer armed only while something is buffered (at the end of the
current loop turn by default, so a burst of records costs one write), with `os.write`
on an `O_APPEND` descriptor: never an fsync, so the loop never waits for the disk.
Rotation is the console logs' too: a write that would take the file past `max_size`
first moves it to `FILE.N` (highest N newest; nothing rotated is renamed again) and
keeps the newest `keep`.  `reopen()` (SIGHUP) flushes and reopens the file by name,
for logrotate.  A failed open or write is logged once until it works again; the lines
that could not be written are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vspc.vspcd.history.consolelog import _open_append as open_append
from vspc.vspcd.history.fileio import failing, recovered, write_fully
from vspc.vspcd.history.lineformat import rotated_files
from vspc.vspcd.hub.audit import AuditRecord
from vspc.vspcd.hub.console import Cancellable

log = logging.getLogger(__name__)

__all__ = ["AuditLog", "AuditSettings"]


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """`--audit-log`, `--audit-max-size`, `--audit-keep`."""

    path: Path
    max_size: int = 0  # bytes; 0: never rotate
    keep: int = 5  # rotated files kept
    mode: int = 0o600
    flush_interval: float = 0.0  # 0: at the end of the loop turn
    buffer_limit: int = 64 * 1024


class AuditLog:
    """Appends audit records to one file.

    Args:
        settings: the file, its rotation and mode.
        call_later: `loop.call_later`, for the flush.
    """

    def __init__(
        self,
        settings: AuditSettings,
        *,
        call_later: Callable[[float, Callable[[], None]], Cancellable],
    ) -> None:
        self.settings = settings
        self._call_later = call_later
        self._buffer = bytearray()
        self._timer: Cancellable | None = None
        self._fd: int | None = None
        self._size = 0
        self._failed = False
        self._rotated: list[int] | None = None
        self._capped = True  # False after a failed rotation, until the next reopen
        self.lost = 0  # records that could not be written

    def open(self) -> None:
        """Open (or create) the file now, so a bad path fails at start-up.

        Raises:
            OSError: it cannot be opened.
        """
        self._fd = open_append(self.settings.path, self.settings.mode)
        self._size = os.fstat(self._fd).st_size

    def __call__(self, record: AuditRecord) -> None:
        """The audit observer: buffer one line; write it soon."""
        line = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"))
        self._buffer += line.encode("utf-8", "backslashreplace") + b"\n"
        if len(self._buffer) >= self.settings.buffer_limit:
            self.flush()
        elif self._timer is None:
            self._timer = self._call_later(self.settings.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered line now (whole lines; rotating first if needed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._buffer:
            if self._fd is None and not self._reopen():
                self._lose(self._buffer.count(b"\n"))
                return
            piece = self._piece()
            if piece == 0:
                self._rotate()
                continue
            if not self._write(piece):
                return

    def reopen(self) -> None:
        """Flush, close and reopen the file by name (SIGHUP, after logrotate)."""
        self.flush()
        self._close()
        self._capped, self._rotated = True, None
        self._reopen()
        log.info("reopened the audit log %s", self.settings.path)

    def close(self) -> None:
        """Flush and close (shutdown); idempotent."""
        self.flush()
        self._close()

    # -- the file -----------------------------------------------------------------

    def _piece(self) -> int:
        """How many buffered bytes go into the current file (0: rotate first): whole
        lines up to `max_size`, or one line alone when it is longer."""
        buffer, max_size = self._buffer, self.settings.max_size if self._capped else 0
        room = max_size - self._size
        if max_size <= 0 or len(buffer) <= room:
            return len(buffer)
        cut = buffer.rfind(b"\n", 0, max(room, 0))
        if cut >= 0:
            return cut + 1
        if self._size > 0:
            return 0
        return buffer.index(b"\n") + 1

    def _write(self, length: int) -> bool:
        assert self._fd is not None
        with memoryview(self._buffer)[:length] as view:
            written, error = write_fully(self._fd, view)
        if error is not None:
            self._error(f"write failed: {error.strerror or error}")
            self._lose(self._buffer.count(b"\n"))
            return False
        self._size += written
        del self._buffer[:length]
        self._failed = recovered(
            self._failed, log, "audit log %s: writing again", self.settings.path
        )
        return True

    def _rotate(self) -> None:
        """Move the full file to FILE.N, keep the newest `keep`, start a new one."""
        path, keep = self.settings.path, self.settings.keep
        self._close()
        if self._rotated is None:
            self._rotated = [seq for seq, _ in rotated_files(path)]
        seq = (self._rotated[-1] if self._rotated else 0) + 1
        try:
            if keep > 0:
                os.rename(path, path.with_name(f"{path.name}.{seq}"))
                self._rotated.append(seq)
            else:
                os.unlink(path)
        except OSError as exc:
            log.error("audit log %s: cannot rotate: %s", path, exc.strerror or exc)
            self._capped = False  # the file grows (rather than loop) until a reopen
        while len(self._rotated) > keep:
            old = path.with_name(f"{path.name}.{self._rotated.pop(0)}")
            try:
                os.unlink(old)
            except OSError as exc:
                log.warning("audit log %s: cannot remove %s: %s", path, old.name, exc)
        self._reopen()

    def _reopen(self) -> bool:
        try:
            self.open()
        except OSError as exc:
            self._fd = None
            self._error(f"cannot open: {exc.strerror or exc}")
            return False
        return True

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                self._error(f"close failed: {exc.strerror or exc}")
            self._fd = None

    def _error(self, what: str) -> None:
        self._failed = failing(
            self._failed,
            log,
            "audit log %s: %s; records are dropped until this clears",
            self.settings.path,
            what,
        )

    def _lose(self, count: int) -> None:
        self.lost += count
        self._buffer.clear()
