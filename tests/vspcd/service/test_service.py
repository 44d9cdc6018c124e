"""vspcd as a service, through its real entry point (`python -m vspc.vspcd`).

* sd_notify: the messages arrive on a datagram socket standing in for systemd's
  `$NOTIFY_SOCKET`, in order: STATUS while starting, READY=1 only once the proxy port
  and the admin socket answer, WATCHDOG=1 while running, RELOADING=1 + READY=1 around
  a SIGHUP, STOPPING=1 at SIGTERM.
* reload: SIGHUP applies a changed client limit to a running daemon while an operator
  stays attached to a console, reports what needs a restart, and a broken file
  changes nothing.
* privileges: as root, `--user nobody` binds first, then runs as nobody; root without
  `--user` or `--allow-root` is refused.

Waits are on messages and sockets (each bounded by a generous deadline), not sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemonproc import free_port, start_vspcd
from tests.vspcd.harness import FakeEsxi
from vspc.vspcd import __version__

DEADLINE = 15.0


class NotifySocket:
    """A bound AF_UNIX datagram socket playing systemd's side of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)  # as systemd's: a daemon that dropped root still reaches it
        self.sock.settimeout(DEADLINE)
        self.seen: list[str] = []

    def next(self) -> str:
        message = self.sock.recv(4096).decode()
        self.seen.append(message)
        return message

    def until(self, field: str) -> str:
        """Messages up to and including the first with `field` as one of its lines."""
        while True:
            message = self.next()
            if field in message.split("\n"):
                return message

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def admin(path: Path, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "admin socket closed without a reply"
            buf += chunk
    reply: dict[str, object] = json.loads(buf)
    return reply


@contextlib.contextmanager
def vspcd(
    workdir: Path, *argv: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], NotifySocket, Path, int]]:
    """A real daemon with a notify socket, started with `--proxy-port 0` unless argv
    names one; yields (process, notify socket, its log, the proxy port it bound)."""
    notify = NotifySocket(workdir / "notify")
    log = workdir / "vspcd.log"
    environ = {**os.environ, "NOTIFY_SOCKET": str(notify.path), **(env or {})}
    port = [] if "--proxy-port" in argv else ["--proxy-port", "0"]
    try:
        daemon = start_vspcd(["--proxy-iface", "127.0.0.1", *port, *argv], log, env=environ)
    except BaseException:
        notify.close()
        raise
    assert daemon.proxy_port is not None
    try:
        yield daemon.proc, notify, log, daemon.proxy_port
    finally:
        daemon.close()
        notify.close()


def ready_fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.split("\n") if "=" in line)


