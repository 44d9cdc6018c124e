"""The command framework of `vspc`: one table drives argparse, the shell, help and
completion (docs/development.md "Shell: a command table"; docs/vspc.md).

Boundary: a command is an async handler registered with `CommandTable.register(...)`
together with its arguments (`Arg`).  The table builds the argparse subcommands of
`vspc` (vspctui/shell/cli.py), parses shell lines with the very same parsers (never exiting
the process: errors raise `UsageError`), renders `help`, and tells the shell's completer
which argument wants a console name, a lock mode or a client id.  Handlers talk to
vspcd through `Context.client()` (vspctui/client.py) and print to `Context.out`.

Arguments that are fields of an admin request are derived from the protocol's own table
(`vspc.common.admin.COMMANDS`) with `protocol_arg`, so their help, default and bounds
are written once (docs/admin-protocol.md).

The handlers themselves are in vspctui/shell/commands.py; this module imports none of them,
so attach.py and shell.py can use the framework without an import cycle.

Exit codes (`ExitCode`) are documented in docs/vspc.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import IO, Any, NoReturn, TextIO, TypeVar

from vspc.common.admin import COMMANDS, AdminError, ErrorCode, FieldKind, LockMode
from vspc.common.display import safe
from vspc.vspctui.client import AdminAddress, AdminClient, ClientError, ConnectError
from vspc.vspctui.options import add_address_options, address_from

__all__ = [
    "Arg",
    "ArgKind",
    "Command",
    "CommandTable",
    "Context",
    "ExitCode",
    "NoExitParser",
    "UsageError",
    "client_version",
    "by_prefix",
    "exit_code_for",
    "parse_command_line",
    "protocol_arg",
    "run_command",
]

_T = TypeVar("_T")


def by_prefix(word: str, entries: Mapping[str, _T]) -> list[_T]:
    """What `word` names in `entries`: the entry it spells exactly, else every entry
    with a name it begins (an entry under several names counts once).  One entry
    found means `word` is unambiguous; the shell and the escape menu of `vspc attach`
    both accept such abbreviations ("any unique prefix works", docs/vspc.md)."""
    if word in entries:
        return [entries[word]]
    found: list[_T] = []
    for name, entry in entries.items():
        if name.startswith(word) and not any(entry is seen for seen in found):
            found.append(entry)
    return found


class ExitCode(IntEnum):
    """What `vspc` returns (docs/vspc.md, "Exit codes")."""

    OK = 0
    ERROR = 1  # the daemon refused for another reason, or a local failure
    USAGE = 2  # bad command line
    NO_DAEMON = 3  # cannot connect to vspcd
    NOT_FOUND = 4  # vm_not_found, ambiguous_vm, not_attached
    REFUSED = 5  # lock_failed, client_limit
    DENIED = 6  # permission_denied
    PROTOCOL = 7  # vspcd broke the protocol or dropped the connection
    DETACHED = 8  # an attach session was ended by vspcd (clear, kick, shutdown)
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


_CODE_EXITS = {
    ErrorCode.VM_NOT_FOUND: ExitCode.NOT_FOUND,
    ErrorCode.AMBIGUOUS_VM: ExitCode.NOT_FOUND,
    ErrorCode.NOT_ATTACHED: ExitCode.NOT_FOUND,
    ErrorCode.LOCK_FAILED: ExitCode.REFUSED,
    ErrorCode.CLIENT_LIMIT: ExitCode.REFUSED,
    ErrorCode.PERMISSION_DENIED: ExitCode.DENIED,
}


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code a failure maps to."""
    if isinstance(exc, AdminError):
        return _CODE_EXITS.get(exc.code, ExitCode.ERROR)
    if isinstance(exc, ConnectError):
        return ExitCode.NO_DAEMON
    if isinstance(exc, ClientError):
        return ExitCode.PROTOCOL
    if isinstance(exc, UsageError):
        return ExitCode.USAGE
    return ExitCode.ERROR


