"""Console log history: one file per console, naming, timestamps, events, rotation,
flush policy, scrollback after a restart.

Unit tests drive `ConsoleLogs` through a real hub on fake time (flushes are called or
the fake scheduler advanced, never waited for); end-to-end tests run an in-process
daemon on loopback (tests/vspcd/harness.py), and the durability test a real vspcd
process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vspcd.fakes import FakeClock, FakePorts, FakeScheduler, FakeVm
from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from vspc.common import esxi
from vspc.common import vmware as vm
from vspc.common.session import ProxyRequested, VmData, VmIdentified, VmNamed
from vspc.vspcd.history import eventlog as logevents
from vspc.vspcd.history.consolelog import ConsoleLogs, LogSettings
from vspc.vspcd.history.lineformat import (
    STAMP_WIDTH,
    format_stamp,
    read_tail,
    stamp_lines,
    strip_timestamps,
)
from vspc.vspcd.history.naming import OWNERS_FILE, LogNaming, OwnerIndex, stem, wanted_name
from vspc.vspcd.hub.hub import Hub, HubSettings

DEADLINE = 10.0
STAMP_RE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
UUID_C = "00112233445566778899aabbccddeeff"


class Rig:
    """A hub on fake time with console logs attached, as the daemon wires them."""

    def __init__(self, directory: Path, *, remember: bool = True, **settings: Any) -> None:
        self.clock = FakeClock(1_700_000_000.0)
        self.sched = FakeScheduler(self.clock)
        self.hub = Hub(
            HubSettings(), clock=self.clock, call_later=self.sched.call_later, ports=FakePorts()
        )
        self.logs = ConsoleLogs(
            LogSettings(directory, **settings),
            call_later=self.sched.call_later,
            wall_clock=self.clock,
            remember_owners=remember,
        )
        self.hub.add_output_listener(self.logs.output)
        self.hub.subscribe(self.logs.observe)
        self.hub.subscribe(logevents.hub_observer(self.logs, self.clock))

    def connect(self, uuid: str, name: str | None, uri: str = "vSPC.py") -> Any:
        conn = self.hub.vm_connected(FakeVm())
        _, label = vm.parse_service_uri(uri)
        self.hub.vm_event(conn, ProxyRequested("S", uri, label, True))
        self.hub.vm_event(conn, VmIdentified(uuid))
        if name is not None:
            self.hub.vm_event(conn, VmNamed(name))
        return conn

    def say(self, conn: Any, data: bytes) -> None:
        self.hub.vm_event(conn, VmData(data))


# -- names: one file per console ------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vmlog-db01", "vmlog-db01"),
        ("vmlog-db01.3", "vmlog-db01"),
        ("vmlog-db01.3.gz", "vmlog-db01"),
        ("vmlog-db01.3.gz.tmp", "vmlog-db01"),
        ("vmlog-db01.events", "vmlog-db01"),
        ("vmlog-web.example.com", "vmlog-web.example.com"),
    ],
)
def test_stem_drops_one_suffix_vspcd_adds(name: str, expected: str) -> None:
    assert stem(name) == expected


def test_wanted_names_for_each_layout() -> None:
    key = f"{UUID_A}_com1"
    assert wanted_name(LogNaming.NAME, "vmlog", key, "db01_com1") == "vmlog-db01_com1"
    assert wanted_name(LogNaming.UUID, "vmlog", UUID_A, "db01") == UUID_A
    assert wanted_name(LogNaming.UUID, "vmlog", key, "db01_com1") == key
    assert wanted_name(LogNaming.NAME_UUID, "p", UUID_A, "db01") == f"p-db01-{UUID_A}"


def test_the_first_claimant_keeps_a_name_across_restarts(tmp_path: Path) -> None:
    index = OwnerIndex(tmp_path)
    assert index.assign(UUID_A, "vmlog-db01", UUID_A[:8]) == "vmlog-db01"
    assert index.assign(UUID_B, "vmlog-db01", UUID_B[:8]) == "vmlog-db01~89abcdef"
    # A VM calling itself "db01.1" cannot reach db01's rotated files either.
    assert index.assign(UUID_C, "vmlog-db01.1", UUID_C[:8]) == "vmlog-db01.1~00112233"
    again = OwnerIndex(tmp_path)  # a restart: the impostor asks first this time
    assert again.assign(UUID_B, "vmlog-db01", UUID_B[:8]) == "vmlog-db01~89abcdef"
    assert again.assign(UUID_A, "vmlog-db01", UUID_A[:8]) == "vmlog-db01"
    assert again.latest(UUID_C) == "vmlog-db01.1~00112233"


def test_a_taken_short_suffix_falls_back_to_the_whole_key(tmp_path: Path) -> None:
    index = OwnerIndex(None)
    twin = UUID_A[:8] + "f" * 24  # same first 8 hex digits as UUID_A
    index.assign(UUID_B, "vmlog-x", UUID_B[:8])
    index.assign(UUID_A, "vmlog-x", UUID_A[:8])
    assert index.assign(twin, "vmlog-x", twin[:8]) == f"vmlog-x~{twin}"


def test_a_damaged_owners_file_is_skipped_line_by_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps({"key": UUID_A, "file": "vmlog-db01"})
    (tmp_path / OWNERS_FILE).write_bytes(b"garbage\n\xff\xfe\n" + good.encode() + b'\n{"key": 1}\n')
    with caplog.at_level(logging.WARNING):
        index = OwnerIndex(tmp_path)
    assert index.owner("vmlog-db01") == UUID_A
    assert "3 unreadable line(s)" in caplog.text


@given(st.lists(st.tuples(st.sampled_from([UUID_A, UUID_B, UUID_C]), st.text(max_size=12))))
@settings(max_examples=60, deadline=None)
def test_two_consoles_never_get_the_same_stem(claims: list[tuple[str, str]]) -> None:
    index = OwnerIndex(None)
    owner_of: dict[str, str] = {}
    for key, name in claims:
        got = index.assign(key, wanted_name(LogNaming.NAME, "vmlog", key, name), key[:8])
        assert owner_of.setdefault(stem(got), key) == key


def test_a_vm_naming_itself_like_another_never_writes_into_its_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reproduced: VM B calls itself db01 while VM A (db01) is logging."""
    logs = tmp_path / "logs"

    async def main(first: str, second: str) -> None:
        async with running(tmp_path, "--log-dir", str(logs)) as (daemon, events):
            esx1 = await FakeEsxi.connect(daemon.proxy_port, first, "db01")
            await events.wait("vm_connected", lambda f: f["key"] == first)
            esx1.send(f"{first} speaking\n".encode())
            esx2 = await FakeEsxi.connect(daemon.proxy_port, second, "db01")
            await events.wait("vm_connected", lambda f: f["key"] == second)
            esx2.send(f"{second} speaking\n".encode())
            op = await Operator.connect(console_port(daemon, second))
            await events.wait("client_attached")
            esx2.send(b"sync\n")
            await op.output.expect(b"sync\n")
            await op.close()
            await esx1.close()
            await esx2.close()

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.history.consolelog"):
        asyncio.run(main(UUID_A, UUID_B))
    assert (logs / "vmlog-db01").read_bytes() == f"{UUID_A} speaking\n".encode()
    impostor = logs / "vmlog-db01~89abcdef"
    assert impostor.read_bytes() == f"{UUID_B} speaking\nsync\n".encode()
    assert f"db01 ({UUID_B[:8]}): console log {impostor}" in caplog.text  # says which file
    # After a restart the impostor connects first: A's file is still A's alone.
    asyncio.run(main(UUID_B, UUID_A))
    a_said, b_said = f"{UUID_A} speaking\n".encode(), f"{UUID_B} speaking\n".encode()
    assert (logs / "vmlog-db01").read_bytes() == a_said + a_said + b"sync\n"
    assert impostor.read_bytes() == b_said + b"sync\n" + b_said