def test_sd_notify_messages_in_order(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    config = tmp_path / "vspcd.toml"
    config.write_text("client_limit = 2\n")
    with vspcd(
        tmp_path,
        "--no-vm-ports", "--admin-socket", str(sock),
        "--config", str(config),
        env={"WATCHDOG_USEC": "200000"},  # a ping every 0.1 s
    ) as (proc, notify, log, proxy):  # fmt: skip
        first = notify.next()
        assert first.startswith("STATUS=starting"), first

        ready = notify.until("READY=1")
        # READY means serving: both listeners answer the moment it arrives.
        with socket.create_connection(("127.0.0.1", proxy), timeout=DEADLINE):
            pass
        hello = admin(sock, {"cmd": "hello"})
        assert hello["version"] == __version__
        fields = ready_fields(ready)
        assert fields["MAINPID"] == str(proc.pid)
        assert f"ESXi proxy 127.0.0.1:{proxy}" in fields["STATUS"]
        assert str(sock) in fields["STATUS"]

        notify.until("WATCHDOG=1")
        notify.until("WATCHDOG=1")  # repeatedly, not once

        proc.send_signal(signal.SIGHUP)
        reloading = notify.until("RELOADING=1")
        assert "MONOTONIC_USEC" in ready_fields(reloading)
        notify.until("READY=1")

        proc.send_signal(signal.SIGTERM)
        stopping = notify.until("STOPPING=1")
        assert proc.wait(DEADLINE) == 0, log.read_text()

    kinds = [
        next(k for k in ("READY=1", "RELOADING=1", "STOPPING=1", "WATCHDOG=1", "STATUS=") if k in m)
        for m in notify.seen
    ]
    lifecycle = [kind for kind in kinds if kind != "WATCHDOG=1"]
    assert lifecycle == ["STATUS=", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], kinds
    assert kinds.index("WATCHDOG=1") > kinds.index("READY=1")
    assert "STATUS=shutting down" in stopping
    assert "reloaded" in log.read_text()


def test_without_notify_socket_nothing_is_sent_and_it_still_runs(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vspc.vspcd", "--proxy-iface", "127.0.0.1", "--proxy-port",
         "0", "--no-vm-ports", "--admin-socket", str(sock)],
        env=env,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(sock.exists, "the admin socket")
        assert admin(sock, {"cmd": "hello"})["version"] == __version__
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err.decode()


async def _read_until(reader: asyncio.StreamReader, needle: bytes) -> bytes:
    buf = b""
    async with asyncio.timeout(DEADLINE):
        while needle not in buf:
            chunk = await reader.read(4096)
            assert chunk, f"closed before {needle!r}; got {buf!r}"
            buf += chunk
    return buf


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(DEADLINE):
        return await reader.read()


def test_sighup_applies_a_new_client_limit_without_dropping_a_console(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    config = tmp_path / "vspcd.toml"
    config.write_text("client_limit = 1\nscrollback = 65536\n")
    with vspcd(
        tmp_path,
        "-i", "127.0.0.1", "-r", str(free_port()),
        "--admin-socket", str(sock), "--config", str(config),
    ) as (proc, notify, log, proxy):  # fmt: skip
        notify.until("READY=1")

        def clients() -> int:
            rows = admin(sock, {"cmd": "list"})["vms"]
            assert isinstance(rows, list)
            return int(rows[0]["clients"]) if rows else -1

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            vm = await FakeEsxi.connect(proxy, name="db01")
            await loop.run_in_executor(None, wait_for, lambda: clients() == 0, "the console")
            rows = admin(sock, {"cmd": "list"})["vms"]
            assert isinstance(rows, list)
            port = rows[0]["port"]

            first_reader, first_writer = await asyncio.open_connection("127.0.0.1", port)
            await loop.run_in_executor(None, wait_for, lambda: clients() == 1, "attach")
            over_reader, over_writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await _read_to_eof(over_reader)  # limit 1: told why, then closed
            assert b"1 client" in refused, refused
            over_writer.close()

            config.write_text("client_limit = 3\nscrollback = 32768\n")
            proc.send_signal(signal.SIGHUP)
            await loop.run_in_executor(None, notify.until, "RELOADING=1")
            await loop.run_in_executor(None, notify.until, "READY=1")
            lines = [line for line in log.read_text().splitlines() if "reloaded" in line]
            assert len(lines) == 1, lines
            assert "applied client_limit 1 -> 3" in lines[0]
            assert "needs a restart" in lines[0] and "scrollback 65536 -> 32768" in lines[0]

            second_reader, second_writer = await asyncio.open_connection("127.0.0.1", port)
            await loop.run_in_executor(None, wait_for, lambda: clients() == 2, "second attach")
            vm.send(b"still here\r\n")
            await _read_until(first_reader, b"still here")  # the first client never left
            await _read_until(second_reader, b"still here")

            # A broken edit is reported and changes nothing.
            config.write_text("client_limit = -1\n")
            proc.send_signal(signal.SIGHUP)
            await loop.run_in_executor(None, notify.until, "RELOADING=1")
            await loop.run_in_executor(None, notify.until, "READY=1")
            text = log.read_text()
            assert "reload failed, configuration unchanged" in text
            assert f"{config}: key 'client_limit': must be >= 0, got -1" in text
            third_reader, third_writer = await asyncio.open_connection("127.0.0.1", port)
            await loop.run_in_executor(None, wait_for, lambda: clients() == 3, "third attach")
            vm.send(b"and now\r\n")
            for reader in (first_reader, second_reader, third_reader):
                await _read_until(reader, b"and now")
            for writer in (first_writer, second_writer, third_writer):
                writer.close()
            await vm.close()

        asyncio.run(scenario())
        assert proc.poll() is None, "the daemon died"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0, log.read_text()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory another user can traverse (pytest's are root-only 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vspcd-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ids(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    out = {}
    for line in status:
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in value.split()]
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_user_flag_binds_as_root_then_runs_as_that_user(open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    state, logs = open_dir / "state", open_dir / "consoles"
    for directory in (state, logs):  # as tmpfiles.d / StateDirectory= would make them
        directory.mkdir(mode=0o750)
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    sock = open_dir / "run" / "vspcd.sock"  # directory created by vspcd itself
    env = {k: v for k, v in os.environ.items() if k != "VSPCD_ALLOW_ROOT"}
    with vspcd(
        open_dir,  # READY is sent after the drop, as nobody: the socket must be reachable
        "-i", "127.0.0.1", "-r", str(free_port()),
        "--admin-socket", str(sock), "--persist-file", str(state / "consoles.db"),
        "--log-dir", str(logs), "--user", "nobody",
        env=env,
    ) as (proc, notify, log, proxy):  # fmt: skip
        notify.until("READY=1")
        ids = _ids(proc.pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, ids
        assert ids["Gid"] == [nobody.pw_gid] * 4, ids
        assert 0 not in ids["Groups"], ids
        assert f"running as user nobody (uid {nobody.pw_uid}" in log.read_text()

        async def scenario() -> None:
            vm = await FakeEsxi.connect(proxy, name="db01")
            vm.send(b"boot\r\n")
            loop = asyncio.get_running_loop()

            def logged() -> bool:
                return any(p.read_bytes().endswith(b"boot\r\n") for p in logs.glob("vmlog-*"))

            await loop.run_in_executor(None, wait_for, logged, "the console log")
            await vm.close()

        asyncio.run(scenario())
        (console_log,) = logs.glob("vmlog-*")
        assert console_log.stat().st_uid == nobody.pw_uid  # created after the drop
        assert console_log.stat().st_mode & 0o777 == 0o600
        assert (state / "consoles.db").stat().st_uid == nobody.pw_uid
        assert (state / "consoles.db").stat().st_mode & 0o777 == 0o600
        assert sock.stat().st_mode & 0o777 == 0o660
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0, log.read_text()
    assert not sock.exists(), "the admin socket was not removed after the drop"


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal applies to root only")
def test_root_without_user_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VSPCD_ALLOW_ROOT"}
    argv = [sys.executable, "-m", "vspc.vspcd", "--proxy-iface", "127.0.0.1", "--proxy-port",
            "0", "--no-vm-ports", "--admin-socket", str(tmp_path / "s")]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 2
    assert "refusing to run as root" in done.stderr and "--user" in done.stderr
    assert not (tmp_path / "s").exists()
    # --check-config is not running: root validates the file a service user runs with.
    checked = subprocess.run(
        [*argv, "--check-config"], env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert checked.returncode == 0, checked.stderr
