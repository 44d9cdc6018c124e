"""`vspc who [VM]` and `vspc break VM`, and `break` from the attach escape menu, through
the real `vspc` against a real vspcd with a fake ESXi VM (docs/vspc.md,
docs/admin-protocol.md "who" and "break"; tests/vspctui/realdaemon.py).

A break reaches the fake VM as telnet `IAC BRK` (RFC 854), which its ESXi session
decodes as `SerialBreak`; every attached client is told who sent it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.vspctui.ptyclient import PtyClient
from tests.vspctui.realdaemon import ME, RealDaemon, attached_id, protocol
from vspc.common.esxi import SerialBreak
from vspc.vspctui.cmdtable import ExitCode
from vspc.vspctui.shell.commands import WHO_HEADERS


def vm_got_a_break(real: RealDaemon) -> None:
    event = real.call(lambda: real.vm.wait_for(SerialBreak))
    assert isinstance(event, SerialBreak)


def test_who_lists_telnet_and_attach_clients(
    real: RealDaemon, spawn: Callable[..., PtyClient], capsys: Any
) -> None:
    assert real.cli("who") == ExitCode.OK
    assert capsys.readouterr().out == "nobody is attached\n"
    op = real.telnet()
    vspc = spawn("attach", "db01", "--lock", "write")
    vspc.expect(b"escape key is ^]\r\n")
    ident = attached_id(real, "attach")

    assert real.cli("who") == ExitCode.OK
    header, *rows = capsys.readouterr().out.splitlines()
    assert tuple(header.split()) == WHO_HEADERS
    assert len(rows) == 2 and all(row.split()[0] == "db01" for row in rows)
    mine = next(row for row in rows if row.split()[1] == str(ident))
    assert ME in mine and "write (lock)" in mine
    theirs = next(row for row in rows if row is not mine)
    assert "127.0.0.1:" in theirs and "(lock)" not in theirs

    assert real.cli("who", "db01", "--json") == ExitCode.OK
    printed = json.loads(capsys.readouterr().out)
    reply = protocol(real.path, {"cmd": "who", "id": 7, "vm": "db01"})
    assert reply.pop("id") == 7
    assert printed == reply
    kinds = sorted((r["kind"], r["lock"]) for r in printed["clients"])
    assert kinds == [("attach", True), ("telnet", False)]

    assert real.cli("who", "nosuch") == ExitCode.NOT_FOUND
    assert "no console matches 'nosuch'" in capsys.readouterr().err
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    real.call(op.close)


def test_break_reaches_the_vm_and_attached_clients_are_told(
    real: RealDaemon, spawn: Callable[..., PtyClient], capsys: Any
) -> None:
    vspc = spawn("attach", "db01")
    vspc.expect(b"escape key is ^]\r\n")
    attached_id(real, "attach")
    assert real.cli("break", "db01") == ExitCode.OK
    assert capsys.readouterr().out == "break sent to db01\n"
    vm_got_a_break(real)
    vspc.expect(f"[vspcd: break sent by {ME}]".encode())
    assert real.vm_input_settled() == b""  # a break, not a byte of input

    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()

    assert real.cli("break", "nosuch") == ExitCode.NOT_FOUND
    assert "no console matches 'nosuch'" in capsys.readouterr().err


def test_break_without_a_vm_connection_is_refused(real: RealDaemon, capsys: Any) -> None:
    real.call(real.vm.close)
    real.event("vm_disconnected")
    assert real.cli("break", "db01") == ExitCode.ERROR
    assert capsys.readouterr().err == "vspc: break: db01: VM not connected [vm_not_connected]\n"


def test_break_from_the_escape_menu(real: RealDaemon, spawn: Callable[..., PtyClient]) -> None:
    vspc = spawn("attach", "db01", "--lock", "write")
    vspc.expect(b"escape key is ^]\r\n")
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>")
    vspc.type(b"break\r")
    vm_got_a_break(real)
    # Told like every attached client; the menu is gone, so it shows in the session.
    vspc.expect(f"[vspcd: break sent by {ME}]".encode())
    vspc.type(b"x")
    assert real.vm_received(b"x").endswith(b"x")  # typing goes on after the break
    mark = len(vspc.output)
    vspc.type(b"\x1d")
    vspc.expect(b"vspc db01>", mark)
    vspc.type(b"quit\r")
    assert vspc.wait() == ExitCode.OK
    assert vspc.restored()
