"""`vspc` output is safe against hostile VM names (docs/vspc.md, "Output is safe to print").

Two VMs connect to a real vspcd the way a hostile guest can: one named
``evil\\nFAKE-ROW ...`` (a forged table row) and one whose name carries ESC/OSC
sequences (clear the screen, retitle the window).  `vspc list`, `show`, `events`,
error messages and the shell's completion menu must print them as inert visible text:
one row each, no ESC byte anywhere; `--json` must keep them exact.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completion
from prompt_toolkit.document import Document

from tests.vspcd.harness import FakeEsxi, identified
from tests.vspctui.realdaemon import TIMEOUT, RealDaemon
from vspc.common.display import safe
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.cmdtable import Context, ExitCode, run_command
from vspc.vspctui.formatting import LIST_HEADERS
from vspc.vspctui.shell.commands import commands
from vspc.vspctui.shell.shell import Shell, ShellCompleter

FORGER = "evil\nFAKE-ROW 1 up 0 - normal - x"
FORGER_UUID = "00000000000000000000000000000bad"
ESCAPER = "esc\x1b[2J\x1b]0;pwned\x07\x9b31m"
ESCAPER_UUID = "00000000000000000000000000000e5c"


def connect_evil_vms(real: RealDaemon) -> list[FakeEsxi]:
    """The two hostile VMs, connected and identified (stopped with the daemon)."""
    vms: list[FakeEsxi] = []

    async def connect() -> None:
        assert real.daemon.proxy_port is not None
        for uuid, name in ((FORGER_UUID, FORGER), (ESCAPER_UUID, ESCAPER)):
            vm = await FakeEsxi.connect(real.daemon.proxy_port, uuid, name)
            await identified(real.events, uuid)
            vm.send(b"hello\r\n")  # the name is settled once data follows VM-NAME
            vms.append(vm)

    real.call(connect)
    return vms


def test_list_show_and_errors_print_hostile_names_inert(real: RealDaemon, capsys: Any) -> None:
    vms = connect_evil_vms(real)  # held: asyncio keeps only weak references to tasks
    assert real.cli("list", "--json") == ExitCode.OK
    names = {row["name"] for row in json.loads(capsys.readouterr().out)["vms"]}
    assert {FORGER, ESCAPER} <= names  # --json stays exact

    assert real.cli("list") == ExitCode.OK
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert tuple(lines[0].split()) == LIST_HEADERS
    assert len(lines) == 1 + 3  # db01 and the two VMs: no forged row
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert any(line.startswith(safe(FORGER)) for line in lines)
    assert any(line.startswith("esc\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m") for line in lines)

    for uuid, name in ((FORGER_UUID, FORGER), (ESCAPER_UUID, ESCAPER)):
        assert real.cli("show", uuid) == ExitCode.OK
        shown = capsys.readouterr().out
        assert "\x1b" not in shown and "FAKE-ROW" not in shown.replace(safe(FORGER), "")
        assert ["name:", safe(name)] in [line.split(None, 1) for line in shown.splitlines()]

    # An error message quoting a hostile selector: inert on stderr too.
    assert real.cli("show", ESCAPER + "-nope") == ExitCode.NOT_FOUND
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b" in err and err.count("\n") == 1
    assert len(vms) == 2


class Recorder:
    """A text stream that wakes a waiter when a wanted text has been written."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = asyncio.Event()

    def write(self, text: str) -> int:
        self.text += text
        self._changed.set()
        return len(text)

    def flush(self) -> None:
        pass

    async def expect(self, wanted: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while wanted not in self.text:
                self._changed.clear()
                await self._changed.wait()


def test_events_print_hostile_names_inert(real: RealDaemon) -> None:
    out = Recorder()

    async def run() -> None:
        ctx = Context(AdminAddress(path=real.path), out_stream=out)  # type: ignore[arg-type]
        command = commands.get("events")
        assert command is not None
        namespace = command.parser().parse_args([])
        client = await ctx.client()  # opened first, so the command uses this connection
        task = asyncio.create_task(run_command(ctx, command, namespace))
        # One loop turn runs the task's first step, which writes `subscribe` (call_soon
        # is FIFO); vspcd answers requests of a connection in order, so once `list` is
        # answered the subscription is in place and no event of the VMs can be missed.
        await asyncio.sleep(0)
        await client.request("list")
        vms = await asyncio.to_thread(connect_evil_vms, real)
        await out.expect(safe(ESCAPER))
        await out.expect(safe(FORGER))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ctx.close()
        assert len(vms) == 2

    asyncio.run(run())
    assert "\x1b" not in out.text and "\x07" not in out.text
    for line in out.text.splitlines():
        assert line[:2].isdigit()  # every line is an event line: HH:MM:SS ...


def test_shell_completion_menu_shows_hostile_names_inert(real: RealDaemon) -> None:
    """Tab completion inserts the real name (it must select the console) but the
    menu shows it safe."""
    vms = connect_evil_vms(real)
    ctx = Context(AdminAddress(path=real.path), in_shell=True)
    shell = Shell(ctx, commands)

    async def run() -> list[Completion]:
        try:
            await shell.refresh()
        finally:
            await ctx.close()
        document = Document("show es")
        return list(ShellCompleter(shell).get_completions(document, CompleteEvent()))

    (completion,) = asyncio.run(run())
    assert completion.text == ESCAPER
    assert completion.display_text == safe(ESCAPER) and "\x1b" not in completion.display_text
    assert len(vms) == 2
