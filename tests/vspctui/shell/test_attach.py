"""`vspc attach` in a real pty against the fake admin server.

The client runs as a subprocess whose stdin/stdout/stderr are the slave side of a
pty; the test types into the master.  Synchronisation is on what the client prints
(the banner appears only once the terminal is raw) and on what the fake daemon
received, never on sleeps.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tests.vspctui.ptyclient import PtyClient
from vspc.vspctui.attach import Attacher, escape_name, menu_lookup, parse_escape, run_attach
from vspc.vspctui.client import AdminAddress, open_attach
from vspc.vspctui.cmdtable import Context, ExitCode

DB01_KEY = "0123456789abcdeffedcba9800000000"
TIMEOUT = 10.0


@pytest.fixture
def spawn(daemon: Any) -> Iterator[Any]:
    clients: list[PtyClient] = []

    def start(*args: str) -> PtyClient:
        client = PtyClient(daemon.path, *args)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


def inputs_until_detach(daemon: Any) -> bytes:
    data = b""
    while (chunk := daemon.inputs.get(timeout=TIMEOUT)[1]) != b"":
        data += chunk
    return data


def test_enter_sends_cr_and_quit_restores_the_terminal(daemon: Any, spawn: Any) -> None:
    vspc = spawn("attach", "db01", "--replay", "7")
    vspc.expect(b"escape key is ^]\r\n")
    assert not vspc.restored()  # raw now
    vspc.expect(b"login: ")  # the replay
    vspc.type(b"root\r")
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"root\r")  # no CR -> LF
    vspc.type(b"\x03")  # ^C is a byte for the VM, not a signal for us
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"\x03")
    daemon.output(DB01_KEY, b"Password:\r\n")
    vspc.expect(b"Password:\r\n")
    assert b"Password:\r\r\n" not in vspc.output  # output post-processing is off
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"continue\rz")  # typed ahead of the menu closing: still for the VM
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"z")
    daemon.output(DB01_KEY, b"MARK")  # held while the menu was open
    vspc.expect(b"MARK")
    vspc.output = b""
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()
    assert b"detached from db01" in vspc.output
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"")  # detached


def test_readonly_refuses_typing(daemon: Any, spawn: Any) -> None:
    vspc = spawn("attach", "--readonly", "db01")
    vspc.expect(b"(free_for_all_or_readonly, read-only); escape key is ^]")
    vspc.type(b"rm -rf /\r")
    vspc.expect(b"read-only: typing is not sent")
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01 (read-only)>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()
    assert inputs_until_detach(daemon) == b""  # nothing was sent
    attach = [r for r in daemon.requests if r["cmd"] == "attach"]
    assert attach[0]["readonly"] is True


def test_escape_menu_send_escape_info_who_and_completion(daemon: Any, spawn: Any) -> None:
    vspc = spawn("attach", "db01", "--lock", "write", "-e", "^a")
    vspc.expect(b"escape key is ^A\r\n")
    vspc.type(b"\x1d")  # ^] is an ordinary byte with another escape key
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"\x1d")
    vspc.type(b"\x01")
    vspc.expect(b"vspc db01>")
    vspc.type(b"send-escape\r")
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"\x01")
    vspc.type(b"x")  # for the VM, even if typed before the menu is gone
    assert daemon.inputs.get(timeout=TIMEOUT) == (DB01_KEY, b"x")
    # VM output shows again only once the menu is closed (it is held meanwhile), so
    # after this marker nothing of the old prompt can still arrive.
    daemon.output(DB01_KEY, b"MARK")
    vspc.expect(b"MARK")
    vspc.output = b""
    vspc.type(b"\x01")
    vspc.expect(b"vspc db01>")
    vspc.type(b"info\r")
    vspc.expect(b"can type: yes")
    vspc.expect(b"lock: write held by you")
    vspc.type(b"wh\t")  # completion: the only match
    vspc.type(b"\r")
    vspc.expect(b"ID")
    vspc.expect(b"alice")
    vspc.type(b"q\r")  # a unique prefix works
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()


def test_clear_by_the_daemon_ends_the_session_and_restores(daemon: Any, spawn: Any) -> None:
    vspc = spawn("db01")  # `vspc VM` attaches, like vSPCClient
    vspc.expect(b"escape key is ^]\r\n")
    daemon.clear(DB01_KEY, "maintenance")
    vspc.expect(b"[vspcd: disconnected by alice: maintenance]\r\n")
    assert vspc.wait() == ExitCode.DETACHED
    assert vspc.restored()
    assert b"connection closed by vspcd" in vspc.output


def test_sigterm_restores_the_terminal(daemon: Any, spawn: Any) -> None:
    vspc = spawn("attach", "db01")
    vspc.expect(b"escape key is ^]\r\n")
    vspc.proc.send_signal(signal.SIGTERM)
    assert vspc.wait() == 128 + signal.SIGTERM
    assert vspc.restored()


def test_refused_attach_never_touches_the_terminal(daemon: Any, spawn: Any) -> None:
    vspc = spawn("attach", "nosuch")
    assert vspc.wait() == ExitCode.NOT_FOUND
    assert vspc.restored()
    assert b"no console matches 'nosuch' [vm_not_found]" in vspc.output


def test_attach_with_pipes_copies_both_ways_until_eof(daemon: Any) -> None:
    """stdin not a terminal: no raw mode, no escape key; EOF half-closes (detach)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"uptime\n\x1d")
    os.close(in_w)
    err = io.StringIO()
    ctx = Context(AdminAddress(path=daemon.path), err_stream=err, stdin_fd=in_r, stdout_fd=out_w)
    try:
        status = asyncio.run(run_attach(ctx, "db01", replay=7))
        os.close(out_w)
        out = os.read(out_r, 65536)
    finally:
        os.close(in_r)
        os.close(out_r)
    assert status == ExitCode.OK
    assert out == b"login: "
    assert inputs_until_detach(daemon) == b"uptime\n\x1d"  # the escape byte passed through
    assert "no escape key" in err.getvalue()