class UsageError(Exception):
    """A command line (or shell line) does not parse; the message says why.

    `status` is set when argparse wanted to exit normally (after printing `--help`).
    """

    def __init__(self, message: str, status: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.status = status

    def report(self, ctx: Context) -> int:
        """Show it: help (status 0) on `ctx`'s output, anything else on `ctx.err`.
        Returns the exit status."""
        if self.status == 0:
            ctx.print(str(self).rstrip())
            return ExitCode.OK
        ctx.err.write(f"{self}\n")
        return self.status


def parse_command_line(
    prog: str, parser: argparse.ArgumentParser, args: Sequence[str]
) -> tuple[argparse.Namespace, AdminAddress] | int:
    """The parsed `args` of a client program and the daemon address they name, or the
    exit status after saying on stderr what is wrong (`--help` and `--version` print
    themselves and give 0).  `parser` must be a `NoExitParser` with the address options
    (vspctui/options.py); the address is found as docs/vspc.md, "Which daemon" says."""
    try:
        namespace = parser.parse_args(list(args))
    except UsageError as exc:
        if exc.status != 0:
            sys.stderr.write(f"{exc}\n")
        elif str(exc):
            sys.stdout.write(str(exc))
        return exc.status
    try:
        address = address_from(namespace, os.environ, os.geteuid())
    except ValueError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return ExitCode.USAGE
    return namespace, address


class NoExitParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of calling sys.exit (docs/development.md: library
    code never exits; the shell must survive a typo)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage()}{self.prog}: error: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or "", status)