# -- timestamps ------------------------------------------------------------


def test_stamp_format_is_fixed_width_utc() -> None:
    assert format_stamp(0.0) == b"1970-01-01T00:00:00.000Z "
    assert format_stamp(1_700_000_000.5) == b"2023-11-14T22:13:20.500Z "
    assert len(format_stamp(time.time())) == STAMP_WIDTH


@given(st.lists(st.binary(max_size=40), max_size=20))
@settings(max_examples=200, deadline=None)
def test_stamping_then_stripping_gives_back_the_bytes(chunks: list[bytes]) -> None:
    out, at_start = b"", True
    for i, chunk in enumerate(chunks):
        stamped, at_start = stamp_lines(chunk, format_stamp(i), at_start)
        out += stamped
    assert strip_timestamps(out) == b"".join(chunks)
    for line in out.split(b"\n")[:-1] if out.endswith(b"\n") else out.split(b"\n"):
        assert not line or STAMP_RE.match(line), line  # every line begins with a stamp


def test_a_forged_stamp_from_the_vm_stays_in_the_console_bytes() -> None:
    forged = b"2000-01-01T00:00:00.000Z fake\n"
    stamped, _ = stamp_lines(forged, format_stamp(5.0), True)
    assert stamped.startswith(format_stamp(5.0) + forged[:STAMP_WIDTH])
    assert strip_timestamps(stamped) == forged


