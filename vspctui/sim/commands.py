"""vspc-sim's command prompt: one table of commands read from stdin (docs/vspc-sim.md).

"run vMotions ... on demand (e.g. a small stdin command prompt or signals)".  Lines
on stdin are commands; replies go to stderr, so stdout keeps only the report.  The
table (name, arguments, help) drives dispatch, `help` and the unknown-command error.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from vspc.common.display import safe
from vspc.vspctui.sim.fleet import Fleet
from vspc.vspctui.sim.report import summary
from vspc.vspctui.sim.vm import Kind

__all__ = ["COMMANDS", "Command", "run_command"]

Handler = Callable[[Fleet, list[str], TextIO], Awaitable[bool]]  # False: quit


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: str
    help: str
    handler: Handler


async def _vmotion(fleet: Fleet, args: list[str], out: TextIO) -> bool:
    if not args:
        out.write(f"usage: vmotion {{{'|'.join(k.value for k in Kind)}}} [NAME...]\n")
        return True
    try:
        kind = Kind(args[0])
    except ValueError:
        out.write(f"unknown vMotion kind {safe(args[0])}\n")
        return True
    names = set(args[1:])
    vms = [vm for vm in fleet.connected if not names or vm.identity.name in names]
    if names and len(vms) != len(names):
        found = {vm.identity.name for vm in vms}
        out.write(f"no connected VM named {safe(' '.join(sorted(names - found)))}\n")
    outcomes = await fleet.vmotion(kind, vms)
    out.write(f"vmotion {kind.value}: " + _tally(outcomes) + "\n")
    return True


def _tally(outcomes: list[str]) -> str:
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    return ", ".join(f"{n} {o}" for o, n in counts.items()) or "no VM to move"


async def _status(fleet: Fleet, _args: list[str], out: TextIO) -> bool:
    counts = summary(fleet.stats)["counts"]
    out.write(" ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    return True


async def _list(fleet: Fleet, _args: list[str], out: TextIO) -> bool:
    for vm in fleet.vms:
        state = "migrating" if vm.migrating else "up" if vm in fleet.connected else "down"
        ident = vm.identity
        out.write(f"{safe(ident.name)} {ident.uuid} {safe(ident.label) or '-'} {state}\n")
    return True


async def _help(_fleet: Fleet, _args: list[str], out: TextIO) -> bool:
    for command in COMMANDS.values():
        out.write(f"{command.name} {command.args}".ljust(32) + command.help + "\n")
    return True


async def _quit(_fleet: Fleet, _args: list[str], _out: TextIO) -> bool:
    return False


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "vmotion", "KIND [NAME...]", "success|notnow|abort|abandon, all VMs or NAMEs", _vmotion
        ),
        Command("status", "", "counters so far", _status),
        Command("list", "", "the VMs and their state", _list),
        Command("help", "", "this list", _help),
        Command("quit", "", "stop, settle and print the report", _quit),
    )
}


async def run_command(fleet: Fleet, line: str, out: TextIO) -> bool:
    """Run one command line; False once the session should end."""
    try:
        words = shlex.split(line, comments=True)  # `# …` annotates a line, as in a script
    except ValueError as exc:
        out.write(f"{exc}\n")
        return True
    if not words:
        return True
    command = COMMANDS.get(words[0])
    if command is None:
        out.write(f"unknown command {safe(words[0])}; try help\n")
        return True
    return await command.handler(fleet, words[1:], out)


async def read_commands(fleet: Fleet, out: TextIO, reader: asyncio.StreamReader) -> None:
    """Commands from `reader` until `quit` or end of input."""
    while line := await reader.readline():
        if not await run_command(fleet, line.decode(errors="replace"), out):
            return
        out.flush()
