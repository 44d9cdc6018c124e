"""Input recording (`--record-dir`, `record_input = true`; vspcd/history/recording.py,
docs/security.md "Input recording") against a real in-process daemon: the file is
asciicast v2, output and typed input (attach and telnet) are in it with markers
naming the typist, unmarked consoles are not recorded, SIGHUP starts a new file, and
`asciinema cat` reads it when asciinema is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.faces.test_admin import U1, daemon_with, run
from vspc.common.admin import encode_message

U2 = "89abcdef0123456776543210fedcba98"

RULES = """
[[access]]
consoles = ["vm01"]
record_input = true
"""


def cast_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.cast"))


def parse_cast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    events = [json.loads(line) for line in lines[1:]]
    return header, events


def text_of(events: list[list[Any]], code: str) -> str:
    return "".join(data for _, kind, data in events if kind == code)


def record(tmp_path: Path) -> Path:
    """Run a session on vm01 (recorded) and vm02 (not); the record directory."""
    config = tmp_path / "vspcd.toml"
    config.write_text(RULES)
    records = tmp_path / "rec"

    async def main() -> None:
        async with daemon_with(
            tmp_path, "--config", str(config), "--record-dir", str(records)
        ) as h:
            vm = await h.vm()
            other = await h.vm(U2, "vm02")
            vm.say(b"login: \xc3")  # a character split across two chunks
            other.say(b"secret output")
            peer = await h.admin()
            await peer.send(encode_message({"cmd": "attach", "vm": "vm01", "replay": 0}))
            assert (await peer.reply())["ok"]
            vm.say(b"\xa9 ok\r\n")
            await peer.read_until(b"ok\r\n")
            await peer.send(b"root\r")
            await vm.expect(b"root\r")
            port = (await h.shown())["port"]
            telnet = await h.telnet(port)
            await telnet.send(b"hunter2\r")
            await vm.expect(b"hunter2\r")
            other_peer = await h.admin()
            await other_peer.send(encode_message({"cmd": "attach", "vm": "vm02", "replay": 0}))
            assert (await other_peer.reply())["ok"]
            await other_peer.send(b"not recorded\r")
            await other.expect(b"not recorded\r")
            assert h.daemon.recordings is not None
            h.daemon.recordings.flush()
            (first,) = cast_files(records)
            h.daemon.reopen_logs()  # SIGHUP: the next event starts a new file
            vm.say(b"after rotation\r\n")
            await peer.read_until(b"rotation\r\n")

    run(main)
    return records


def test_asciicast_v2_with_output_input_and_typists(tmp_path: Path) -> None:
    records = record(tmp_path)
    first, second = cast_files(records)
    assert first.name.startswith(f"vm01-{U1}-") and (first.stat().st_mode & 0o777) == 0o600
    header, events = parse_cast(first)
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert isinstance(header["timestamp"], int) and "vm01" in header["title"]
    assert all(len(event) == 3 and event[0] >= 0 for event in events)
    times = [event[0] for event in events]
    assert times == sorted(times)
    assert "login: \u00e9 ok\r\n" in text_of(events, "o")
    assert text_of(events, "i") == "root\rhunter2\r"
    markers = [data for _, kind, data in events if kind == "m"]
    assert len(markers) == 2
    assert markers[0].startswith("input: ") and "attach client" in markers[0]
    assert "telnet client" in markers[1]
    # Each marker comes right before the input it names.
    kinds = [kind for _, kind, _ in events if kind in "mi"]
    assert kinds == ["m", "i", "m", "i"]
    # The second file starts with its own header: a new run of the same console.
    header2, events2 = parse_cast(second)
    assert header2["version"] == 2 and text_of(events2, "o") == "after rotation\r\n"
    # vm02 has no record_input rule: no file, its bytes nowhere.
    assert not any("vm02" in path.name for path in cast_files(records))
    assert all(b"not recorded" not in path.read_bytes() for path in cast_files(records))


def test_without_record_dir_nothing_is_recorded(tmp_path: Path) -> None:
    config = tmp_path / "vspcd.toml"
    config.write_text(RULES)

    async def main() -> None:
        async with daemon_with(tmp_path, "--config", str(config)) as h:
            assert h.daemon.recordings is None
            vm = await h.vm()
            vm.say(b"hello")

    run(main)
    assert not list(tmp_path.rglob("*.cast"))


def test_asciinema_cat_reads_the_recording(tmp_path: Path) -> None:
    # The test extra installs it beside this interpreter (the venv may not be on PATH).
    beside = Path(sys.executable).with_name("asciinema")
    asciinema = str(beside) if beside.exists() else shutil.which("asciinema")
    if asciinema is None:
        pytest.skip("asciinema is not installed (pip install asciinema)")
    first = cast_files(record(tmp_path))[0]
    done = subprocess.run([asciinema, "cat", str(first)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"login: \xc3\xa9 ok" in done.stdout
    assert b"hunter2" not in done.stdout  # input events are not played back


def test_telnet_false_gives_the_console_no_telnet_port(tmp_path: Path) -> None:
    # (Here beside the other [[access]] switch's daemon test.)
    config = tmp_path / "vspcd.toml"
    config.write_text(f'[[access]]\nconsoles = ["uuid:{U2}"]\ntelnet = false\n')

    async def main() -> None:
        async with daemon_with(tmp_path, "--config", str(config)) as h:
            await h.vm()
            await h.vm(U2, "vm02")
            assert isinstance((await h.shown())["port"], int)
            assert (await h.shown("vm02")).get("port") is None

    run(main)