def test_timestamped_log_marks_lines_when_they_began(tmp_path: Path) -> None:
    rig = Rig(tmp_path, timestamps=True)
    conn = rig.connect(UUID_A, "db01")
    rig.say(conn, b"boot: ")
    rig.clock.now += 0.25
    rig.say(conn, b"ok\r\nnext")
    rig.logs.flush()
    first, second = format_stamp(1_700_000_000.0), format_stamp(1_700_000_000.25)
    assert (tmp_path / "vmlog-db01").read_bytes() == first + b"boot: ok\r\n" + second + b"next"
    rig.logs.close()


def test_timestamps_keep_every_line_stamped_across_a_restart_mid_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path, timestamps=True)
    conn = rig.connect(UUID_A, "db01")
    rig.say(conn, b"half a li")
    rig.logs.close()
    again = Rig(tmp_path, timestamps=True)  # a new run appends to the same file
    conn = again.connect(UUID_A, "db01")
    again.say(conn, b"ne\nwhole\n")
    again.logs.close()
    data = (tmp_path / "vmlog-db01").read_bytes()
    assert strip_timestamps(data) == b"half a line\nwhole\n"
    assert all(STAMP_RE.match(line) for line in data.split(b"\n")[:-1])


def test_logs_match_what_clients_received_with_and_without_timestamps(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4 + b"line\r\n\n\nend\xff\xff"

    async def main(stamped: bool) -> tuple[bytes, Path]:
        logs = tmp_path / ("stamped" if stamped else "raw")
        extra = ["--log-timestamps"] if stamped else []
        async with running(tmp_path, "--log-dir", str(logs), *extra) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            for i in range(0, len(payload), 97):  # many chunks, cut anywhere
                esx.send(payload[i : i + 97])
            await op.output.length(len(payload))
            received = bytes(op.output.data)
            await op.close()
            await esx.close()
        return received, logs / "vmlog-db01"

    received, raw = asyncio.run(main(False))
    assert received == payload and raw.read_bytes() == received
    received, stamped = asyncio.run(main(True))
    data = stamped.read_bytes()
    assert data != received and strip_timestamps(data) == received


# -- events ------------------------------------------------------------------


def test_events_go_to_their_own_file_as_json_lines(tmp_path: Path) -> None:
    rig = Rig(tmp_path, events=True)
    evil = 'db01\n{"event": "vm_disconnected"}\x1b]0;pwned\x07'
    conn = rig.connect(UUID_A, evil)
    rig.say(conn, b'{"event": "forged", "time": "now"}\n')
    rig.hub.vm_closed(conn)
    rig.logs.close()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != OWNERS_FILE)
    log_name = 'vmlog-db01_{"event": "vm_disconnected"}_]0;pwned_'
    assert files == [log_name, log_name + ".events"]
    raw = (tmp_path / (log_name + ".events")).read_bytes()
    assert all(0x20 <= b < 0x7F for b in raw.replace(b"\n", b""))  # nothing for a terminal
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [line["event"] for line in lines] == ["vm_connected", "vm_disconnected"]
    assert lines[0]["name"] == evil and lines[0]["console"] == UUID_A  # named at once
    assert lines[0]["time"] == "2023-11-14T22:13:20.000Z"
    # The console's own output stays in the console log, never among the events.
    assert (tmp_path / log_name).read_bytes() == b'{"event": "forged", "time": "now"}\n'


