"""`vspc` against a real vspcd (issue #4): the CLI, attach in a pty, the shell.

The daemon (`vspc.vspcd.server.Daemon`, through tests/vspcd/harness.py) and a fake ESXi
host run on their own event loop in a background thread, so the test thread is free to
spawn `python -m vspc.vspctui.cli` on a pty, to call `main()` (which runs
`asyncio.run`) or to drive the shell with prompt_toolkit pipe input.  Everything is on
loopback; the admin socket is in a fresh short directory and the telnet ports start at
a free port.  Synchronisation is on bytes arriving (on the pty, at the fake VM, in the
hub's scrollback) and on hub events, with timeouts; never on sleeps.
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
import threading
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    free_port,
    identified,
    running,
)
from tests.vspctui.ptyclient import PtyClient, client_env
from vspc.vspctui.cli import main
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.cmdtable import Context, ExitCode
from vspc.vspctui.commands import commands
from vspc.vspctui.formatting import LIST_HEADERS
from vspc.vspctui.shell import Shell, ShellCompleter, repl

TIMEOUT = 10.0
ME = pwd.getpwuid(os.geteuid()).pw_name  # who `clear`/`kick` name in their notice


class RealDaemon:
    """vspcd plus one fake VM (db01, printing "login: ") on a background event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = str(directory / "admin.sock")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.port = 0

    # -- lifecycle, from the test thread -----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.call(self._start)

    async def _start(self) -> None:
        self.daemon, self.events = await self._stack.enter_async_context(
            running(self.directory, "-r", str(free_port()))
        )
        assert self.daemon.proxy_port is not None
        self.vm = await FakeEsxi.connect(self.daemon.proxy_port, UUID_A, "db01")
        await identified(self.events, UUID_A)
        self.port = console_port(self.daemon, UUID_A)
        # Bytes after VM-NAME on the same connection: once they are in the scrollback
        # the console is called db01.
        await self._vm_prints(b"login: ")

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._stack.aclose()  # Daemon.stop(): closes every connection
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # pumps of the fake VM and operators
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.call(shutdown)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (sync, or returning an awaitable) on the daemon's loop; its result."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(TIMEOUT + 5)

    # -- test controls -----------------------------------------------------------------

    def vm_prints(self, data: bytes) -> None:
        """The VM prints `data`; returns once the hub has it (scrollback and clients)."""
        self.call(lambda: self._vm_prints(data))

    async def _vm_prints(self, data: bytes) -> None:
        hub = self.daemon.hub
        assert hub is not None
        key = next(c.key for c in hub.consoles() if str(c.key) == UUID_A)
        got = bytearray()
        seen = asyncio.Event()

        def tap(chunk: bytes) -> None:  # runs after the scrollback append and fan-out
            got.extend(chunk)
            if data in got:
                seen.set()

        untap = hub.tap(key, tap)
        try:
            self.vm.send(data)
            async with asyncio.timeout(TIMEOUT):
                await seen.wait()
        finally:
            untap()

    def vm_received(self, data: bytes) -> bytes:
        """Wait until the VM got `data` as input; everything it got so far."""
        self.call(lambda: self.vm.input.expect(data))
        return bytes(self.vm.input.data)

    def vm_input_settled(self) -> bytes:
        """Everything the VM got from clients that are gone by now.

        The hub forwards input to the VM in order, so a marker typed now by a new
        telnet client arrives after anything an earlier (detached) client sent.
        """
        op = self.telnet()
        op.type(b"<MARK>")
        data = self.vm_received(b"<MARK>")
        self.call(op.close)
        assert data.endswith(b"<MARK>")
        return data[: -len(b"<MARK>")]

    def event(self, name: str, where: Callable[[dict[str, Any]], bool] = lambda f: True,
              count: int = 1) -> dict[str, Any]:  # fmt: skip
        result: dict[str, Any] = self.call(lambda: self.events.wait(name, where, count))
        return result

    def telnet(self) -> Operator:
        """A telnet operator on db01's port, once the hub has attached it."""

        async def connect() -> Operator:
            before = sum(1 for name, _ in self.events.seen if name == "client_attached")
            op = await Operator.connect(self.port)
            await self.events.wait("client_attached", count=before + 1)
            return op

        op: Operator = self.call(connect)
        return op

    def cli(self, *argv: str) -> int:
        """`vspc --socket PATH ARGV` in this process (no terminal needed)."""
        return main(["--socket", self.path, *argv])


