"""sqlite3 persistence of consoles across restarts (`--persist-file`).

Boundary: this module is the only one that speaks SQL.  It knows nothing of the hub;
vspcd/history/persist.py turns hub events into the small typed queries below, and the
restored rows back into consoles.  Everything here is synchronous and tiny (one row
per call), run on the event loop outside the per-byte data path.

Schema (docs/development.md Part 1 §5, "Persistence"): `MIGRATIONS` is append-only; `migrate()`
applies the steps past `PRAGMA user_version`, each in its own explicit transaction
(the connection runs with `isolation_level=None`, so sqlite3 never opens or commits
one behind our back, and a failed DDL step rolls back).

The file is created 0600 (it names every VM), in WAL mode with `synchronous=NORMAL`:
a commit is a write to the log, not an fsync, so a burst of VM connections does not
wait on the disk; a crash loses at most the last few updates, never the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "AlertRow",
    "ConsoleRow",
    "StoreCorrupt",
    "StoreError",
    "delete_console",
    "load_alerts",
    "load_consoles",
    "migrate",
    "open_store",
    "prune_alerts",
    "save_alert",
    "save_console",
    "schema_version",
    "set_aside",
]

FILE_MODE = 0o600
DIR_MODE = 0o700

MIGRATIONS: tuple[str, ...] = (
    # 1: one row per console, keyed like the hub (docs/protocol.md §3.5): canonical UUID +
    # label ("" for a VM's only port).  `port` NULL: no telnet port (--no-vm-ports).
    # `last_seen` is wall-clock time (Unix seconds) of the last VM connect/disconnect.
    """
    CREATE TABLE console (
        uuid        TEXT NOT NULL,
        label       TEXT NOT NULL DEFAULT '',
        name        TEXT NOT NULL,
        port        INTEGER,
        service_uri TEXT,
        last_seen   REAL NOT NULL,
        PRIMARY KEY (uuid, label)
    ) WITHOUT ROWID
    """,
    # 2: console alerts (vspcd/history/alerts.py), newest kept (`prune_alerts`), for
    # `vspc alerts` across restarts.  `time` is Unix seconds; `context` the lines
    # before `line`, joined with LF.
    """
    CREATE TABLE alert (
        id       INTEGER PRIMARY KEY,
        time     REAL NOT NULL,
        uuid     TEXT NOT NULL,
        label    TEXT NOT NULL DEFAULT '',
        name     TEXT NOT NULL,
        alert    TEXT NOT NULL,
        severity TEXT NOT NULL,
        line     TEXT NOT NULL,
        context  TEXT NOT NULL DEFAULT ''
    )
    """,
)


class StoreError(OSError):
    """The persist file cannot be used; the message names the path and says why.

    An OSError, like `listeners.AdminSocketError`, so `__main__` reports it as a
    startup failure (exit status 1, one line, no traceback).
    """


class StoreCorrupt(StoreError):
    """The persist file exists but is not a readable SQLite database (damaged, or foreign).

    The daemon sets such a file aside (`set_aside`) and starts empty rather than
    failing: under systemd a damaged file after a power cut would otherwise be a
    restart loop.  A file from a newer vspcd is not damage and stays a `StoreError`.
    `aside` is where `open_store(..., set_aside_damaged=True)` moved it, else None.
    """

    def __init__(self, message: str, aside: Path | None = None) -> None:
        super().__init__(message)
        self.aside = aside


@dataclass(frozen=True, slots=True)
class ConsoleRow:
    """One remembered console."""

    uuid: str  # canonical, 32 lower-case hex digits
    label: str
    name: str
    port: int | None
    service_uri: str | None
    last_seen: float


def schema_version(db: sqlite3.Connection) -> int:
    """The schema step the file is at (0: empty)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def migrate(db: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Bring the schema to `len(migrations)`; each step commits or not at all.

    Idempotent: a file already at the last step is left alone.

    Raises:
        StoreError: the file was written by a newer vspcd (a higher version).
        sqlite3.Error: a step failed (it was rolled back; earlier steps stay).
    """
    version = schema_version(db)
    if version > len(migrations):
        raise StoreError(
            f"schema version {version} is newer than this vspcd knows ({len(migrations)})"
        )
    for number, sql in enumerate(migrations[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(sql)
            db.execute(f"PRAGMA user_version = {number:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        log.debug("persist file schema now at version %d", number)


def _create_private(path: Path) -> None:
    """Create `path` 0600 if missing (sqlite would use 0644 less the umask)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it; never widened
    finally:
        os.close(fd)


def open_store(path: Path, *, set_aside_damaged: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the persist file and bring its schema up to date.

    The parent directory is created (0700) if missing, a new file is 0600.  The
    journal files sqlite adds next to it (`-wal`, `-shm`) get the file's mode.

    Raises:
        StoreCorrupt: the file is not an SQLite database, or is damaged; with
            `set_aside_damaged` it (and its journals) were renamed by `set_aside`.
        StoreError: the file cannot be created or opened, or comes from a newer
            vspcd.  The message starts with the path.
    """
    try:
        _create_private(path)
    except OSError as exc:
        raise StoreError(f"persist file {path}: cannot create: {exc.strerror or exc}") from None
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"persist file {path}: cannot open: {exc}") from None
    try:
        db.execute("PRAGMA journal_mode = WAL").fetchone()
        db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
        load_consoles(db)  # reads every row: a damaged table fails now, not later
    except StoreError as exc:
        db.close()
        raise StoreError(f"persist file {path}: {exc}") from None
    except sqlite3.Error as exc:
        hint = ""
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            hint = " (vSPC.py's shelve/DBM files cannot be read; give vspcd a new path)"
        message = f"persist file {path}: not a usable SQLite database: {exc}{hint}"
        try:
            # Renamed while still open: sqlite deletes `-wal`/`-shm` by name on close,
            # and the journal of a damaged file is worth keeping with it.
            aside = set_aside(path) if set_aside_damaged else None
        except OSError as rename:
            why = rename.strerror or rename
            raise StoreError(f"{message}; cannot move it aside: {why}") from None
        finally:
            db.close()
        raise StoreCorrupt(message, aside) from None
    return db


def set_aside(path: Path, now: datetime | None = None) -> Path:
    """Rename a damaged persist file to `PATH.corrupt-YYYYmmddTHHMMSS`, with its journals.

    The `-wal` and `-shm` files go with it (same suffix after the new name), so a
    fresh file at `path` never picks up the old log.  The damaged bytes are kept for
    whoever wants to look at them; nothing is deleted.  Returns the new path.

    Raises:
        OSError: the rename failed (the caller cannot start without a usable file).
    """
    stamp = (now or datetime.now()).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    serial = 1
    while aside.exists():  # two damaged files within one second: never overwrite one
        aside = path.with_name(f"{path.name}.corrupt-{stamp}.{serial}")
        serial += 1
    os.rename(path, aside)
    for journal in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{journal}", f"{aside}{journal}")
    return aside


def load_consoles(db: sqlite3.Connection) -> list[ConsoleRow]:
    """Every remembered console, in key order."""
    rows = db.execute(
        "SELECT uuid, label, name, port, service_uri, last_seen FROM console ORDER BY uuid, label"
    ).fetchall()
    return [
        ConsoleRow(
            uuid=str(uuid),
            label=str(label),
            name=str(name),
            port=None if port is None else int(port),
            service_uri=None if service_uri is None else str(service_uri),
            last_seen=float(last_seen),
        )
        for uuid, label, name, port, service_uri, last_seen in rows
    ]


def save_console(db: sqlite3.Connection, row: ConsoleRow) -> None:
    """Insert or replace the row for (row.uuid, row.label); one autocommitted statement.

    Raises:
        sqlite3.Error: the write failed (disk full, file removed, ...).
    """
    db.execute(
        """
        INSERT INTO console (uuid, label, name, port, service_uri, last_seen)
        VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (uuid, label) DO UPDATE SET
            name = excluded.name,
            port = excluded.port,
            service_uri = excluded.service_uri,
            last_seen = excluded.last_seen
        """,
        (row.uuid, row.label, row.name, row.port, row.service_uri, row.last_seen),
    )


def delete_console(db: sqlite3.Connection, uuid: str, label: str) -> bool:
    """Forget one console; returns whether a row was there.

    Raises:
        sqlite3.Error: the write failed.
    """
    cursor = db.execute("DELETE FROM console WHERE uuid = ? AND label = ?", (uuid, label))
    return cursor.rowcount > 0


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One remembered console alert."""

    time: float
    uuid: str
    label: str
    name: str
    alert: str
    severity: str
    line: str
    context: tuple[str, ...]


def save_alert(db: sqlite3.Connection, row: AlertRow) -> None:
    """Append one alert; one autocommitted statement.

    Raises:
        sqlite3.Error: the write failed.
    """
    db.execute(
        "INSERT INTO alert (time, uuid, label, name, alert, severity, line, context) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.time,
            row.uuid,
            row.label,
            row.name,
            row.alert,
            row.severity,
            row.line,
            "\n".join(row.context),
        ),
    )


def load_alerts(db: sqlite3.Connection, limit: int) -> list[AlertRow]:
    """The newest `limit` alerts, oldest first."""
    rows = db.execute(
        "SELECT time, uuid, label, name, alert, severity, line, context FROM alert "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        AlertRow(
            float(when),
            str(uuid),
            str(label),
            str(name),
            str(alert),
            str(severity),
            str(line),
            tuple(str(context).split("\n")) if context else (),
        )
        for when, uuid, label, name, alert, severity, line, context in reversed(rows)
    ]


def prune_alerts(db: sqlite3.Connection, keep: int) -> None:
    """Forget all but the newest `keep` alerts.

    Raises:
        sqlite3.Error: the write failed.
    """
    db.execute(
        "DELETE FROM alert WHERE id <= (SELECT id FROM alert ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (keep,),
    )