def test_client_events_say_who(tmp_path: Path) -> None:
    logs = tmp_path / "logs"

    async def main() -> None:
        async with running(tmp_path, "--log-dir", str(logs), "--log-events") as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            await op.close()
            await events.wait("client_detached")
            await esx.close()
            await events.wait("vm_disconnected")

    asyncio.run(main())
    lines = [json.loads(x) for x in (logs / "vmlog-db01.events").read_text().splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "vm_connected" and kinds[-1] == "vm_disconnected"
    attached = next(line for line in lines if line["event"] == "client_attached")
    assert attached["client"]["kind"] == "telnet"
    assert attached["client"]["peer"].startswith("127.0.0.1")
    assert "client_detached" in kinds


# -- rotation -------------------------------------------------------------------


def test_rotation_keeps_the_newest_files_and_every_recent_byte(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_size=100, keep=2, flush_interval=0)
    conn = rig.connect(UUID_A, "db01")
    stream = b"".join(b"%04d\n" % i for i in range(100))  # 500 bytes
    for i in range(0, len(stream), 30):
        rig.say(conn, stream[i : i + 30])
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("vmlog"))
    assert names == ["vmlog-db01", "vmlog-db01.3", "vmlog-db01.4"]  # .1 and .2 pruned
    parts = [tmp_path / n for n in ("vmlog-db01.3", "vmlog-db01.4", "vmlog-db01")]
    joined = b"".join(p.read_bytes() for p in parts)
    # Cut after whole lines, never past the size: 5-byte lines fill 100 bytes exactly.
    assert stream.endswith(joined) and [p.stat().st_size for p in parts] == [100] * 3
    # A reader asking for more than the current file holds gets it across the cut.
    assert rig.logs.tail(UUID_A, 150) == stream[-150:]
    rig.logs.close()


def test_rotation_with_keep_0_starts_over(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_size=10, keep=0, flush_interval=0)
    conn = rig.connect(UUID_A, "db01")
    rig.say(conn, b"12345678")
    rig.say(conn, b"abcdef")  # no line end to cut after: cut at the size
    assert (tmp_path / "vmlog-db01").read_bytes() == b"cdef"
    assert sorted(p.name for p in tmp_path.iterdir()) == [OWNERS_FILE, "vmlog-db01"]
    rig.logs.close()


def test_timestamps_survive_a_cut_in_the_middle_of_a_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_size=60, keep=50, timestamps=True, flush_interval=0)
    conn = rig.connect(UUID_A, "db01")
    stream = b"a rather long line that gets cut\nand another one\n" * 3
    for i in range(0, len(stream), 20):
        rig.say(conn, stream[i : i + 20])
    rig.logs.close()
    files = sorted(tmp_path.glob("vmlog-db01.*"), key=lambda p: int(p.suffix[1:]))
    for path in [*files, tmp_path / "vmlog-db01"]:
        data = path.read_bytes()
        assert STAMP_RE.match(data), path  # each file begins with a stamp
    joined = b"".join(strip_timestamps(p.read_bytes()) for p in [*files, tmp_path / "vmlog-db01"])
    assert joined == stream
    assert read_tail(tmp_path / "vmlog-db01", 70, stamped=True) == stream[-70:]


