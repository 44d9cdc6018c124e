"""vSPC.py's backends, end to end and piece by piece.

* File (`--persist-file`, `--backend File --backend-args '-f PATH'`): consoles and
  their ports survive a restart, a reconnecting VM keeps its port, expiry forgets it.
* Logging (`--log-dir`, `--backend Logging --backend-args '-l DIR ...'`): every byte
  of console output in DIR/PREFIX-NAME, the file's mode, the UUID -> VM-NAME switch,
  SIGHUP reopening after logrotate, write errors that cost only log lines.
* `--context`: scrollback replayed to a new telnet client.
* Startup and usage errors: a corrupt persist file is set aside (the daemon starts),
  one from a newer vspcd exits 1, bad backend args exit 2.

In-process daemons (tests/vspcd/harness.py) on loopback ports the kernel picks; waits
are on hub events or bytes.  Flushes of the console logs are called directly instead
of waiting for their 1 s timer, except in the one test that runs the real program
and sends it a real SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.fakes import FakeClock, FakePorts, FakeScheduler, FakeVm
from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    free_port,
    identified,
    running,
)
from vspc.common import vmware as vm
from vspc.common.session import ProxyRequested, VmData, VmIdentified, VmNamed
from vspc.vspcd.history import store
from vspc.vspcd.history.consolelog import ConsoleLogs, LogSettings, log_file_name
from vspc.vspcd.history.persist import Persister
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.hub.events import HubEvent
from vspc.vspcd.hub.hub import Hub, HubSettings
from vspc.vspcd.service.server import Daemon

DEADLINE = 10.0
ALL_BYTES = bytes(range(256)) + b"\xff\xff\x00\r\n\r\x00"


def rows(path: Path) -> list[store.ConsoleRow]:
    db = store.open_store(path)
    try:
        return store.load_consoles(db)
    finally:
        db.close()


async def admin_list(daemon: Daemon) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(daemon.admin_path))
    try:
        writer.write(b'{"cmd": "list"}\n')
        async with asyncio.timeout(5):
            line = await reader.readline()
    finally:
        writer.close()
    reply = json.loads(line)
    assert reply["ok"] is True, reply
    vms: list[dict[str, Any]] = reply["vms"]
    return vms


def logs_of(daemon: Daemon) -> ConsoleLogs:
    assert daemon.logs is not None
    return daemon.logs


# -- File backend: restarts --------------------------------------------------------------


def test_consoles_keep_their_ports_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "state" / "consoles.db"
    start = str(free_port())
    flags = ("--persist-file", str(db), "-r", start)

    async def first_run() -> int:
        async with running(tmp_path, *flags) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected", lambda f: f["key"] == UUID_A)
            port = console_port(daemon, UUID_A)
            await esx.close()
            await events.wait("vm_disconnected")
            return port

    async def second_run(port: int) -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            # Before any VM: listed, disconnected, on its old port, expiry armed.
            (row,) = await admin_list(daemon)
            assert (row["name"], row["port"], row["connected"]) == ("db01", port, False)
            assert row["expires_in"] is not None and row["expires_in"] > 86000
            op = await Operator.connect(port)  # the port really is open again
            await events.wait("client_attached")
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            assert console_port(daemon, UUID_A) == port
            esx.send(b"back again\r\n")
            await op.output.expect(b"back again\r\n")
            await op.close()
            await esx.close()

    port = asyncio.run(first_run())
    (saved,) = rows(db)
    assert (saved.uuid, saved.label, saved.name, saved.port) == (UUID_A, "", "db01", port)
    assert saved.service_uri == "vSPC.py"
    assert abs(saved.last_seen - time.time()) < 60
    asyncio.run(second_run(port))
    assert [(r.name, r.port) for r in rows(db)] == [("db01", port)]


def test_expiry_forgets_the_console(tmp_path: Path) -> None:
    db = tmp_path / "consoles.db"

    async def main() -> None:
        async with running(tmp_path, "--persist-file", str(db), "--vm-expire-time", "0.2") as (
            daemon,
            events,
        ):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            assert [r.uuid for r in rows(db)] == [UUID_A]
            await esx.close()
            await events.wait("vm_expired")  # the timer armed when the VM left
            assert rows(db) == []

    asyncio.run(main())


def test_restored_console_expires_and_is_forgotten(tmp_path: Path) -> None:
    db = tmp_path / "consoles.db"
    conn = store.open_store(db)
    store.save_console(conn, store.ConsoleRow(UUID_B, "com2", "web02", None, "x?port=com2", 1.0))
    conn.close()

    async def main() -> None:
        async with running(tmp_path, "--persist-file", str(db)) as (daemon, events):
            assert daemon.hub is not None
            (console,) = daemon.hub.consoles()
            assert (console.display_name, console.connected) == ("web02_com2", False)
            assert console.port is not None  # none remembered: the lowest free one
            assert [r.port for r in rows(db)] == [console.port]  # ... and written back
            assert daemon.hub.reclaim(10) == 1  # the same path as the expiry timer
            await events.wait("vm_expired")
            assert rows(db) == []

    asyncio.run(main())


def test_taken_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    db = tmp_path / "consoles.db"
    with socket.socket() as blocker:  # another process holds the remembered port
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        conn = store.open_store(db)
        store.save_console(conn, store.ConsoleRow(UUID_A, "", "db01", taken, None, 1.0))
        conn.close()

        async def main() -> None:
            # -r at the taken port: in range, so only "taken" can make it fall back
            async with running(tmp_path, "--persist-file", str(db), "-r", str(taken)) as (
                daemon,
                _,
            ):
                port = console_port(daemon, UUID_A)
                assert port > taken
                assert [r.port for r in rows(db)] == [port]

        asyncio.run(main())


def test_vspc_py_file_backend_spelling_is_the_same_file(tmp_path: Path) -> None:
    db = tmp_path / "vspc state.db"  # shlex quoting in --backend-args
    start = str(free_port())

    async def with_backend() -> int:
        args = ("--backend", "file", "--backend-args", f"-f '{db}'", "-r", start)
        async with running(tmp_path, *args) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            await esx.close()
            return console_port(daemon, UUID_A)

    async def with_flag(port: int) -> None:
        async with running(tmp_path, "-f", str(db), "-r", start) as (daemon, _):
            assert console_port(daemon, UUID_A) == port

    port = asyncio.run(with_backend())
    asyncio.run(with_flag(port))


def test_without_persist_file_nothing_is_restored(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, _):
            assert daemon.persister is None and daemon.logs is None
            assert await admin_list(daemon) == []

    asyncio.run(main())


def test_a_failing_write_is_logged_once_and_the_daemon_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = HubRig()
    db = sqlite3.connect(":memory:", isolation_level=None)
    store.migrate(db)
    persister = Persister(db, rig.hub, wall_clock=lambda: 5.0)
    persister.restore(lambda port: port)
    db.execute("DROP TABLE console")  # every write fails from now on
    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.history.persist"):
        rig.connect(UUID_A, "db01")
        rig.connect(UUID_B, "web02")
    assert len([r for r in caplog.records if "write failed" in r.message]) == 1
    assert {c.name for c in rig.hub.consoles()} == {"db01", "web02"}
    persister.close()


# -- hub: restore() and the output listener ----------------------------------------------


class HubRig:
    """A hub on fake time with fake VMs (as in tests/vspcd/hub/test_hub.py)."""

    def __init__(self, **settings: Any) -> None:
        self.clock = FakeClock()
        self.sched = FakeScheduler(self.clock)
        self.ports = FakePorts()
        self.hub = Hub(
            HubSettings(**settings), clock=self.clock, call_later=self.sched.call_later,
            ports=self.ports,
        )  # fmt: skip

    def connect(self, uuid: str, name: str | None, uri: str = "vSPC.py") -> Any:
        conn = self.hub.vm_connected(FakeVm())
        _, label = vm.parse_service_uri(uri)
        self.hub.vm_event(conn, ProxyRequested("S", uri, label, True))
        self.hub.vm_event(conn, VmIdentified(uuid))
        if name is not None:
            self.hub.vm_event(conn, VmNamed(name))
        return conn


def test_restore_makes_a_disconnected_console_with_expiry_armed() -> None:
    rig = HubRig(vm_expire_time=60.0)
    events: list[str] = []

    def admin_events(event: HubEvent) -> None:  # what operators would see
        if event.admin_name is not None:
            events.append(event.admin_name.value)

    rig.hub.subscribe(admin_events)
    key = ConsoleKey(UUID_A)
    console = rig.hub.restore(key, "db01", 7100, "vSPC.py")
    assert rig.hub.restore(key, "other", 7200, None) is console  # known key: unchanged
    assert (console.name, console.port, console.service_uri) == ("db01", 7100, "vSPC.py")
    assert not console.connected and rig.hub.console_by_port(7100) is console
    assert console.expires_at == rig.clock.now + 60.0
    assert rig.hub.find("db01") is console and events == []
    # A VM with the key takes it over: same console, same port, timer cancelled.
    rig.ports.bound[7100] = key  # as if the allocator had bound it
    conn = rig.connect(UUID_A, "db01")
    assert conn.console is console and console.port == 7100 and console.expiry is None
    rig.hub.vm_closed(conn)
    rig.sched.advance(60.0)
    assert rig.hub.console(key) is None and rig.ports.released == [7100]


def test_restore_without_a_port() -> None:
    rig = HubRig()
    console = rig.hub.restore(ConsoleKey(UUID_A, "com2"), "db01", None, None)
    assert console.port is None and console.display_name == "db01_com2"


def test_output_listener_sees_every_chunk_until_removed() -> None:
    rig = HubRig()
    seen: list[tuple[Console, bytes]] = []
    remove = rig.hub.add_output_listener(lambda console, data: seen.append((console, data)))
    conn = rig.connect(UUID_A, "db01")
    rig.hub.vm_event(conn, VmData(b"one"))
    rig.hub.vm_event(conn, VmData(b"\xfftwo"))
    assert seen == [(conn.console, b"one"), (conn.console, b"\xfftwo")]
    remove()
    remove()  # idempotent
    rig.hub.vm_event(conn, VmData(b"three"))
    assert len(seen) == 2


# -- Logging backend: file names and the ConsoleLogs object -------------------------------


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [
        ("vmlog", "db01", "vmlog-db01"),
        ("vmlog", "db01_console2", "vmlog-db01_console2"),
        ("vmlog", "../../etc/passwd", "vmlog-_._.._etc_passwd"),
        ("", "../x", "_._x"),
        ("", ".hidden", "_hidden"),
        ("", "", "_"),
        ("p", "a\x00b\nc\x1bd\x7fe\x9bf", "p-a_b_c_d_e_f"),
        ("p", "ümlaut ok", "p-ümlaut ok"),
    ],
)
def test_log_file_name_is_one_safe_component(prefix: str, name: str, expected: str) -> None:
    assert log_file_name(prefix, name) == expected


def test_log_file_name_is_cut_to_255_bytes_on_a_character_boundary() -> None:
    name = log_file_name("vmlog", "é" * 300)
    assert len(name.encode()) <= 255 and name.startswith("vmlog-é")


class LogRig(HubRig):
    def __init__(self, directory: Path, **settings: Any) -> None:
        super().__init__()
        self.logs = ConsoleLogs(
            LogSettings(directory, **settings), call_later=self.sched.call_later
        )
        self.hub.add_output_listener(self.logs.output)
        self.hub.subscribe(self.logs.observe)


def test_output_is_buffered_and_flushed_by_one_timer(tmp_path: Path) -> None:
    rig = LogRig(tmp_path)
    conn = rig.connect(UUID_A, "db01")
    for _ in range(100):
        rig.hub.vm_event(conn, VmData(b"x" * 10))
    assert list(tmp_path.iterdir()) == []  # nothing written yet: no write per chunk
    assert len(rig.sched.pending()) == 1 and rig.sched.pending()[0].delay == 1.0
    rig.sched.advance(1.0)
    assert (tmp_path / "vmlog-db01").read_bytes() == b"x" * 1000
    assert rig.sched.pending() == []  # idle: no timer until there is output again
    rig.logs.close()


def test_a_full_buffer_is_written_at_once(tmp_path: Path) -> None:
    rig = LogRig(tmp_path, buffer_limit=100)
    conn = rig.connect(UUID_A, "db01")
    rig.hub.vm_event(conn, VmData(b"y" * 150))
    assert (tmp_path / "vmlog-db01").read_bytes() == b"y" * 150
    rig.logs.close()


def test_uuid_name_until_vm_name_then_one_file(tmp_path: Path) -> None:
    rig = LogRig(tmp_path, prefix="con")
    conn = rig.connect(UUID_A, None)  # identified, VM-NAME not yet there
    rig.hub.vm_event(conn, VmData(b"early "))
    rig.logs.flush()
    by_uuid = tmp_path / f"con-{vm.display_uuid(UUID_A)}"
    assert by_uuid.read_bytes() == b"early "
    rig.hub.vm_event(conn, VmNamed("db01"))  # the file follows the name at once
    assert not by_uuid.exists()
    rig.hub.vm_event(conn, VmData(b"late"))
    rig.logs.close()
    assert (tmp_path / "con-db01").read_bytes() == b"early late"


def test_name_arriving_before_the_first_flush_never_makes_a_uuid_file(tmp_path: Path) -> None:
    rig = LogRig(tmp_path)
    conn = rig.connect(UUID_A, None, uri="vSPC.py?port=com2")
    rig.hub.vm_event(conn, VmData(b"boot "))
    rig.hub.vm_event(conn, VmNamed("db01"))
    rig.hub.vm_event(conn, VmData(b"ok"))
    rig.logs.close()
    assert [p.name for p in tmp_path.iterdir()] == ["vmlog-db01_com2"]
    assert (tmp_path / "vmlog-db01_com2").read_bytes() == b"boot ok"


def test_new_log_has_the_requested_mode_whatever_the_umask(tmp_path: Path) -> None:
    rig = LogRig(tmp_path, mode=0o640)
    conn = rig.connect(UUID_A, "db01")
    rig.hub.vm_event(conn, VmData(b"z"))
    old = os.umask(0o077)
    try:
        rig.logs.flush()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "vmlog-db01").stat().st_mode) == 0o640
    rig.logs.close()


def test_reopen_follows_logrotate_create(tmp_path: Path) -> None:
    rig = LogRig(tmp_path)
    conn = rig.connect(UUID_A, "db01")
    path = tmp_path / "vmlog-db01"
    rig.hub.vm_event(conn, VmData(b"before\n"))
    rig.logs.flush()
    path.rename(tmp_path / "vmlog-db01.1")  # logrotate moves it ...
    rig.hub.vm_event(conn, VmData(b"buffered\n"))
    rig.logs.reopen()  # ... and sends SIGHUP
    assert path.exists()
    rig.hub.vm_event(conn, VmData(b"after\n"))
    rig.logs.close()
    # What was buffered at SIGHUP belongs to the old file, like any earlier byte.
    assert (tmp_path / "vmlog-db01.1").read_bytes() == b"before\nbuffered\n"
    assert path.read_bytes() == b"after\n"


def test_copytruncate_keeps_appending_at_the_new_end(tmp_path: Path) -> None:
    rig = LogRig(tmp_path)
    conn = rig.connect(UUID_A, "db01")
    path = tmp_path / "vmlog-db01"
    rig.hub.vm_event(conn, VmData(b"old\n"))
    rig.logs.flush()
    os.truncate(path, 0)
    rig.hub.vm_event(conn, VmData(b"new\n"))
    rig.logs.flush()
    assert path.read_bytes() == b"new\n"  # O_APPEND: no hole of NULs
    rig.logs.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_write_errors_are_logged_once_and_cost_only_that_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = LogRig(tmp_path)
    (tmp_path / "vmlog-full").symlink_to("/dev/full")  # every write: ENOSPC
    (tmp_path / "vmlog-dir").mkdir()  # every open: EISDIR
    full = rig.connect(UUID_A, "full")
    blocked = rig.connect(UUID_B, "dir")
    fine = rig.connect("00112233445566778899aabbccddeeff", "fine")
    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.history.consolelog"):
        for round_ in range(3):
            for conn in (full, blocked, fine):
                rig.hub.vm_event(conn, VmData(b"%d\n" % round_))
            rig.logs.flush()
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2, errors
    assert any("vmlog-full" in e and "write failed" in e for e in errors)
    assert any("vmlog-dir" in e and "cannot open" in e for e in errors)
    assert (tmp_path / "vmlog-fine").read_bytes() == b"0\n1\n2\n"
    rig.logs.close()


def test_disconnect_closes_the_file_and_reconnect_appends(tmp_path: Path) -> None:
    rig = LogRig(tmp_path)
    conn = rig.connect(UUID_A, "db01")
    rig.hub.vm_event(conn, VmData(b"first\n"))
    rig.hub.vm_closed(conn)  # vm_disconnected: flushed and closed
    assert rig.logs.open_count == 0
    assert (tmp_path / "vmlog-db01").read_bytes() == b"first\n"
    again = rig.connect(UUID_A, "db01")
    rig.hub.vm_event(again, VmData(b"second\n"))
    rig.logs.close()
    assert (tmp_path / "vmlog-db01").read_bytes() == b"first\nsecond\n"


# -- Logging backend end to end ----------------------------------------------------------


def test_console_log_holds_every_byte_of_output(tmp_path: Path) -> None:
    logs = tmp_path / "consoles"  # created by the daemon

    async def main() -> None:
        async with running(tmp_path, "--log-dir", str(logs)) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await events.wait("vm_connected")
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            esx.send(ALL_BYTES)
            await op.output.length(len(ALL_BYTES))  # the hub has seen all of it
            logs_of(daemon).flush()
            path = logs / "vmlog-db01"
            assert path.read_bytes() == ALL_BYTES
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            # SIGHUP's handler, after logrotate moved the file away:
            path.rename(logs / "vmlog-db01.1")
            daemon.reopen_logs()
            esx.send(b"after rotation\r\n")
            await op.output.expect(b"after rotation\r\n")
            await op.close()
            await esx.close()
        # stop() flushed what was still buffered
        assert (logs / "vmlog-db01").read_bytes() == b"after rotation\r\n"
        assert (logs / "vmlog-db01.1").read_bytes() == ALL_BYTES

    asyncio.run(main())


def test_vspc_py_logging_backend_spelling(tmp_path: Path) -> None:
    logs = tmp_path / "log dir"

    async def main() -> None:
        args = f"-l '{logs}' -p console -m 0640 --context 5"
        async with running(tmp_path, "--backend", "Logging", "--backend-args", args) as (
            daemon,
            events,
        ):
            assert daemon.config.context == 5
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "web02", "vSPC.py?port=com1")
            await events.wait("vm_connected")
            op = await Operator.connect(console_port(daemon, f"{UUID_A}_com1"))
            await events.wait("client_attached")
            esx.send(b"hello")
            await op.output.expect(b"hello")
            await op.close()
            await esx.close()
        path = logs / "console-web02_com1"
        assert path.read_bytes() == b"hello"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    asyncio.run(main())


def test_unwritable_log_dir_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    async def main() -> None:
        with pytest.raises(OSError, match="log directory"):
            async with running(tmp_path, "--log-dir", str(tmp_path / "file" / "sub")):
                pass

    asyncio.run(main())


# -- --context ---------------------------------------------------------------------------


def test_context_replays_recent_output_to_a_new_telnet_client(tmp_path: Path) -> None:
    history = b"line one\r\n\xffline two\r\n"

    async def main() -> None:
        async with running(tmp_path, "--context", "12") as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            first = await Operator.connect(port)
            await events.wait("client_attached")
            esx.send(history)
            await first.output.expect(history)
            late = await Operator.connect(port)
            await events.wait("client_attached", count=2)
            esx.send(b"live")
            await late.output.expect(b"live")
            assert bytes(late.output.data) == history[-12:] + b"live"
            await first.close()
            await late.close()
            await esx.close()

    asyncio.run(main())


def test_without_context_a_new_telnet_client_gets_no_history(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            first = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            esx.send(b"old")
            await first.output.expect(b"old")
            late = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached", count=2)
            esx.send(b"new")
            await late.output.expect(b"new")
            assert bytes(late.output.data) == b"new"
            await first.close()
            await late.close()
            await esx.close()

    asyncio.run(main())


# -- the program: exit statuses, a real SIGHUP --------------------------------------------


BASE = ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "--no-vm-ports"]


def vspcd(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vspc.vspcd", *BASE, "--admin-socket", str(tmp_path / "s"), *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "Bogus"], "--backend 'Bogus': unknown backend"),
        (["--backend", "File"], "the following arguments are required: -f/--file"),
        (["--backend", "Logging", "--backend-args", "-x"], "unrecognized arguments: -x"),
        (["--backend", "Logging", "--backend-args", "-m 999"], "not an octal file mode"),
        (["--backend", "File", "--backend-args", "-f 'open"], "No closing quotation"),
        (["--backend-args", "-f x"], "--backend-args needs --backend"),
    ],
)
def test_bad_backend_arguments_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    result = vspcd(tmp_path, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("vspcd: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_persist_file_is_set_aside_and_the_daemon_starts(tmp_path: Path) -> None:
    bad = tmp_path / "consoles.db"
    garbage = b"definitely not sqlite\n" * 50
    bad.write_bytes(garbage)
    (tmp_path / "consoles.db-wal").write_bytes(b"old log")
    errlog = tmp_path / "stderr"
    with errlog.open("w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "vspc.vspcd", *BASE, "--admin-socket", str(tmp_path / "s")]
            + ["--persist-file", str(bad)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        _wait_for(lambda: "listening for ESXi on" in errlog.read_text(), "the daemon to start")
        assert child.poll() is None, errlog.read_text()
        (aside,) = tmp_path.glob("consoles.db.corrupt-*[0-9]")
        assert re.fullmatch(r"consoles\.db\.corrupt-\d{8}T\d{6}", aside.name)
        assert aside.read_bytes() == garbage  # kept, not repaired
        assert Path(f"{aside}-wal").read_bytes() == b"old log"  # its journal went with it
        assert rows(bad) == []  # a fresh, usable file in its place
        text = errlog.read_text()
        assert f"persist file {bad}: not a usable SQLite database" in text
        assert f"moved it to {aside}" in text and "ERROR" in text
        assert "Traceback" not in text
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=DEADLINE) == 0, errlog.read_text()


def test_persist_file_from_a_newer_vspcd_still_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "consoles.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 999")
    db.close()
    result = vspcd(tmp_path, "--persist-file", str(path))
    assert result.returncode == 1, result.stderr
    assert f"cannot start: persist file {path}: schema version 999 is newer" in result.stderr
    assert not list(tmp_path.glob("consoles.db.corrupt-*"))  # not damage: left alone


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    # A separate process: there is no event to await, so poll with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sighup_reopens_console_logs_in_the_real_program(tmp_path: Path) -> None:
    logs, errlog = tmp_path / "logs", tmp_path / "stderr"
    path = logs / "vmlog-db01"

    def contains(target: Path, data: bytes) -> Callable[[], bool]:
        return lambda: target.exists() and data in target.read_bytes()

    with errlog.open("w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "vspc.vspcd", *BASE, "--admin-socket", str(tmp_path / "s")]
            + ["--log-dir", str(logs)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        pattern = re.compile(r"listening for ESXi on 127\.0\.0\.1:(\d+)")
        _wait_for(lambda: pattern.search(errlog.read_text()) is not None, "the proxy port")
        match = pattern.search(errlog.read_text())
        assert match is not None
        proxy_port = int(match.group(1))

        async def vm_session() -> None:
            esx = await FakeEsxi.connect(proxy_port, UUID_A, "db01")
            esx.send(b"before\n")
            await asyncio.to_thread(_wait_for, contains(path, b"before\n"), "the first flush")
            path.rename(logs / "vmlog-db01.1")
            child.send_signal(signal.SIGHUP)
            await asyncio.to_thread(_wait_for, path.exists, "the log to be reopened")
            esx.send(b"after\n")
            await asyncio.to_thread(_wait_for, contains(path, b"after\n"), "the next flush")
            await esx.close()

        asyncio.run(vm_session())
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=DEADLINE) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (logs / "vmlog-db01.1").read_bytes() == b"before\n"
    assert path.read_bytes() == b"after\n"
    assert "reopened 1 console log(s)" in errlog.read_text()
