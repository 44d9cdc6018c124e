"""`vspc shell` driven with prompt_toolkit pipe input against the fake admin server."""

from __future__ import annotations

import asyncio
from io import StringIO
from typing import Any

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from vspc.vspctui.client import AdminAddress
from vspc.vspctui.cmdtable import Context, ExitCode
from vspc.vspctui.shell.commands import commands
from vspc.vspctui.shell.shell import Shell, ShellCompleter, repl

DB01_KEY = "0123456789abcdeffedcba9800000000"


def make_shell(path: str) -> tuple[Shell, StringIO, StringIO]:
    out, err = StringIO(), StringIO()
    ctx = Context(AdminAddress(path=path), out_stream=out, err_stream=err, in_shell=True)
    return Shell(ctx, commands), out, err


def drive(shell: Shell, text: str) -> None:
    async def run() -> None:
        with create_pipe_input() as pipe:
            pipe.send_text(text)
            pipe.close()  # EOF ends the REPL once the lines are used up
            try:
                await repl(shell, PromptSession(input=pipe, output=DummyOutput()))
            finally:
                await shell.ctx.close()

    asyncio.run(run())


def test_shell_runs_typed_commands_and_reports_errors(daemon: Any) -> None:
    shell, out, err = make_shell(daemon.path)
    drive(shell, "ls\nbogus\nshow nosuch\nkick 99\nclear db01 --reason 'back soon'\n")
    assert out.getvalue().splitlines()[0].split()[:3] == ["NAME", "PORT", "VM"]
    assert "cleared 0 client(s) of db01" in out.getvalue()
    assert err.getvalue().splitlines() == [
        "unknown command: bogus (try 'help')",
        "vspc: show: no console matches 'nosuch' [vm_not_found]",
        "vspc: kick: no client with id 99 [not_attached]",
    ]
    clear = [r for r in daemon.requests if r["cmd"] == "clear"]
    assert clear[0]["reason"] == "back soon"  # shell quoting, via shlex


def test_quit_stops_the_shell(daemon: Any) -> None:
    shell, out, _ = make_shell(daemon.path)
    drive(shell, "quit\nshow db01\n")
    assert not [r for r in daemon.requests if r["cmd"] == "show"]


def test_usage_errors_and_help_do_not_stop_the_shell(daemon: Any) -> None:
    shell, out, err = make_shell(daemon.path)
    drive(shell, "attach\nhelp attach\nhelp\nshell\nshow db01\n")
    assert "attach: error: the following arguments are required: vm" in err.getvalue()
    assert "--lock MODE" in out.getvalue()
    assert "quit" in out.getvalue()  # shell-only commands are in the shell's help
    assert "unknown command: shell (try 'help')" in err.getvalue()  # CLI-only command
    assert "name:" in out.getvalue()  # the last line still ran
    assert shell.status == ExitCode.OK


def test_shell_survives_a_missing_daemon(tmp_path: Any) -> None:
    shell, _, err = make_shell(str(tmp_path / "none.sock"))
    drive(shell, "ls\nls\n")
    assert err.getvalue().count("cannot connect to vspcd") == 2
    assert shell.status == ExitCode.NO_DAEMON


def completions(shell: Shell, text: str) -> list[str]:
    completer = ShellCompleter(shell)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


@pytest.fixture
def refreshed(daemon: Any) -> Shell:
    daemon.add_telnet_client(DB01_KEY)
    shell, _, _ = make_shell(daemon.path)

    async def run() -> None:
        try:
            await shell.refresh()
        finally:
            await shell.ctx.close()

    asyncio.run(run())
    return shell


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),  # every shell command
        ("sh", ["show"]),
        ("q", ["quit"]),
        ("attach ", ["db01", "web02_console2"]),
        ("attach w", ["web02_console2"]),
        ("attach db01 --l", ["--lock"]),
        ("attach db01 --lock ", ["exclusive", "write", "free_for_all", "free_for_all_or_readonly"]),
        ("attach db01 --lock free", ["free_for_all", "free_for_all_or_readonly"]),
        ("attach --lock write d", ["db01"]),
        ("att --lock write d", ["db01"]),  # after a unique prefix of the command
        ("s d", []),  # after an ambiguous one (show, stats)
        ("clear ", ["db01", "web02_console2", "50000", "50001"]),
        ("kick ", ["11"]),
        ("tail db01 -", ["-n", "--bytes", "-f", "--follow"]),
        ("help at", ["attach"]),
        ("nosuch ", []),
    ],
)
def test_completion_from_the_table_and_the_daemon(
    refreshed: Shell, text: str, expected: list[str] | None
) -> None:
    got = completions(refreshed, text)
    if expected is None:
        assert "attach" in got and "quit" in got and "shell" not in got
    else:
        assert got == expected


def test_unique_prefixes_name_commands_like_the_escape_menu(daemon: Any) -> None:
    """`sh db01` is `show db01`; `l` is `list` (and its alias `ls`); an ambiguous
    prefix names the candidates and runs nothing."""
    shell, out, err = make_shell(daemon.path)
    drive(shell, "sh db01\nl\ns db01\nver\n")
    assert [r.get("vm") for r in daemon.requests if r["cmd"] == "show"] == ["db01"]
    lines = out.getvalue().splitlines()
    assert any(line.split()[:3] == ["NAME", "PORT", "VM"] for line in lines)  # `l` listed
    assert lines[-1].startswith("access: ")  # `ver` ran version last
    assert err.getvalue().splitlines() == ["ambiguous command: s (could be show, stats)"]
    assert shell.status == ExitCode.OK