def test_rotated_files_are_gzipped_off_the_loop_and_replay_spans_them(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    stream = b"".join(b"line %05d of the boot log\r\n" % i for i in range(2000))  # ~56 KiB
    flags = ("--log-dir", str(logs), "--log-max-size", "8K", "--log-keep", "3", "--log-compress")

    async def main() -> bytes:
        async with running(tmp_path, *flags, "--log-flush", "0") as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            for i in range(0, len(stream), 1000):
                esx.send(stream[i : i + 1000])
            await op.output.length(len(stream))
            assert daemon.gzip is not None and daemon.logs is not None
            await daemon.gzip.drain()
            tail = daemon.logs.tail(UUID_A, 20_000)  # more than one 8 KiB file holds
            await op.close()
            await esx.close()
            return tail

    tail = asyncio.run(main())
    assert tail == stream[-20_000:]
    rotated = sorted(logs.glob("vmlog-db01.*"))
    assert [p.suffix for p in rotated] == [".gz"] * 3
    pieces = sorted(rotated, key=lambda p: int(p.name.split(".")[1]))
    joined = b"".join(gzip.decompress(p.read_bytes()) for p in pieces)
    joined += (logs / "vmlog-db01").read_bytes()
    assert stream.endswith(joined) and len(joined) > 3 * 8192


# -- flush policy and durability --------------------------------------------


def test_flush_0_writes_every_chunk_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, flush_interval=0)
    conn = rig.connect(UUID_A, "db01")
    rig.say(conn, b"now")
    assert (tmp_path / "vmlog-db01").read_bytes() == b"now"
    assert rig.sched.pending() == []  # no timer at all
    rig.logs.close()


