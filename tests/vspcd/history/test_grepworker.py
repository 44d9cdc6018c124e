"""The grep worker (vspcd/history/grepworker.py): the literal pre-filter over mapped
plain files and streamed gzip generations finds exactly what a whole-text regex
search finds (escapes, CR, stamps, ignore case, limits, lines across gzip blocks)."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from vspc.vspcd.history import grepworker
from vspc.vspcd.history.lineformat import format_stamp

STAMP = format_stamp(1_700_000_000.0)


def run(files: list[tuple[Path, bool]], pattern: str, **job: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    grepworker.scan(
        {
            "pattern": pattern,
            "limit": 1000,
            **job,
            "files": [[n, str(p), s] for n, (p, s) in enumerate(files)],
        },
        out,
    )
    return [json.loads(line) for line in out.getvalue().splitlines()]


def lines_of(results: list[dict[str, Any]]) -> list[str]:
    return [r["l"] for r in results if "l" in r]


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, bool]]:
    monkeypatch.setattr(grepworker, "_MMAP_MIN", 1)  # map even small files
    monkeypatch.setattr(grepworker, "_CHUNK", 64)  # many gzip blocks, lines across them
    filler = b"".join(b"boot line %04d ok\r\n" % i for i in range(50))
    plain = filler + b"[ 1.0] Kernel panic - not syncing: A\r\n" + filler + b"tail no newline"
    escaped = b"\x1b[31mKernel\x1b[0m panic - not syncing: B\r\n" + filler
    zipped = filler + b"Kernel panic - not syncing: C\r\n" + filler
    stamped = STAMP + b"Kernel panic - not syncing: D\r\n" + STAMP + b"kernel PANIC lower\r\n"
    (tmp_path / "plain").write_bytes(plain)
    (tmp_path / "escaped").write_bytes(escaped)
    (tmp_path / "stamped").write_bytes(stamped)
    with gzip.open(tmp_path / "zipped.gz", "wb") as f:
        f.write(zipped)
    return [
        (tmp_path / "plain", False),
        (tmp_path / "escaped", False),
        (tmp_path / "zipped.gz", False),
        (tmp_path / "stamped", True),
    ]


def test_literal_prefilter_finds_what_the_regex_finds(logs: list[tuple[Path, bool]]) -> None:
    results = run(logs, r"Kernel panic - not syncing: \w")
    assert lines_of(results) == [
        "[ 1.0] Kernel panic - not syncing: A",
        "Kernel panic - not syncing: B",  # the escapes split the literal in the file
        "Kernel panic - not syncing: C",
        "Kernel panic - not syncing: D",
    ]
    assert [r["i"] for r in results[:-1]] == [0, 1, 2, 3]
    assert results[3]["t"] == 1_700_000_000.0 and results[-1] == {"done": True, "truncated": False}
    assert lines_of(run(logs, r"tail no newline$")) == ["tail no newline"]
    assert lines_of(run(logs, r"^Kernel panic")) == [
        "Kernel panic - not syncing: B",
        "Kernel panic - not syncing: C",
        "Kernel panic - not syncing: D",  # ^ anchors after the stamp
    ]


def test_ignore_case_limits_and_patterns_without_literals(logs: list[tuple[Path, bool]]) -> None:
    assert len(lines_of(run(logs, r"kernel panic", ignore_case=True))) == 5
    assert lines_of(run(logs, r"line 004[89]"))[:2] == ["boot line 0048 ok", "boot line 0049 ok"]
    limited = run(logs, r"boot line", limit=3)
    assert len(lines_of(limited)) == 3 and limited[-1]["truncated"] is True
    every = lines_of(run(logs, r"\d{4} ok", limit=10000))  # no literal: whole-text path
    assert len(every) == 50 * 5


@pytest.mark.parametrize("pattern", [r"ok\r?$", r"line 00[0-4]\d", r"(?:panic|boot) \w+", r"x?"])
def test_same_matches_as_a_plain_regex_scan(logs: list[tuple[Path, bool]], pattern: str) -> None:
    expected = []
    for path, _ in logs[:3]:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = re.sub(rb"\x1b\[[0-9;]*m", b"", data).decode()
        lines = text.split("\n")
        lines = lines[:-1] if lines[-1] == "" else lines
        expected += [line.rstrip("\r") for line in lines if re.search(pattern, line)]
    assert lines_of(run(logs[:3], pattern, limit=10000)) == expected
