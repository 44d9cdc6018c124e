"""`vspc` against a real vspcd (docs/vspc.md): the CLI, attach in a pty, the shell.

The daemon (`vspc.vspcd.service.server.Daemon`, through tests/vspcd/harness.py) and a fake ESXi
host run on their own event loop in a background thread, so the test thread is free to
spawn `python -m vspc.vspctui.shell.cli` on a pty, to call `main()` (which runs
`asyncio.run`) or to drive the shell with prompt_toolkit pipe input.  Everything is on
loopback; the admin socket is in a fresh short directory and the telnet ports start at
a free port.  Synchronisation is on bytes arriving (on the pty, at the fake VM, in the
hub's scrollback) and on hub events, with timeouts; never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from tests.vspctui.ptyclient import PtyClient, client_env
from tests.vspctui.realdaemon import ME, TIMEOUT, RealDaemon, attached_id, protocol
from vspc.common.admin import AdminError
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.cmdtable import Context, ExitCode
from vspc.vspctui.formatting import LIST_HEADERS
from vspc.vspctui.shell.cli import main
from vspc.vspctui.shell.commands import commands
from vspc.vspctui.shell.shell import Shell, ShellCompleter, repl

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
        [sys.executable, "-m", "vspc.vspctui.shell.cli"],
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
        [sys.executable, "-m", "vspc.vspctui.shell.cli", "--socket", real.path, "attach", "db01"],
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


def test_shell_reconnects_after_a_daemon_restart(real: RealDaemon) -> None:
    """The first command after a restart runs on a fresh connection (docs/vspc.md,
    "The shell"): the
    old one's `shutting_down` is not reported as that command's failure."""
    out, err = StringIO(), StringIO()
    ctx = Context(AdminAddress(path=real.path), out_stream=out, err_stream=err, in_shell=True)
    shell = Shell(ctx, commands)

    async def run() -> None:
        try:
            await shell.run_line("list")
            assert shell.status == ExitCode.OK
            await shell.refresh()  # as the REPL does before each prompt
            client = await ctx.client()
            await asyncio.to_thread(real.restart)  # while the shell waits at its prompt
            # The old connection has heard `shutting_down` and ended; the shell has not
            # run anything since.
            with pytest.raises(AdminError, match="shutting down"):
                async with asyncio.timeout(TIMEOUT):
                    async for _ in client.events():
                        pass
            await shell.run_line("list")
            assert shell.status == ExitCode.OK
        finally:
            await ctx.close()

    asyncio.run(run())
    assert err.getvalue() == ""
    tables = [line for line in out.getvalue().splitlines() if line.startswith("db01")]
    assert len(tables) == 2


# ===================================================================== options, history


def test_stats_human_and_json(real: RealDaemon, capsys: Any) -> None:
    """`vspc stats`: labelled lines, and `--json` the reply exactly
    (bar the numbers that move by themselves: uptime, descriptors, loop lag)."""
    _op = real.telnet()  # held: a dropped Operator closes its connection
    assert real.cli("stats") == ExitCode.OK
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["consoles"].strip() == "connected 1"
    assert lines["clients"].strip() == "telnet 1"
    assert lines["vMotions completed"].strip() == "0"
    assert real.cli("stats", "--json") == ExitCode.OK
    printed = json.loads(capsys.readouterr().out)
    reply = protocol(real.path, {"cmd": "stats", "id": 9})
    assert reply.pop("id") == 9
    moving = ("uptime", "fds_in_use", "loop_lag")
    assert {k: v for k, v in printed.items() if k not in moving} == {
        k: v for k, v in reply.items() if k not in moving
    }
    assert printed["clients"] == {"telnet": 1, "attach": 0}


def test_socket_option_after_the_command(real: RealDaemon, capsys: Any) -> None:
    assert main(["list", "--socket", real.path]) == ExitCode.OK
    assert capsys.readouterr().out.splitlines()[1].startswith("db01")
    assert main(["show", "db01", "--json", f"--socket={real.path}"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["console"]["name"] == "db01"
    assert main(["--tcp", "127.0.0.1:1", "list", "--socket", real.path]) == ExitCode.USAGE
    assert "give one of them, not both" in capsys.readouterr().err


def test_socket_found_through_the_config_file(real: RealDaemon, tmp_path: Path) -> None:
    """A root daemon started with a custom --admin-socket is found through the
    `admin_socket` key of its configuration file (vspc.common.paths; docs/vspc.md,
    "Which daemon")."""
    config = tmp_path / "vspcd.toml"
    config.write_text(f"admin_socket = {json.dumps(real.path)}\n")
    done = subprocess.run(
        [sys.executable, "-m", "vspc.vspctui.shell.cli", "list"],
        env=client_env() | {"VSPC_CONFIG": str(config)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode().splitlines()[1].startswith("db01")


def test_attach_replays_recent_output_by_default(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    vspc = spawn("attach", "db01")
    vspc.expect(b"escape key is ^]\r\n")
    vspc.expect(b"login: ")  # the 4 KiB default replay, as Enter in vspc-tui
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK

    fresh = spawn("attach", "--replay", "0", "db01")
    fresh.expect(b"escape key is ^]\r\n")
    real.vm_prints(b"now-only")
    fresh.expect(b"now-only")
    assert b"login: " not in fresh.output
    fresh.type(b"\x1d")
    fresh.expect(b"vspc db01>")
    fresh.type(b"quit\r")
    assert fresh.wait() == ExitCode.OK


def test_vspc_shell_in_a_terminal_survives_a_daemon_restart(
    real: RealDaemon, spawn: Callable[..., PtyClient]
) -> None:
    """The same through the real entry point: `vspc shell` on a pty."""
    shell = spawn("shell")
    shell.expect(b"vspc>")
    shell.type(b"list\r")
    shell.expect(b"db01 ")
    real.restart()
    mark = len(shell.output)
    shell.type(b"show db01\r")
    shell.expect(b"no clients attached")
    assert b"shutting_down" not in shell.output[mark:]
    shell.type(b"quit\r")
    assert shell.wait() == ExitCode.OK
