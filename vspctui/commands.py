"""The `vspc` command table: one registry drives argparse, the shell, help and completion.

Boundary: each command is an async handler registered with `@commands.register(...)`
together with its arguments (`Arg`).  `CommandTable` builds the argparse subcommands of
`vspc` (vspctui/cli.py), parses shell lines with the very same parsers (never exiting
the process: errors raise `UsageError`), renders `help`, and tells the shell's completer
which argument wants a console name, a lock mode or a client id.  Handlers talk to
vspcd through `Context.client()` (vspctui/client.py) and print to `Context.out`.

Exit codes (`ExitCode`) are documented in docs/vspc.md; issue #4.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import IO, Any, NoReturn, TextIO

from vspc.common.admin import (
    AdminError,
    ClientInfo,
    ConsoleInfo,
    ErrorCode,
    LockMode,
    encode_message,
)
from vspc.vspctui.client import (
    AdminAddress,
    AdminClient,
    ClientError,
    ConnectError,
    consoles_of,
    parse_reply,
)

__all__ = [
    "Arg",
    "ArgKind",
    "Command",
    "CommandTable",
    "NoExitParser",
    "Context",
    "ExitCode",
    "UsageError",
    "commands",
    "exit_code_for",
    "format_console",
    "format_table",
]


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


class NoExitParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of calling sys.exit (STYLE.md: library
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
                kwargs["type"] = _non_negative_int
        if self.kind is not ArgKind.FLAG and self.metavar and "metavar" not in kwargs:
            kwargs["metavar"] = self.metavar
        if not self.positional or self.optional:
            kwargs["default"] = self.default
        if self.positional and self.optional:
            kwargs["nargs"] = "?"
        parser.add_argument(*self.names, **kwargs)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(text)


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

    def parse_line(self, line: str) -> tuple[Command, argparse.Namespace] | None:
        """Parse one shell line; None for a blank line.

        Raises:
            UsageError: bad quoting, unknown command, or bad arguments (`status` 0
                after `-h`, which also puts the help text in the message).
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse line: {exc}") from None
        if not words:
            return None
        command = self.get(words[0])
        if command is None or not command.shell:
            raise UsageError(f"unknown command: {words[0]} (try 'help')")
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


# ===================================================================== formatting


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]  # fmt: skip
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _who(client: ClientInfo | None) -> str:
    if client is None:
        return "-"
    if client.user:
        return client.user
    return f"uid {client.uid}" if client.uid is not None else client.peer


def _lock(console: ConsoleInfo) -> str:
    if console.lock is None:
        return "-"
    return f"{console.lock.value}({_who(console.lock_holder)})"


LIST_HEADERS = ("NAME", "PORT", "VM", "CLIENTS", "LOCK", "VMOTION", "EXPIRES", "UUID")


def list_rows(consoles: Iterable[ConsoleInfo]) -> list[tuple[str, ...]]:
    return [
        (
            c.name,
            "-" if c.port is None else str(c.port),
            "up" if c.connected else "down",
            str(c.clients),
            _lock(c),
            c.vmotion.value,
            _duration(c.expires_in),
            c.uuid,
        )
        for c in consoles
    ]


CLIENT_HEADERS = ("ID", "KIND", "USER", "PEER", "MODE", "WRITE", "SINCE")


def client_rows(clients: Iterable[ClientInfo]) -> list[tuple[str, ...]]:
    return [
        (
            str(c.id),
            c.kind.value,
            c.user or ("-" if c.uid is None else str(c.uid)),
            c.peer,
            c.mode.value,
            "no" if c.readonly else "yes",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.since)),
        )
        for c in clients
    ]


