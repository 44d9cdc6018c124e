"""vspcd/history/store.py: migrations, typed queries, the persist file's mode and bad files.

No daemon, no loop: an sqlite3 file in tmp_path (docs/development.md "Persistence").
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vspc.vspcd.history import store
from vspc.vspcd.history.store import ConsoleRow, StoreError

UUID_A = "0123456789abcdeffedcba9800000000"
UUID_B = "89abcdef0123456776543210fedcba98"


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def schema(db: sqlite3.Connection) -> list[tuple[str, str]]:
    return db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = store.open_store(tmp_path / "consoles.db")
    yield conn
    conn.close()


# -- migrations --------------------------------------------------------------------------


def test_migrate_from_empty_reaches_the_last_version(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    try:
        assert store.schema_version(conn) == 0
        store.migrate(conn)
        assert store.schema_version(conn) == len(store.MIGRATIONS)
        assert [name for name, _ in schema(conn)] == ["alert", "console"]
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(len(store.MIGRATIONS) + 1))
def test_migrate_from_each_older_version_matches_a_fresh_file(tmp_path: Path, version: int) -> None:
    fresh = connect(tmp_path / "fresh.db")
    old = connect(tmp_path / "old.db")
    try:
        store.migrate(fresh)
        store.migrate(old, store.MIGRATIONS[:version])  # a file written by an older vspcd
        assert store.schema_version(old) == version
        store.migrate(old)
        assert store.schema_version(old) == len(store.MIGRATIONS)
        assert schema(old) == schema(fresh)
    finally:
        fresh.close()
        old.close()


def test_migrate_is_idempotent_and_keeps_rows(db: sqlite3.Connection) -> None:
    row = ConsoleRow(UUID_A, "", "db01", 50001, "vSPC.py", 1.5)
    store.save_console(db, row)
    before = schema(db)
    store.migrate(db)
    store.migrate(db)
    assert schema(db) == before
    assert store.load_consoles(db) == [row]


def test_each_step_commits_alone_and_a_failing_step_rolls_back(tmp_path: Path) -> None:
    steps = (
        "CREATE TABLE a (x INTEGER)",
        "CREATE TABLE b (y INTEGER)",
        "CREATE TABLE c (z INTEGER); this is not sql",
    )
    conn = connect(tmp_path / "steps.db")
    try:
        with pytest.raises(sqlite3.Error):
            store.migrate(conn, steps)
        # steps 1 and 2 stayed, step 3 left nothing behind and no version bump
        assert store.schema_version(conn) == 2
        assert [name for name, _ in schema(conn)] == ["a", "b"]
        assert not conn.in_transaction
        fixed = (*steps[:2], "CREATE TABLE c (z INTEGER)")
        store.migrate(conn, fixed)
        assert store.schema_version(conn) == 3
        assert [name for name, _ in schema(conn)] == ["a", "b", "c"]
    finally:
        conn.close()


def test_a_file_from_a_newer_vspcd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    conn = connect(path)
    conn.execute(f"PRAGMA user_version = {len(store.MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"{path}: schema version \d+ is newer"):
        store.open_store(path)


# -- typed queries -----------------------------------------------------------------------


def test_save_load_update_delete(db: sqlite3.Connection) -> None:
    a = ConsoleRow(UUID_A, "", "db01", 50001, "vSPC.py", 100.0)
    b = ConsoleRow(UUID_B, "console2", "web02", None, "vSPC.py?port=console2", 200.0)
    b_plain = ConsoleRow(UUID_B, "", "web02", 50003, None, 300.0)
    for row in (b, a, b_plain):
        store.save_console(db, row)
    assert store.load_consoles(db) == [a, b_plain, b]  # key order: uuid, then label
    renamed = ConsoleRow(UUID_A, "", "db01-new", 50002, "vSPC.py", 150.0)
    store.save_console(db, renamed)  # same key: updated in place
    assert store.load_consoles(db) == [renamed, b_plain, b]
    assert store.delete_console(db, UUID_B, "console2") is True
    assert store.delete_console(db, UUID_B, "console2") is False
    assert store.load_consoles(db) == [renamed, b_plain]
    assert all(isinstance(row.port, int | None) for row in store.load_consoles(db))


def test_rows_are_frozen(db: sqlite3.Connection) -> None:
    row = ConsoleRow(UUID_A, "", "db01", 1, None, 0.0)
    with pytest.raises(AttributeError):
        row.port = 2  # type: ignore[misc]


def test_writes_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    first = store.open_store(path)
    store.save_console(first, ConsoleRow(UUID_A, "", "db01", 50001, "vSPC.py", 1.0))
    first.close()
    second = store.open_store(path)
    try:
        assert [r.name for r in store.load_consoles(second)] == ["db01"]
    finally:
        second.close()


# -- the file ----------------------------------------------------------------------------


def test_new_file_is_0600_and_its_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / "consoles.db"
    old_umask = os.umask(0)  # the most permissive umask still gives 0600
    try:
        conn = store.open_store(path)
    finally:
        os.umask(old_umask)
    try:
        store.save_console(conn, ConsoleRow(UUID_A, "", "db01", 1, None, 0.0))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for sidecar in path.parent.glob("consoles.db-*"):  # WAL and shared memory
            assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0, sidecar
    finally:
        conn.close()


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store.open_store(path).close()
    path.chmod(0o640)
    store.open_store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database, just text\n" * 100,
        b"SQLite format 3\x00" + b"\xff" * 4080,  # the right magic, garbage after it
        b"\x00" * 512 + b"GDBM",  # something else entirely (vSPC.py used shelve/DBM)
    ],
)
def test_a_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as exc:
        store.open_store(path)
    assert str(exc.value).startswith(f"persist file {path}: ")
    assert path.read_bytes() == content  # never "repaired" by overwriting


def test_an_uncreatable_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=f"persist file {blocker}/x.db: cannot create"):
        store.open_store(blocker / "x.db")
