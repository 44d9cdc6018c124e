"""The `--audit-log` writer: buffered lines, rotation like the console logs, reopen."""

from __future__ import annotations

import json
from pathlib import Path

from tests.vspcd.fakes import FakeClock, FakeScheduler
from vspc.vspcd.history.audit import AuditLog, AuditSettings
from vspc.vspcd.hub.audit import Actor, AuditAction, AuditRecord


def record(n: int) -> AuditRecord:
    return AuditRecord(1_700_000_000.0 + n, AuditAction.SEND, Actor("alice", 1000, "unix"))


def test_lines_are_written_at_the_end_of_the_turn_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    scheduler = FakeScheduler(FakeClock())
    size = len(json.dumps(record(0).to_json(), separators=(",", ":"))) + 1
    audit = AuditLog(
        AuditSettings(path, max_size=2 * size, keep=2), call_later=scheduler.call_later
    )
    audit.open()
    audit(record(0))
    assert path.read_bytes() == b""  # buffered until the timer
    scheduler.advance(0)
    assert json.loads(path.read_text())["time"] == "2023-11-14T22:13:20.000Z"
    for n in range(1, 8):
        audit(record(n))
        scheduler.advance(0)
    audit.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.2", "audit.log.3"]
    assert all(len(p.read_text().splitlines()) <= 2 for p in tmp_path.iterdir())
    assert len(path.read_text().splitlines()) == 2


def test_reopen_follows_a_moved_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    scheduler = FakeScheduler(FakeClock())
    audit = AuditLog(AuditSettings(path), call_later=scheduler.call_later)
    audit.open()
    audit(record(0))
    audit.flush()
    path.rename(tmp_path / "moved")
    audit.reopen()
    audit(record(1))
    audit.close()
    assert len((tmp_path / "moved").read_text().splitlines()) == 1
    assert len(path.read_text().splitlines()) == 1