def format_console(console: ConsoleInfo) -> str:
    """`show` output: key/value lines, counters, then the clients table."""
    pairs = [
        ("name", console.name),
        ("vm name", console.vm_name or "-"),
        ("key", console.key),
        ("uuid", console.uuid),
        ("label", console.label or "-"),
        ("port", "-" if console.port is None else str(console.port)),
        ("vm", f"connected from {console.vm_peer}" if console.connected and console.vm_peer
         else "connected" if console.connected else "disconnected"),
        ("service uri", console.service_uri or "-"),
        ("vmotion", console.vmotion.value),
        ("expires in", _duration(console.expires_in)),
        ("lock", _lock(console)),
    ]  # fmt: skip
    for name, value in sorted((console.counters or {}).items()):
        pairs.append((name.replace("_", " "), str(value)))
    width = max(len(name) for name, _ in pairs)
    text = "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in pairs)
    if console.attached:
        text += "\n\n" + format_table(CLIENT_HEADERS, client_rows(console.attached))
    else:
        text += "\n\nno clients attached"
    return text


def client_version() -> str:
    """This package's version, from its installed metadata."""
    try:
        return importlib.metadata.version("vspc")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "unknown"


def _print_json(ctx: Context, reply: dict[str, Any]) -> None:
    # The reply exactly as the protocol has it, minus our request id.
    ctx.out.write(encode_message({k: v for k, v in reply.items() if k != "id"}).decode())
    ctx.out.flush()


# ===================================================================== the commands

commands = CommandTable()

_VM_ARG = Arg(("vm",), "console: name, NAME_LABEL, key, UUID or telnet port", ArgKind.VM)
_JSON = Arg(("--json",), "print the protocol's JSON reply", ArgKind.FLAG)


@commands.register("list", help="list consoles (the default command)", args=[_JSON],
                   aliases=["ls"])  # fmt: skip
async def list_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("list")
    if ns.json:
        _print_json(ctx, reply)
        return ExitCode.OK
    consoles = consoles_of(reply)
    if not consoles:
        ctx.print("no consoles")
    else:
        ctx.print(format_table(LIST_HEADERS, list_rows(consoles)))
    return ExitCode.OK


@commands.register("show", help="one console in detail: clients, lock, counters",
                   args=[_VM_ARG, _JSON])  # fmt: skip
async def show_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("show", vm=ns.vm)
    if ns.json:
        _print_json(ctx, reply)
        return ExitCode.OK
    ctx.print(format_console(parse_reply(ConsoleInfo.from_json, reply.get("console"))))
    return ExitCode.OK


@commands.register(
    "attach",
    help="connect this terminal to a console (escape key opens a menu)",
    args=[
        _VM_ARG,
        Arg(("--lock",), "lock mode (default free_for_all_or_readonly)", ArgKind.LOCK,
            metavar="MODE"),
        Arg(("--readonly", "-r"), "watch only; typing is refused", ArgKind.FLAG),
        Arg(("--replay",), "bytes of scrollback to show first", ArgKind.INT, 0, "N"),
        Arg(("--escape", "-e"), "escape key, e.g. ^] (default) or 'none'", ArgKind.KEY,
            "^]", "KEY"),
    ],
)  # fmt: skip
async def attach_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    from vspc.vspctui.attach import parse_escape, run_attach  # termios: POSIX only

    try:
        escape = parse_escape(ns.escape)
    except ValueError as exc:
        raise UsageError(f"attach: {exc}") from None
    lock = None if ns.lock is None else LockMode(ns.lock)
    return await run_attach(
        ctx, ns.vm, lock=lock, readonly=ns.readonly, replay=ns.replay, escape=escape
    )


@commands.register(
    "clear",
    help="disconnect every client of a console (telnet and attach)",
    args=[
        Arg(("target",), "console, or its telnet port number", ArgKind.TARGET, metavar="vm|port"),
        Arg(("--reason",), "shown to the disconnected clients", metavar="TEXT"),
    ],
)
async def clear_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    target: dict[str, Any] = {"port": int(ns.target)} if ns.target.isdigit() else {"vm": ns.target}
    reply = await client.request("clear", reason=ns.reason, **target)
    ctx.print(f"cleared {reply.get('cleared', 0)} client(s) of {reply.get('name', ns.target)}")
    return ExitCode.OK


@commands.register(
    "kick",
    help="disconnect one client (ids from show)",
    args=[
        Arg(("client",), "client id", ArgKind.CLIENT, metavar="client_id"),
        Arg(("--reason",), "shown to the client", metavar="TEXT"),
    ],
)
async def kick_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("kick", client=ns.client, reason=ns.reason)
    ctx.print(f"kicked client {ns.client} from {reply.get('name', '?')}")
    return ExitCode.OK


