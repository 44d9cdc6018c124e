"""`vspc shell`: a prompt_toolkit REPL over the same command table as the CLI.

Boundary: reads lines with one `PromptSession` (`prompt_async` in a loop, inside
`patch_stdout()`), parses them with `CommandTable.parse_line` (vspctui/cmdtable.py)
and runs the handler against one shared admin connection.  Completion comes from the
table (command names, options, lock modes) and from the daemon (console names, ports,
client ids, refreshed before each prompt).  Ctrl-C at the prompt clears the line;
Ctrl-C while a command runs (`tail -f`, `events`) stops that command; Ctrl-D or
`quit` leaves.

Spec: docs/vspc.md, "The shell"; docs/development.md "Shell: a command table".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Iterator

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.patch_stdout import patch_stdout

from vspc.common.admin import AdminError, LockMode
from vspc.common.display import safe
from vspc.vspctui.client import ClientError
from vspc.vspctui.cmdtable import (
    ArgKind,
    CommandTable,
    Context,
    ExitCode,
    UsageError,
    run_command,
)

__all__ = ["Shell", "ShellCompleter", "repl", "run_shell"]

PROMPT = "vspc> "


class Shell:
    """State of one shell session: the context, the table and completion data."""

    def __init__(self, ctx: Context, table: CommandTable) -> None:
        self.ctx = ctx
        self.table = table
        self.consoles: list[str] = []  # names and keys, for completion
        self.ports: list[str] = []
        self.clients: list[str] = []
        self.status: int = ExitCode.OK  # of the last command

    async def refresh(self) -> None:
        """Reload completion data from the daemon; best effort, never an error."""
        try:
            client = await self.ctx.client()
            consoles = await client.list_consoles()
        except (AdminError, ClientError):
            await self.ctx.reset_if_lost()
            return
        self.consoles = sorted({c.name for c in consoles})
        self.ports = sorted({str(c.port) for c in consoles if c.port is not None}, key=int)
        self.clients = sorted({str(a.id) for c in consoles for a in c.attached}, key=int)

    async def run_line(self, line: str) -> None:
        """Parse and run one line; errors are reported, never raised.

        Raises:
            EOFError: the line was `quit`/`exit`.
        """
        try:
            parsed = self.table.parse_line(line)
        except UsageError as exc:
            exc.report(self.ctx)
            self.status = ExitCode.USAGE
            return
        if parsed is None:
            return
        command, namespace = parsed
        task = asyncio.create_task(run_command(self.ctx, command, namespace))
        loop = asyncio.get_running_loop()
        # Ctrl-C while a command runs stops that command, not the shell.
        sigint = False
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
            sigint = True
        try:
            self.status = await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            self.ctx.err.write("interrupted\n")
            self.status = ExitCode.INTERRUPTED
        finally:
            if sigint:
                loop.remove_signal_handler(signal.SIGINT)
            await self.ctx.reset_if_lost()

    def values_for(self, kind: ArgKind) -> list[str]:
        """Completion candidates for an argument of `kind`."""
        match kind:
            case ArgKind.VM:
                return self.consoles
            case ArgKind.TARGET:
                return self.consoles + self.ports
            case ArgKind.CLIENT:
                return self.clients
            case ArgKind.LOCK:
                return [mode.value for mode in LockMode]
            case ArgKind.COMMAND:
                return self.table.names(shell=True)
            case ArgKind.KEY:
                return ["^]", "none"]
        return []


class ShellCompleter(Completer):
    """Completes command names, then each command's options and argument values."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1:].isspace() else words[-1]
        done = words if not current else words[:-1]
        yield from _matching(self._candidates(done, current), current)

    def _candidates(self, done: list[str], current: str) -> Iterable[str]:
        table = self.shell.table
        if not done:
            return table.names(shell=True)
        found = table.matching(done[0])
        if len(found) != 1:
            return []
        command = found[0]
        previous = done[-1] if len(done) > 1 else ""
        option = command.arg_for_option(previous) if previous.startswith("-") else None
        if option is not None and option.kind is not ArgKind.FLAG:
            return self.shell.values_for(option.kind)
        if current.startswith("-"):
            return command.option_names()
        # Which positional is this?  Count earlier words that are not options/values.
        index, skip = 0, False
        for word in done[1:]:
            if skip:
                skip = False
                continue
            if word.startswith("-"):
                arg = command.arg_for_option(word)
                skip = arg is not None and arg.kind is not ArgKind.FLAG
                continue
            index += 1
        positionals = command.positionals()
        if index < len(positionals):
            return self.shell.values_for(positionals[index].kind)
        return command.option_names()


def _matching(candidates: Iterable[str], current: str) -> Iterator[Completion]:
    for candidate in candidates:
        if candidate.startswith(current):
            # The menu shows console names a VM chose: inert, like every other output.
            yield Completion(candidate, start_position=-len(current), display=safe(candidate))


async def repl(shell: Shell, session: PromptSession[str]) -> None:
    """Read and run lines until EOF (Ctrl-D) or `quit`."""
    with patch_stdout():
        while True:
            await shell.refresh()
            try:
                line = await session.prompt_async(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not line.strip():
                continue
            try:
                await shell.run_line(line)
            except EOFError:
                return


async def run_shell(ctx: Context, table: CommandTable) -> int:
    """The `shell` command, over the commands of `table`."""
    ctx.in_shell = True
    shell = Shell(ctx, table)
    session: PromptSession[str] = PromptSession(
        completer=ShellCompleter(shell), complete_while_typing=True
    )
    ctx.print("vspc shell: 'help' lists commands, Tab completes, Ctrl-D leaves")
    await repl(shell, session)
    return ExitCode.OK