@pytest.mark.parametrize(
    ("text", "byte"),
    [("^]", 0x1D), ("^a", 0x01), ("^A", 0x01), ("^?", 0x7F), ("~", 0x7E), ("none", None)],
)
def test_parse_escape(text: str, byte: int | None) -> None:
    assert parse_escape(text) == byte
    if byte is not None and byte < 0x20:
        assert escape_name(byte) == text.upper()


@pytest.mark.parametrize("text", ["^^^", "ctrl-]", "é", "^1"])
def test_parse_escape_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_escape(text)


def test_menu_prefixes() -> None:
    assert menu_lookup("q") is menu_lookup("quit")
    assert menu_lookup("?") is menu_lookup("help")
    assert menu_lookup("s") is menu_lookup("send-escape")
    assert menu_lookup("zz") is None


def test_shell_in_a_pty_ctrl_c_stops_a_command_not_the_shell(daemon: Any, spawn: Any) -> None:
    vspc = spawn("shell")
    vspc.expect(b"vspc>")
    vspc.type(b"ls\r")
    vspc.expect(b"web02_console2")
    vspc.type(b"tail -f db01\r")
    vspc.expect(b"login: ")
    daemon.output(DB01_KEY, b"more\r\n")
    vspc.expect(b"more")  # following: the command is running
    vspc.proc.send_signal(signal.SIGINT)
    vspc.expect(b"interrupted")
    # The shell is back.  Its prompt may come in the same read as "interrupted".
    vspc.expect(b"vspc>", start=vspc.output.index(b"interrupted"))
    assert [r["cmd"] for r in daemon.requests].count("untail") == 1
    vspc.type(b"\x04")  # Ctrl-D leaves
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()


def test_escape_menu_with_pipe_input(daemon: Any) -> None:
    """The menu alone, in process: prompt_toolkit pipe input, output to a pipe."""
    out_r, out_w = os.pipe()
    ctx = Context(AdminAddress(path=daemon.path), stdout_fd=out_w)

    async def run() -> list[str]:
        session = await open_attach(daemon.path, "db01")
        actions = []
        with create_pipe_input() as pipe:
            attacher = Attacher(
                session,
                ctx,
                escape=0x1D,
                readonly=False,
                prompt_factory=lambda: PromptSession(input=pipe, output=DummyOutput()),
            )
            pipe.send_text("who\nbogus\nhelp\ns\n")  # send-escape ends the menu
            actions.append((await attacher._menu()).value)
            pipe.send_text("info\n\n")  # an empty line continues
            actions.append((await attacher._menu()).value)
            pipe.send_text("quit\n")
            actions.append((await attacher._menu()).value)
        await session.close()
        return actions

    try:
        assert asyncio.run(run()) == ["continue", "continue", "quit"]
        os.close(out_w)
        out = os.read(out_r, 65536).decode()
    finally:
        os.close(out_r)
    assert "ID  KIND    USER   PEER  MODE" in out  # who: this session itself
    assert "unknown command: bogus (try 'help')" in out
    assert "send-escape  send the escape character itself to the VM" in out
    assert "you: client" in out and "can type: yes" in out
    assert inputs_until_detach(daemon) == b"\x1d"  # what send-escape sent


def test_escape_key_again_at_the_menu_keeps_the_next_key(daemon: Any, spawn: Any) -> None:
    """^] at the `vspc db01>` prompt is ignored: it no longer starts prompt_toolkit's
    character search, which took the next key typed (`info` ran as `nfo`)."""
    vspc = spawn("attach", "db01")
    vspc.expect(b"escape key is ^]\r\n")
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"\x1d")
    vspc.type(b"info\r")
    vspc.expect(b"can type: yes")
    assert b"unknown command" not in vspc.output
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()


def test_escape_key_again_with_pipe_input(daemon: Any) -> None:
    """The same in process, for ^] and ESC as escape keys; ^A keeps its line editing."""
    out_r, out_w = os.pipe()
    ctx = Context(AdminAddress(path=daemon.path), stdout_fd=out_w)

    async def run(escape: int, typed: str) -> str:
        session = await open_attach(daemon.path, "db01")
        with create_pipe_input() as pipe:
            attacher = Attacher(
                session,
                ctx,
                escape=escape,
                readonly=False,
                prompt_factory=lambda: PromptSession(input=pipe, output=DummyOutput()),
            )
            pipe.send_text(typed)
            action = (await attacher._menu()).value
        await session.close()
        return action

    try:
        assert asyncio.run(run(0x1D, "\x1dquit\n")) == "quit"
        assert asyncio.run(run(0x1D, "\x1d\x1dq\n")) == "quit"
        assert asyncio.run(run(0x1B, "\x1bquit\n")) == "quit"
        assert asyncio.run(run(0x01, "uit\x01q\n")) == "quit"  # ^A: start of line
        os.close(out_w)
        out = os.read(out_r, 65536).decode()
    finally:
        os.close(out_r)
    assert "unknown command" not in out