@pytest.fixture
def real() -> Iterator[RealDaemon]:
    # A short directory: Unix socket paths are limited to 107 bytes, tmp_path is long.
    directory = Path(tempfile.mkdtemp(prefix="vspc-"))
    daemon = RealDaemon(directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def protocol(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request on a raw admin connection; the reply line, decoded."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


@pytest.fixture
def spawn(real: RealDaemon) -> Iterator[Callable[..., PtyClient]]:
    started: list[PtyClient] = []

    def start(*args: str) -> PtyClient:
        pty = PtyClient(real.path, *args)
        started.append(pty)
        return pty

    yield start
    for pty in started:
        pty.close()


def attached_id(real: RealDaemon, kind: str, count: int = 1) -> int:
    fields = real.event("client_attached", lambda f: f["client"]["kind"] == kind, count)
    ident: int = fields["client"]["id"]
    return ident


# ===================================================================== list


def test_list_table_json_and_no_arguments(real: RealDaemon, capsys: Any) -> None:
    op = real.telnet()
    assert real.cli("list") == ExitCode.OK
    table = capsys.readouterr().out
    header, row = table.splitlines()
    assert tuple(header.split()) == LIST_HEADERS
    assert row.split()[:7] == ["db01", str(real.port), "up", "1", "-", "normal", "-"]
    for column in LIST_HEADERS[1:]:  # aligned under the headers
        start = header.index(column)
        assert row[start - 2 : start] == "  " and row[start] != " "

    assert real.cli("list", "--json") == ExitCode.OK
    printed = json.loads(capsys.readouterr().out)
    reply = protocol(real.path, {"cmd": "list", "id": 42})
    assert reply.pop("id") == 42
    assert printed == reply
    assert [row["name"] for row in printed["vms"]] == ["db01"]
    assert printed["vms"][0]["attached"][0]["kind"] == "telnet"

    # `vspc` alone, the real entry point, socket from the environment.
    done = subprocess.run(
        [sys.executable, "-m", "vspc.vspctui.cli"],
        env=client_env() | {"VSPC_SOCKET": real.path},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode() == table
    real.call(op.close)


# ===================================================================== attach


def test_attach_enter_is_cr_and_quit_restores_the_terminal(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    vspc = spawn("attach", "db01", "--replay", "64")
    vspc.expect(b"escape key is ^]\r\n")
    assert not vspc.restored()  # raw now
    vspc.expect(b"login: ")  # the replay
    real.vm_prints(b"Welcome to db01")
    vspc.expect(b"Welcome to db01")
    vspc.type(b"abc\r")
    assert real.vm_received(b"abc\r") == b"abc\r"  # CR, never LF or CR LF
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()
    assert b"detached from db01" in vspc.output
    real.event("client_detached")
    assert real.vm_input_settled() == b"abc\r"  # nothing of the menu reached the VM


def test_vm_name_alone_attaches(real: RealDaemon, spawn: Callable[..., PtyClient]) -> None:
    vspc = spawn("db01")
    vspc.expect(b"vspc: attached to db01 (free_for_all_or_readonly); escape key is ^]\r\n")
    vspc.type(b"x\r")
    assert real.vm_received(b"x\r") == b"x\r"
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"q\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()


def test_readonly_never_sends_a_keystroke(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    vspc = spawn("attach", "--readonly", "db01")
    vspc.expect(b"(free_for_all_or_readonly, read-only); escape key is ^]\r\n")
    vspc.type(b"rm -rf /\r")
    vspc.expect(b"read-only: typing is not sent")
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01 (read-only)>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()
    real.event("client_detached")  # its connection is fully read and gone
    assert real.vm_input_settled() == b""


def test_exclusive_lock_refuses_a_second_attach(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    holder = spawn("attach", "--lock", "exclusive", "db01")
    holder.expect(b"(exclusive); escape key is ^]\r\n")
    second = subprocess.run(
        [sys.executable, "-m", "vspc.vspctui.cli", "--socket", real.path, "attach", "db01"],
        env=client_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert second.returncode == ExitCode.REFUSED == 5
    assert second.stdout == b""
    assert second.stderr.startswith(b"vspc: attach: ")
    assert second.stderr.rstrip().endswith(b"[lock_failed]")
    holder.type(b"\x1d")
    holder.expect(b"vspc db01>")
    holder.type(b"quit\r")
    assert holder.wait() == ExitCode.OK
    assert holder.restored()


def test_released_write_lock_lets_a_read_only_attach_type(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    """Read-only because of someone else's lock is not --readonly: vspcd takes input
    again once the lock is released (docs/admin-protocol.md, Lock modes), so vspc must
    keep sending it."""
    holder = spawn("attach", "--lock", "write", "db01")
    holder.expect(b"(write); escape key is ^]\r\n")
    watcher = spawn("attach", "db01")
    watcher.expect(b"(free_for_all_or_readonly, read-only); escape key is ^]\r\n")
    holder.type(b"\x1d")
    holder.expect(b"vspc db01>")
    holder.type(b"quit\r")
    assert holder.wait() == ExitCode.OK
    real.event("lock_changed", lambda f: f["lock"] is None)
    watcher.type(b"late\r")
    assert real.vm_received(b"late\r") == b"late\r"
    watcher.expect(b"[vspc: vspcd may discard typing: this session was read-only when it")
    watcher.type(b"\x1d")
    watcher.expect(b"vspc db01")
    watcher.type(b"info\r")
    watcher.expect(b"can type: yes")
    watcher.type(b"quit\r")
    assert watcher.wait() == ExitCode.OK
    assert watcher.restored()


@pytest.mark.parametrize("argv", [["attach", "bogus"], ["bogus"], ["show", "bogus"],
                                  ["tail", "bogus"], ["clear", "bogus"]])  # fmt: skip
def test_unknown_console_exit_code(real: RealDaemon, capsys: Any, argv: list[str]) -> None:
    assert real.cli(*argv) == ExitCode.NOT_FOUND == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vspc: ")
    assert captured.err.endswith("no console matches 'bogus' [vm_not_found]\n")


def test_no_socket_exit_code(capsys: Any) -> None:
    directory = Path(tempfile.mkdtemp(prefix="vspc-"))
    try:
        for argv in (["list"], ["attach", "db01"], []):
            assert main(["--socket", str(directory / "none.sock"), *argv]) == 3
            assert "cannot connect to vspcd" in capsys.readouterr().err
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ===================================================================== clear, kick


def test_clear_disconnects_telnet_and_attach_clients(
    real: RealDaemon, spawn: Callable[..., PtyClient], capsys: Any
) -> None:
    vspc = spawn("db01")
    vspc.expect(b"escape key is ^]\r\n")
    attached_id(real, "attach")
    op = real.telnet()
    assert real.cli("clear", "db01", "--reason", "maintenance") == ExitCode.OK
    assert capsys.readouterr().out == "cleared 2 client(s) of db01\n"
    notice = f"\r\n[vspcd: disconnected by {ME}: maintenance]\r\n".encode()
    vspc.expect(notice)
    assert vspc.wait() == ExitCode.DETACHED == 8
    assert vspc.restored()
    assert b"db01: connection closed by vspcd" in vspc.output
    real.call(op.closed)
    assert bytes(op.output.data).endswith(notice)
    # By port, with nobody left: nothing to clear.
    assert real.cli("clear", str(real.port)) == ExitCode.OK
    assert capsys.readouterr().out == "cleared 0 client(s) of db01\n"
    real.call(op.close)


def test_kick_one_client(real: RealDaemon, spawn: Callable[..., PtyClient], capsys: Any) -> None:
    op = real.telnet()
    telnet_id = attached_id(real, "telnet")
    vspc = spawn("attach", "db01")
    vspc.expect(b"escape key is ^]\r\n")
    attach_id = attached_id(real, "attach")

    assert real.cli("kick", str(telnet_id), "--reason", "idle") == ExitCode.OK
    assert capsys.readouterr().out == f"kicked client {telnet_id} from db01\n"
    real.call(op.closed)
    assert bytes(op.output.data).endswith(f"[vspcd: disconnected by {ME}: idle]\r\n".encode())
    real.vm_prints(b"still here")  # the other client is untouched
    vspc.expect(b"still here")

    assert real.cli("kick", str(attach_id)) == ExitCode.OK
    vspc.expect(f"\r\n[vspcd: disconnected by {ME}]\r\n".encode())
    assert vspc.wait() == ExitCode.DETACHED
    assert vspc.restored()
    capsys.readouterr()
    assert real.cli("kick", str(attach_id)) == ExitCode.NOT_FOUND
    assert capsys.readouterr().err.endswith("[not_attached]\n")
    real.call(op.close)


# ===================================================================== tail


def test_tail_prints_the_scrollback(real: RealDaemon, capsysbinary: Any) -> None:
    real.vm_prints(b"\x1b[1mroot\xff\r\n")  # 0xff: escaped on the ESXi wire, raw here
    assert real.cli("tail", "db01") == ExitCode.OK
    assert capsysbinary.readouterr().out == b"login: \x1b[1mroot\xff\r\n"
    assert real.cli("tail", "db01", "-n", "10") == ExitCode.OK
    assert capsysbinary.readouterr().out == b"[1mroot\xff\r\n"


def test_tail_follow_prints_new_output(real: RealDaemon, spawn: Callable[..., PtyClient]) -> None:
    vspc = spawn("tail", "-f", "db01")
    vspc.expect(b"login: ")  # the reply: following from here on, nothing lost
    real.vm_prints(b"first-new")
    vspc.expect(b"login: first-new")
    real.vm_prints(b"second-new")
    vspc.expect(b"first-newsecond-new")
    vspc.proc.send_signal(signal.SIGINT)
    assert vspc.wait() == ExitCode.INTERRUPTED


# ===================================================================== shell


def test_shell_lists_and_completes_a_console_from_the_daemon(real: RealDaemon) -> None:
    out, err = StringIO(), StringIO()
    ctx = Context(AdminAddress(path=real.path), out_stream=out, err_stream=err, in_shell=True)
    shell = Shell(ctx, commands)
    offered: list[list[str]] = []

    async def run() -> None:
        done = asyncio.Event()
        with create_pipe_input() as pipe:
            # As `vspc shell` sets it up (completion while typing), on a pipe.
            session: PromptSession[str] = PromptSession(
                input=pipe,
                output=DummyOutput(),
                completer=ShellCompleter(shell),
                complete_while_typing=True,
            )

            # Keys that arrive in one read are handled before any completion has run,
            # so Tab goes in once the completions for "show d" are there (as a person
            # types), and Enter once Tab has put the console's name in the line.
            def completions_changed(buffer: Buffer) -> None:
                state = buffer.complete_state
                if buffer.text == "show d" and state is not None and not offered:
                    offered.append([c.text for c in state.completions])
                    pipe.send_text("\t")

            def text_changed(buffer: Buffer) -> None:
                if buffer.text == "show db01" and not done.is_set():
                    done.set()
                    pipe.send_text("\n")
                    pipe.close()  # EOF ends the REPL once the lines are used up

            session.default_buffer.on_completions_changed += completions_changed
            session.default_buffer.on_text_changed += text_changed
            pipe.send_text("list\nshow d")
            try:
                async with asyncio.timeout(TIMEOUT):
                    await repl(shell, session)
            finally:
                await ctx.close()
        assert done.is_set()

    asyncio.run(run())
    assert offered == [["db01"]]  # fetched from the daemon before the prompt
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert tuple(lines[0].split()) == LIST_HEADERS
    assert lines[1].split()[:3] == ["db01", str(real.port), "up"]
    shown = [line.split(None, 1) for line in lines[2:] if line]
    assert ["name:", "db01"] in shown
    assert ["port:", str(real.port)] in shown
    assert ["vm:", "connected from 127.0.0.1"] in [[k, v.rsplit(":", 1)[0]] for k, v in shown]
