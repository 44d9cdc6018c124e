"""`vspc`: the command-line client of vspcd (entry point `main`).

Boundary: argv -> one command from the table in vspctui/shell/commands.py -> an exit code.
`vspc` alone lists consoles and `vspc VM` attaches, as vSPCClient did; every other
word names a subcommand.  Errors go to stderr; nothing here calls `sys.exit()`
(`main` returns the code and `python -m vspc.vspctui.shell.cli` passes it on).

Exit codes and usage: docs/vspc.md.  Protocol: docs/admin-protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from vspc.vspctui.cmdtable import (
    Command,
    Context,
    ExitCode,
    NoExitParser,
    client_version,
    parse_command_line,
    run_command,
)
from vspc.vspctui.options import ADDRESS_OPTIONS, add_address_options
from vspc.vspctui.shell.commands import commands

__all__ = ["build_parser", "main", "normalize_argv"]

_EPILOG = """\
With no command, list consoles; with a console name instead of a command, attach to it.
exit codes: 0 ok, 1 refused/other error, 2 usage, 3 cannot connect, 4 no such
console/client, 5 lock or client limit, 6 permission denied, 7 protocol error,
8 attach ended by vspcd, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The `vspc` parser: global options plus one subcommand per table entry."""
    parser = NoExitParser(
        prog="vspc",
        description="Client of vspcd, the virtual serial port concentrator.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_address_options(parser)  # and on every subcommand: before or after the command
    parser.add_argument("--version", action="version", version=f"vspc {client_version()}")
    commands.add_subparsers(parser)
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """vSPCClient compatibility: `vspc` -> `vspc list`, `vspc VM` -> `vspc attach VM`.

    Global options before the first word are kept in place.  A word that is a command
    name is a command: attach to a console called `list` with `vspc attach list`.
    """
    args = list(argv)
    i = 0
    while i < len(args):
        word = args[i]
        if word in ADDRESS_OPTIONS:
            if i + 1 >= len(args):
                return args  # its value is missing: let argparse say so
            i += 2
        elif word.split("=", 1)[0] in ADDRESS_OPTIONS:
            i += 1
        elif word in ("-h", "--help", "--version"):
            return args
        else:
            break
    if i >= len(args):
        return args + ["list"]
    word = args[i]
    if word in commands.names():
        return args
    if word == "--":
        return args[:i] + ["attach"] + args[i:]
    if word.startswith("-"):
        return args[:i] + ["list"] + args[i:]
    return args[:i] + ["attach"] + args[i:]


async def _run(ctx: Context, command: Command, namespace: argparse.Namespace) -> int:
    try:
        return await run_command(ctx, command, namespace)
    finally:
        await ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `vspc` with `argv` (default: sys.argv[1:]); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parsed = parse_command_line("vspc", parser, normalize_argv(args))
    if isinstance(parsed, int):
        return parsed
    namespace, address = parsed
    command = commands.get(namespace.command)
    if command is None:  # pragma: no cover - normalize_argv always names a command
        sys.stderr.write(f"{parser.format_usage()}vspc: error: no command\n")
        return ExitCode.USAGE
    ctx = Context(address)
    try:
        return asyncio.run(_run(ctx, command, namespace))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `vspc list | head`: the reader left; say nothing more, on a dead stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.ERROR


if __name__ == "__main__":
    sys.exit(main())