def test_reconfigure_applies_new_settings_to_open_logs(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    conn = rig.connect(UUID_A, "db01")
    rig.say(conn, b"before\n")  # buffered under the old settings ...
    rig.logs.reconfigure(LogSettings(tmp_path, flush_interval=0, timestamps=True))
    rig.say(conn, b"after\n")  # ... written at once, stamped, under the new
    data = (tmp_path / "vmlog-db01").read_bytes()
    assert data == b"before\n" + format_stamp(rig.clock.now) + b"after\n"
    rig.logs.close()


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    # A separate process: there is no event to await, so poll with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _connected(admin: Path) -> bool:
    """Whether the daemon lists a connected console (its admin socket, JSON lines)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(admin))
        sock.sendall(b'{"cmd": "list"}\n')
        reply = sock.makefile("rb").readline()
    return any(row["connected"] for row in json.loads(reply).get("vms", []))


@pytest.mark.parametrize("flush", ["0", "3600"])
def test_kill_9_loses_at_most_the_flush_interval(tmp_path: Path, flush: str) -> None:
    logs, errlog = tmp_path / "logs", tmp_path / "stderr"
    argv = [sys.executable, "-m", "vspc.vspcd", "--proxy-iface", "127.0.0.1", "--proxy-port"]
    argv += ["0", "--no-vm-ports", "--admin-socket", str(tmp_path / "s")]
    argv += ["--log-dir", str(logs), "--log-flush", flush]
    with errlog.open("w") as err:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        pattern = re.compile(r"listening for ESXi on 127\.0\.0\.1:(\d+)")
        _wait_for(lambda: pattern.search(errlog.read_text()) is not None, "the proxy port")
        match = pattern.search(errlog.read_text())
        assert match is not None

        async def session() -> None:
            esx = await FakeEsxi.connect(int(match.group(1)), UUID_A, "db01")
            await asyncio.to_thread(_wait_for, lambda: _connected(tmp_path / "s"), "the console")
            esx.send(b"first line\n")
            esx.send(b"the last words\n")
            # vspcd handles a connection's input in order: the answer to a vMotion
            # BEGIN sent after the output proves the output went through the hub
            # and its log listener.  Then the process dies without any shutdown.
            esx.session.begin(b"seq-1")
            esx.send(b"")  # flushes the BEGIN
            await esx.wait_for(esxi.Goahead, esxi.NotNow)  # either answer will do
            child.send_signal(signal.SIGKILL)
            await esx.close()

        asyncio.run(session())
        child.wait(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    path = logs / "vmlog-db01"
    if flush == "0":
        assert path.read_bytes() == b"first line\nthe last words\n"
    else:  # everything was still in the buffer: lost with the process, as documented
        assert not path.exists() or path.read_bytes() == b""


# -- scrollback after a restart ------------------------------------------------


NOT_CONNECTED = b"\r\n[vspcd: VM not connected; input is held until it is]\r\n"


def test_a_restored_console_replays_what_it_printed_before_the_restart(tmp_path: Path) -> None:
    logs, db = tmp_path / "logs", tmp_path / "consoles.db"
    history = b"".join(b"before restart %03d\r\n" % i for i in range(40))  # 880 bytes
    flags = ("--log-dir", str(logs), "--persist-file", str(db), "--context", "300")
    flags += ("--log-max-size", "256", "--log-timestamps")  # replay spans files, unstamped

    async def first_run() -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            for i in range(0, len(history), 100):
                esx.send(history[i : i + 100])
            await op.output.length(len(history))
            await op.close()
            await esx.close()
            await events.wait("vm_disconnected")

    async def second_run() -> bytes:
        async with running(tmp_path, *flags) as (daemon, events):
            op = await Operator.connect(console_port(daemon, UUID_A))  # no VM yet
            await events.wait("client_attached")
            await op.output.length(300 + len(NOT_CONNECTED))
            got = bytes(op.output.data)
            await op.close()
            return got

    asyncio.run(first_run())
    assert len(list(logs.glob("vmlog-db01.*"))) >= 2  # the tail really crosses a cut
    got = asyncio.run(second_run())
    # The replay first, then the "VM not connected" line.
    assert got == history[-300:] + NOT_CONNECTED


def test_a_rotation_that_fails_keeps_logging_in_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, max_size=20, keep=2, flush_interval=0)
    conn = rig.connect(UUID_A, "db01")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "rename", refuse)
    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.history.consolelog"):
        rig.say(conn, b"0123456789\n")
        rig.say(conn, b"abcdefghij\n")
        rig.say(conn, b"klmnopqrst\n")
    assert (tmp_path / "vmlog-db01").read_bytes() == b"0123456789\nabcdefghij\nklmnopqrst\n"
    assert caplog.text.count("cannot rotate") == 1  # once, not per write
    monkeypatch.undo()
    rig.say(conn, b"works again\n")  # the next write that would pass the size rotates
    assert (tmp_path / "vmlog-db01").read_bytes() == b"works again\n"
    rig.logs.close()


def test_the_daemon_reapplies_log_options_from_a_new_configuration(tmp_path: Path) -> None:
    from tests.vspcd.harness import make_config

    logs = tmp_path / "logs"

    async def main() -> None:
        async with running(tmp_path, "--log-dir", str(logs)) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            esx.send(b"plain\n")
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            esx.send(b"sync\n")
            await op.output.expect(b"sync\n")
            new = make_config(tmp_path, "--log-dir", str(logs), "--log-timestamps")
            daemon.reconfigure_logs(new)  # what a configuration reload calls
            esx.send(b"stamped\n")
            await op.output.expect(b"stamped\n")
            await op.close()
            await esx.close()

    asyncio.run(main())
    data = (logs / "vmlog-db01").read_bytes()
    assert data.startswith(b"plain\nsync\n")
    assert STAMP_RE.fullmatch(data[11 : 11 + STAMP_WIDTH]) and data.endswith(b"Z stamped\n")