class ArgKind(Enum):
    """What an argument holds; the shell's completer offers values by kind."""

    VM = "vm"  # a console selector
    TARGET = "target"  # a console selector or a telnet port number
    CLIENT = "client"  # a client id
    LOCK = "lock"  # a LockMode
    INT = "int"
    TEXT = "text"
    FLAG = "flag"
    KEY = "key"  # an escape key like ^]
    COMMAND = "command"  # a command name (help)


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: positional if `names` is a bare word, else an option."""

    names: tuple[str, ...]
    help: str
    kind: ArgKind = ArgKind.TEXT
    default: Any = None
    metavar: str | None = None
    optional: bool = False  # a positional that may be left out (nargs="?")
    many: bool = False  # a positional taking any number of words (nargs="*")
    maximum: int | None = None  # for INT: the protocol's bound, checked before sending

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        match self.kind:
            case ArgKind.FLAG:
                kwargs["action"] = "store_true"
            case ArgKind.LOCK:
                kwargs["choices"] = [mode.value for mode in LockMode]
                kwargs["metavar"] = self.metavar or "MODE"
            case ArgKind.INT | ArgKind.CLIENT:
                kwargs["type"] = _bounded_int(self.maximum)
        if self.kind is not ArgKind.FLAG and self.metavar and "metavar" not in kwargs:
            kwargs["metavar"] = self.metavar
        if not self.positional or self.optional:
            kwargs["default"] = self.default
        if self.positional and self.many:
            kwargs["nargs"] = "*"
            kwargs["default"] = []
        elif self.positional and self.optional:
            kwargs["nargs"] = "?"
        parser.add_argument(*self.names, **kwargs)


def _bounded_int(maximum: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
        value = int(text)
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"at most {maximum}, not {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


_UNSET: Any = object()


def protocol_arg(
    cmd: str,
    name: str,
    *names: str,
    kind: ArgKind | None = None,
    help: str | None = None,
    default: Any = _UNSET,
    metavar: str | None = None,
) -> Arg:
    """The `Arg` for field `name` of admin command `cmd`, from `COMMANDS`.

    Help, default and upper bound come from the protocol's `FieldSpec`; `names` (default:
    the bare field name when required, else ``--name``), `kind` (default: from the field's
    JSON type), `help` (a wording for people at a terminal, when the protocol's reads
    wrong there) and `default` (when the CLI deliberately differs, e.g. attach's replay)
    may be given.  The help says the default the command line will use.

    Raises:
        KeyError: no such command or field (a programming error, caught by the tests).
    """
    spec = next(f for f in COMMANDS[cmd].fields if f.name == name)
    if kind is None:
        kind = {
            FieldKind.BOOL: ArgKind.FLAG,
            FieldKind.INT: ArgKind.INT,
            FieldKind.ENUM: ArgKind.LOCK if spec.choices is LockMode else ArgKind.TEXT,
        }.get(spec.kind, ArgKind.VM if name == "vm" else ArgKind.TEXT)
    value = spec.default if default is _UNSET else default
    text = help or spec.help
    if value is not None and kind is not ArgKind.FLAG:
        text += f" (default {value})"
    return Arg(
        names or ((name,) if spec.required else (f"--{name}",)),
        text,
        kind,
        value,
        metavar,
        maximum=spec.maximum,
    )


Handler = Callable[["Context", argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Command:
    """A registered command."""

    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler
    aliases: tuple[str, ...] = ()
    cli: bool = True  # a `vspc NAME` subcommand
    shell: bool = True  # available in `vspc shell`

    def parser(self, prog: str = "") -> NoExitParser:
        parser = NoExitParser(prog=prog or self.name, description=self.help, add_help=True)
        for arg in self.args:
            arg.add_to(parser)
        return parser

    def option_names(self) -> list[str]:
        return [name for arg in self.args if not arg.positional for name in arg.names]

    def arg_for_option(self, option: str) -> Arg | None:
        return next((a for a in self.args if not a.positional and option in a.names), None)

    def positionals(self) -> list[Arg]:
        return [arg for arg in self.args if arg.positional]


class CommandTable:
    """Registry of commands, in registration order (litecli's special-command table)."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        help: str,
        args: Sequence[Arg] = (),
        aliases: Sequence[str] = (),
        cli: bool = True,
        shell: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Decorator: add `handler` as command `name`."""

        def decorate(handler: Handler) -> Handler:
            if name in self._commands or name in self._aliases:
                raise ValueError(f"command {name!r} registered twice")
            self._commands[name] = Command(
                name, help, tuple(args), handler, tuple(aliases), cli, shell
            )
            for alias in aliases:
                self._aliases[alias] = name
            return handler

        return decorate

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def get(self, name: str) -> Command | None:
        return self._commands.get(self._aliases.get(name, name))

    def matching(self, word: str) -> list[Command]:
        """The shell commands `word` names, exactly or as a prefix of a name or alias."""
        names = {name: self.get(name) for name in self.names(shell=True)}
        return by_prefix(word, {name: c for name, c in names.items() if c is not None})

    def names(self, *, shell: bool = False) -> list[str]:
        """Command names and aliases usable on the CLI (or in the shell)."""
        out: list[str] = []
        for command in self:
            if command.shell if shell else command.cli:
                out += [command.name, *command.aliases]
        return out

    def add_subparsers(self, parser: argparse.ArgumentParser) -> None:
        """Add every CLI command as an argparse subcommand of `parser`."""
        sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=NoExitParser)
        for command in self:
            if not command.cli:
                continue
            child = sub.add_parser(
                command.name, aliases=list(command.aliases), help=command.help,
                description=command.help,
            )  # fmt: skip
            for arg in command.args:
                arg.add_to(child)
            # --socket/--tcp after the command, too (docs/vspc.md, "Which daemon").
            add_address_options(child, suppress=True)

    def parse_line(self, line: str) -> tuple[Command, argparse.Namespace] | None:
        """Parse one shell line; None for a blank line.  The command may be abbreviated
        to any unique prefix of its name or an alias (`sh` for `show`).

        Raises:
            UsageError: bad quoting, unknown or ambiguous command, or bad arguments (`status` 0
                after `-h`, which also puts the help text in the message).
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse line: {exc}") from None
        if not words:
            return None
        found = self.matching(words[0])
        if len(found) > 1:
            could = ", ".join(c.name for c in found)
            raise UsageError(f"ambiguous command: {words[0]} (could be {could})")
        if not found:
            raise UsageError(f"unknown command: {words[0]} (try 'help')")
        command = found[0]
        parser = command.parser()
        try:
            namespace = parser.parse_args(words[1:])
        except UsageError as exc:
            if exc.status == 0:  # -h: argparse printed help to stdout; say it our way
                raise UsageError(parser.format_help(), 0) from None
            raise
        return command, namespace

    def help_text(self, *, shell: bool) -> str:
        rows = []
        for command in self:
            if not (command.shell if shell else command.cli):
                continue
            usage = " ".join([command.name, *(_usage(arg) for arg in command.args)])
            rows.append((usage, command.help))
        width = max(len(usage) for usage, _ in rows)
        return "\n".join(f"  {usage:<{width}}  {text}" for usage, text in rows)


def _usage(arg: Arg) -> str:
    if arg.positional:
        name = (arg.metavar or arg.names[0]).upper()
        if arg.many:
            return f"[{name}...]"
        return f"[{name}]" if arg.optional else name
    name = next((n for n in arg.names if n.startswith("--")), arg.names[0])
    if arg.kind is ArgKind.FLAG:
        return f"[{name}]"
    return f"[{name} {arg.metavar or arg.kind.value.upper()}]"


# ===================================================================== context


@dataclass
class Context:
    """What a handler gets: the daemon's address, a lazy connection, and the streams.

    `out`/`err` default to whatever `sys.stdout`/`sys.stderr` are *when written to*,
    so output goes through prompt_toolkit's `patch_stdout()` inside the shell.
    """

    address: AdminAddress
    out_stream: TextIO | None = None
    err_stream: TextIO | None = None
    in_shell: bool = False
    stdin_fd: int = 0
    stdout_fd: int = 1
    _client: AdminClient | None = field(default=None, repr=False)

    @property
    def out(self) -> TextIO:
        return self.out_stream or sys.stdout

    @property
    def err(self) -> TextIO:
        return self.err_stream or sys.stderr

    async def client(self) -> AdminClient:
        """The shared JSON connection, opened on first use.

        Raises:
            ConnectError: vspcd cannot be reached.
        """
        if self._client is not None and self.in_shell and not self._client.lost:
            # The shell's connection may have sat idle at the prompt while vspcd
            # restarted, and its end may not have been read yet: one cheap round trip
            # finds out before a command is risked on it (docs/vspc.md, "The shell").
            with contextlib.suppress(AdminError, ClientError):
                await self._client.request("hello")
        if self._client is not None and self._client.lost:
            # The daemon went away since the last command (a restart sends
            # shutting_down and closes): open a fresh connection rather than
            # reporting the old one's fate as this command's error.
            await self.close()
        if self._client is None:
            self._client = await AdminClient.connect(self.address)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def reset_if_lost(self) -> None:
        """Drop a connection the daemon closed, so the next command reconnects."""
        if self._client is not None and self._client.lost:
            await self.close()

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def write_bytes(self, data: bytes) -> None:
        """Console bytes to `out`, unchanged when it has a binary buffer."""
        binary: IO[bytes] | None = getattr(self.out, "buffer", None)
        if binary is None:  # a StringIO in tests, or a text-only stream
            self.out.write(data.decode("utf-8", "replace"))
            self.out.flush()
            return
        self.out.flush()
        binary.write(data)
        binary.flush()


def client_version() -> str:
    """This package's version, from its installed metadata."""
    try:
        return importlib.metadata.version("vspc")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "unknown"


async def run_command(ctx: Context, command: Command, ns: argparse.Namespace) -> int:
    """Run one command; daemon refusals and client failures become exit codes,
    reported on `ctx.err`."""
    try:
        return int(await command.handler(ctx, ns))
    except UsageError as exc:
        return exc.report(ctx)
    except AdminError as exc:
        # The daemon's message may quote what a VM chose (a name): render it inert.
        ctx.err.write(f"vspc: {command.name}: {safe(exc.message)} [{safe(exc.code.value)}]\n")
        return exit_code_for(exc)
    except ClientError as exc:
        ctx.err.write(f"vspc: {safe(exc)}\n")
        return exit_code_for(exc)