@commands.register(
    "tail",
    help="print a console's recent output; -f keeps following it",
    args=[
        _VM_ARG,
        Arg(("-n", "--bytes"), "bytes of scrollback (default 4096)", ArgKind.INT, 4096, "N"),
        Arg(("-f", "--follow"), "keep printing new output until interrupted", ArgKind.FLAG),
    ],
)
async def tail_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    chunk = await client.tail(ns.vm, ns.bytes, follow=ns.follow)
    ctx.write_bytes(chunk.data)
    if not ns.follow:
        return ExitCode.OK
    try:
        async for event in client.events():
            if event.key != chunk.key:
                continue
            if event.event == "output":
                ctx.write_bytes(event.data)
            elif event.event == "tail_end":
                ctx.err.write(f"vspc: {chunk.name}: {event.fields.get('reason', 'gone')}\n")
                return ExitCode.OK
    finally:
        if ctx.in_shell and not client.lost:
            await client.request("untail", vm=chunk.key)
    return ExitCode.OK


@commands.register("events", help="print state-change events as they happen (subscribe)",
                   args=[_JSON])  # fmt: skip
async def events_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    await client.subscribe()
    try:
        async for event in client.events():
            if event.event in ("output", "tail_end"):
                continue
            if ns.json:
                ctx.out.write(encode_message(event.to_json()).decode())
                ctx.out.flush()
                continue
            extra = {k: v for k, v in event.fields.items() if k != "console"}
            detail = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                              for k, v in extra.items())  # fmt: skip
            stamp = time.strftime("%H:%M:%S")
            ctx.print(f"{stamp} {event.event} {event.name or event.key or '-'} {detail}".rstrip())
    finally:
        if ctx.in_shell and not client.lost:
            await client.request("unsubscribe")
    return ExitCode.OK


@commands.register("version", help="client and daemon versions, protocol, your access")
async def version_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    version = client_version()
    client = await ctx.client()
    hello = await client.hello(f"vspc/{version}")
    who = hello.user or ("-" if hello.uid is None else f"uid {hello.uid}")
    ctx.print(f"vspc {version}; vspcd {hello.version}, protocol {hello.protocol}")
    ctx.print(f"access: {hello.access.value} (as {who})")
    return ExitCode.OK


@commands.register("help", help="list commands, or describe one", args=[
    # Not "command": the top-level parser keeps the subcommand's name under that dest.
    Arg(("topic",), "command to describe", ArgKind.COMMAND, metavar="command", optional=True),
])  # fmt: skip
async def help_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    name = ns.topic
    if name:
        command = commands.get(name)
        if command is None or (ctx.in_shell and not command.shell):
            raise UsageError(f"unknown command: {name} (try 'help')")
        ctx.print(command.parser().format_help().rstrip())
        return ExitCode.OK
    ctx.print("commands:")
    ctx.print(commands.help_text(shell=ctx.in_shell))
    return ExitCode.OK


@commands.register("shell", help="interactive shell over the same commands", shell=False)
async def shell_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    from vspc.vspctui.shell import run_shell

    return await run_shell(ctx)


@commands.register("quit", help="leave the shell", aliases=["exit"], cli=False)
async def quit_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    raise EOFError  # the REPL's way out, as Ctrl-D


async def run_command(ctx: Context, command: Command, ns: argparse.Namespace) -> int:
    """Run one command; daemon refusals and client failures become exit codes,
    reported on `ctx.err`."""
    try:
        return int(await command.handler(ctx, ns))
    except UsageError as exc:
        if exc.status == 0:
            ctx.print(str(exc).rstrip())
            return ExitCode.OK
        ctx.err.write(f"{exc}\n")
        return exc.status
    except AdminError as exc:
        ctx.err.write(f"vspc: {command.name}: {exc.message} [{exc.code.value}]\n")
        return exit_code_for(exc)
    except ClientError as exc:
        ctx.err.write(f"vspc: {exc}\n")
        return exit_code_for(exc)
