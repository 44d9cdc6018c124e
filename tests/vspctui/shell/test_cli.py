"""`vspc` end to end against the fake admin server: output, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspc.common.admin import COMMANDS, MAX_REPLAY, ErrorCode, LockMode, encode_bytes, failed
from vspc.common.paths import client_socket as default_socket
from vspc.vspctui.cmdtable import ExitCode, UsageError
from vspc.vspctui.formatting import format_table
from vspc.vspctui.shell.cli import build_parser, main, normalize_argv
from vspc.vspctui.shell.commands import REPLAY_DEFAULT, commands

DB01_KEY = "0123456789abcdeffedcba9800000000"


def run(daemon: Any, *argv: str) -> int:
    return main(["--socket", daemon.path, *argv])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["list"]),
        (["--socket", "/s"], ["--socket", "/s", "list"]),
        (["--socket=/s"], ["--socket=/s", "list"]),
        (["db01"], ["attach", "db01"]),
        (["--socket", "/s", "db01", "--lock", "write"],
         ["--socket", "/s", "attach", "db01", "--lock", "write"]),
        (["--json"], ["list", "--json"]),
        (["ls"], ["ls"]),
        (["tail", "-f", "db01"], ["tail", "-f", "db01"]),
        (["--", "-odd-name"], ["attach", "--", "-odd-name"]),
        (["-h"], ["-h"]),
        (["--socket", "/s", "--version"], ["--socket", "/s", "--version"]),
    ],
)  # fmt: skip
def test_normalize_argv_like_vspcclient(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected


def test_no_arguments_lists_an_aligned_table(daemon: Any, capsys: Any) -> None:
    assert run(daemon) == ExitCode.OK
    daemon.add_telnet_client(DB01_KEY)
    assert run(daemon, "list") == ExitCode.OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "PORT", "VM", "CLIENTS", "LOCK", "VMOTION", "EXPIRES",
                              "UUID"]  # fmt: skip
    header = out[-3]
    assert header == out[0]
    db01, web02 = out[-2], out[-1]
    assert db01.split() == ["db01", "50000", "up", "1", "-", "normal", "-",
                            "01234567-89ab-cdef-fedc-ba9800000000"]  # fmt: skip
    assert web02.split()[:7] == ["web02_console2", "50001", "down", "0", "-", "normal", "1h00m"]
    # Aligned: every column starts at the same offset in every row.
    for column in ("PORT", "VM", "CLIENTS", "UUID"):
        start = header.index(column)
        assert db01[start - 2 : start] == "  " and db01[start] != " "
        assert web02[start - 2 : start] == "  " and web02[start] != " "


def test_list_json_is_the_protocol_reply(daemon: Any, capsys: Any) -> None:
    assert run(daemon, "list", "--json") == ExitCode.OK
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"ok": True, "vms": [c.row() for c in daemon.consoles.values()]}


def test_an_incomplete_cluster_list_says_what_is_missing_and_exits_1(
    daemon: Any, capsys: Any
) -> None:
    # A cluster node answers with its own rows and why the others are not there.
    daemon.list_extra = {"cluster_missing": ["b: timed out"]}
    assert run(daemon, "list") == ExitCode.ERROR
    out, err = capsys.readouterr()
    assert "db01" in out  # what could be listed still is
    missing = "consoles of a node that did not answer are not listed"
    assert err == f"vspc: list: {missing}: b: timed out\n"
    daemon.consoles.clear()
    daemon.list_extra = {"cluster_error": "registry unreachable (read): refused\x1b[2J"}
    assert run(daemon, "list") == ExitCode.ERROR
    out, err = capsys.readouterr()
    assert out == ""  # never "no consoles" when the list could not be read
    assert err == (
        "vspc: list: cluster registry unreadable, only this node's consoles listed: "
        "registry unreachable (read): refused\\x1b[2J\n"
    )
    assert run(daemon, "list", "--json") == ExitCode.ERROR
    assert json.loads(capsys.readouterr().out)["cluster_error"].startswith("registry")
    daemon.list_extra = {}
    assert run(daemon, "list") == ExitCode.OK
    assert capsys.readouterr().out == "no consoles\n"


def test_show_prints_details_and_clients(daemon: Any, capsys: Any) -> None:
    client_id = daemon.add_telnet_client(DB01_KEY, LockMode.WRITE)
    assert run(daemon, "show", "db01") == ExitCode.OK
    out = capsys.readouterr().out
    assert "name:" in out and "db01" in out
    assert "vm:" in out and "connected from 10.0.0.21:41022" in out
    assert "vmotions:" in out
    assert "write(10.0.0.9:51234)" in out
    rows = out.split("\n\n")[-1].splitlines()
    assert rows[0].split() == ["ID", "KIND", "USER", "PEER", "MODE", "WRITE", "SINCE"]
    assert rows[1].split()[:6] == [str(client_id), "telnet", "-", "10.0.0.9:51234",
                                   "write", "yes"]  # fmt: skip


def test_show_json(daemon: Any, capsys: Any) -> None:
    assert run(daemon, "show", "--json", "web02_console2") == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["console"]["label"] == "console2"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["show", "nosuch"], ExitCode.NOT_FOUND),
        (["nosuch"], ExitCode.NOT_FOUND),  # `vspc VM` attaches
        (["kick", "99"], ExitCode.NOT_FOUND),
        (["clear", "nosuch"], ExitCode.NOT_FOUND),
        (["tail", "nosuch"], ExitCode.NOT_FOUND),
    ],
)
def test_refusals_go_to_stderr_with_their_exit_code(
    daemon: Any, capsys: Any, argv: list[str], code: ExitCode
) -> None:
    assert run(daemon, *argv) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vspc: ")
    assert "[vm_not_found]" in captured.err or "[not_attached]" in captured.err


def test_lock_refusal_exit_code(daemon: Any, capsys: Any) -> None:
    daemon.add_telnet_client(DB01_KEY, LockMode.EXCLUSIVE)
    assert run(daemon, "attach", "db01") == ExitCode.REFUSED
    assert "[lock_failed]" in capsys.readouterr().err


def test_cannot_connect(tmp_path: Any, capsys: Any) -> None:
    assert main(["--socket", str(tmp_path / "none.sock"), "list"]) == ExitCode.NO_DAEMON
    assert "cannot connect to vspcd" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["show"], ["attach", "db01", "--lock", "mine"], ["kick", "x"], ["tail", "db01", "-n", "-1"],
     ["--tcp", "nohost", "list"], ["--socket", "a", "--tcp", "b:1", "list"],
     ["attach", "db01", "--escape", "^^^"]],
)  # fmt: skip
def test_usage_errors_exit_2(daemon: Any, capsys: Any, argv: list[str]) -> None:
    status = main(argv) if argv[0] == "--tcp" else run(daemon, *argv)
    assert status == ExitCode.USAGE
    assert capsys.readouterr().err


def test_help_exits_0_on_stdout(capsys: Any) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out
    for command in commands:
        if command.cli:
            assert command.name in out


def test_clear_by_name_and_by_port(daemon: Any, capsys: Any) -> None:
    daemon.add_telnet_client(DB01_KEY)
    assert run(daemon, "clear", "db01", "--reason", "maintenance") == ExitCode.OK
    assert run(daemon, "clear", "50001") == ExitCode.OK
    assert capsys.readouterr().out.splitlines() == [
        "cleared 1 client(s) of db01",
        "cleared 0 client(s) of web02_console2",
    ]
    sent = [r for r in daemon.requests if r["cmd"] == "clear"]
    assert sent == [
        {"cmd": "clear", "id": 1, "vm": "db01", "reason": "maintenance"},
        {"cmd": "clear", "id": 1, "port": 50001},
    ]


def test_kick(daemon: Any, capsys: Any) -> None:
    client_id = daemon.add_telnet_client(DB01_KEY)
    assert run(daemon, "kick", str(client_id), "--reason", "idle") == ExitCode.OK
    assert capsys.readouterr().out == f"kicked client {client_id} from db01\n"


def test_tail_writes_raw_bytes(daemon: Any, capsysbinary: Any) -> None:
    daemon.output(DB01_KEY, b"\x1b[1mroot\xff\r\n")
    assert run(daemon, "tail", "db01", "-n", "11") == ExitCode.OK
    assert capsysbinary.readouterr().out == b"\x1b[1mroot\xff\r\n"


def test_tail_follow_until_tail_end(daemon: Any, capsysbinary: Any) -> None:
    name = {"key": DB01_KEY, "name": "db01"}
    daemon.push_after["tail"] = [
        {"event": "output", **name, "data_b64": encode_bytes(b"one\r\n")},
        {"event": "output", "key": "other", "name": "x", "data_b64": encode_bytes(b"x")},
        {"event": "lock_changed", **name, "lock": None, "holder": None},
        {"event": "output", **name, "data_b64": encode_bytes(b"two\r\n")},
        {"event": "tail_end", **name, "reason": "expired"},
    ]
    assert run(daemon, "tail", "-f", "-n", "0", "db01") == ExitCode.OK
    captured = capsysbinary.readouterr()
    assert captured.out == b"one\r\ntwo\r\n"
    assert b"expired" in captured.err


def test_events_json_until_the_daemon_closes(daemon: Any, capsys: Any) -> None:
    event = {"event": "vm_expired", "key": DB01_KEY, "name": "db01", "port": 50000}
    daemon.push_after["subscribe"] = [event]
    daemon.close_after["subscribe"] = failed(ErrorCode.SHUTTING_DOWN, "vspcd is stopping")
    assert run(daemon, "events", "--json") == ExitCode.ERROR
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == [event]
    assert "vspcd is stopping [shutting_down]" in captured.err


def test_events_human_readable(daemon: Any, capsys: Any) -> None:
    daemon.push_after["subscribe"] = [
        {"event": "lock_changed", "key": DB01_KEY, "name": "db01", "lock": "write", "holder": 3}
    ]
    daemon.close_after["subscribe"] = failed(ErrorCode.SHUTTING_DOWN, "bye")
    run(daemon, "events")
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[1:] == ["lock_changed", "db01", 'lock="write"', "holder=3"]


def test_version(daemon: Any, capsys: Any) -> None:
    assert run(daemon, "version") == ExitCode.OK
    out = capsys.readouterr().out
    assert "vspcd 0.0-fake, protocol 1" in out
    assert "access: full (as alice)" in out


def test_help_command(daemon: Any, capsys: Any) -> None:
    assert run(daemon, "help") == ExitCode.OK
    assert "attach VM" in capsys.readouterr().out
    assert run(daemon, "help", "attach") == ExitCode.OK
    assert "--lock" in capsys.readouterr().out


def test_default_socket(tmp_path: Any) -> None:
    system = Path("/run/vspcd/vspcd.sock")
    assert default_socket({"VSPC_SOCKET": "/x.sock"}, 1000) == Path("/x.sock")
    assert default_socket({"XDG_RUNTIME_DIR": str(tmp_path)}, 0) == system
    # A per-user daemon's socket is used only when it exists (and no system one does).
    assert default_socket({"XDG_RUNTIME_DIR": str(tmp_path)}, 1000) == system
    (tmp_path / "vspcd.sock").touch()
    if not system.exists():
        assert default_socket({"XDG_RUNTIME_DIR": str(tmp_path)}, 1000) == (tmp_path / "vspcd.sock")


def test_format_table_has_no_trailing_blanks() -> None:
    text = format_table(("A", "LONGER"), [("xx", ""), ("y", "z")])
    assert text.splitlines() == ["A   LONGER", "xx", "y   z"]


def test_protocol_arguments_come_from_the_protocol_table() -> None:
    """Help, defaults and bounds of request fields are the protocol's;
    only attach's replay default differs on purpose (docs/vspc-tui.md, "Attaching")."""

    def field(cmd: str, name: str) -> Any:
        return next(f for f in COMMANDS[cmd].fields if f.name == name)

    def option(cmd: str, dest: str) -> Any:
        command = commands.get(cmd)
        assert command is not None
        return next(a for a in command.parser()._actions if a.dest == dest)

    tail_bytes = option("tail", "bytes")
    assert tail_bytes.default == field("tail", "bytes").default == 4096
    assert tail_bytes.help.startswith(field("tail", "bytes").help)
    assert option("attach", "replay").default == REPLAY_DEFAULT == 4096
    assert option("proxy", "replay").default == field("attach", "replay").default == 0
    for cmd in ("show", "attach", "tail", "proxy"):
        assert option(cmd, "vm").help == field("show", "vm").help
    assert option("clear", "reason").help == field("clear", "reason").help
    assert option("attach", "lock").choices == [mode.value for mode in LockMode]
    assert field("attach", "lock").help in option("attach", "lock").help
    # The protocol's bound is checked before anything is sent.
    command = commands.get("tail")
    assert command is not None
    with pytest.raises(UsageError, match=f"at most {MAX_REPLAY}"):
        command.parser().parse_args(["db01", "-n", str(MAX_REPLAY + 1)])


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["--socket", "--tcp", "list", "attach", "proxy", "-h", "--json",
                             "db01", "--", "--replay", "-1", "--lock", "write", "tail", "-n"]),
            st.text(max_size=8),
        ),
        max_size=6,
    )
)  # fmt: skip
def test_any_command_line_parses_or_is_a_usage_error(words: list[str]) -> None:
    """argparse never exits the process and nothing but UsageError escapes (the shell
    relies on it; docs/development.md: library code never exits)."""
    normalized = normalize_argv(words)
    assert [w for w in normalized if w not in ("list", "attach")] == [
        w for w in words if w not in ("list", "attach")
    ]
    try:
        namespace = build_parser().parse_args(normalized)
    except UsageError:
        return
    assert commands.get(namespace.command) is not None
