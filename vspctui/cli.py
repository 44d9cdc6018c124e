"""`vspc`: the command-line client of vspcd (entry point `main`).

Boundary: argv -> one command from the table in vspctui/commands.py -> an exit code.
`vspc` alone lists consoles and `vspc VM` attaches, as vSPCClient did; every other
word names a subcommand.  Errors go to stderr; nothing here calls `sys.exit()`
(`main` returns the code and `python -m vspc.vspctui.cli` passes it on).

Exit codes and usage: docs/vspc.md.  Protocol: docs/admin-protocol.md (issue #4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from vspc.vspctui.client import AdminAddress
from vspc.vspctui.commands import (
    Command,
    Context,
    ExitCode,
    NoExitParser,
    UsageError,
    client_version,
    commands,
    run_command,
)

__all__ = ["build_parser", "default_socket", "main", "normalize_argv"]

_EPILOG = """\
With no command, list consoles; with a console name instead of a command, attach to it.
exit codes: 0 ok, 1 refused/other error, 2 usage, 3 cannot connect, 4 no such
console/client, 5 lock or client limit, 6 permission denied, 7 protocol error,
8 attach ended by vspcd, 130 interrupted.
"""

_GLOBAL_WITH_VALUE = ("--socket", "--tcp")


def default_socket(environ: Mapping[str, str], euid: int) -> Path:
    """The admin socket to use without --socket: $VSPC_SOCKET, else the first existing
    of the daemon's per-user default and the system one (/run/vspcd/vspcd.sock).

    A non-root operator usually talks to the system daemon, so the per-user path only
    wins when a daemon of that user actually runs.
    """
    if environ.get("VSPC_SOCKET"):
        return Path(environ["VSPC_SOCKET"])
    system = Path("/run/vspcd/vspcd.sock")
    if euid == 0:
        return system
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    user = Path(runtime) / "vspcd.sock" if runtime else Path(f"/tmp/vspcd-{euid}/vspcd.sock")
    return user if user.exists() and not system.exists() else system


def build_parser() -> argparse.ArgumentParser:
    """The `vspc` parser: global options plus one subcommand per table entry."""
    parser = NoExitParser(
        prog="vspc",
        description="Client of vspcd, the virtual serial port concentrator.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help="vspcd's admin socket (default: $VSPC_SOCKET, else /run/vspcd/vspcd.sock "
        "or your own daemon's $XDG_RUNTIME_DIR/vspcd.sock)",
    )
    where.add_argument("--tcp", metavar="HOST:PORT", help="use vspcd's TCP admin port instead")
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
        if word in _GLOBAL_WITH_VALUE:
            i += 2
        elif word.split("=", 1)[0] in _GLOBAL_WITH_VALUE:
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
    try:
        namespace = parser.parse_args(normalize_argv(args))
    except UsageError as exc:
        if exc.status != 0:
            sys.stderr.write(f"{exc}\n")
        return exc.status
    command = commands.get(namespace.command)
    if command is None:  # pragma: no cover - argparse only accepts table names
        return ExitCode.USAGE
    try:
        if namespace.tcp:
            address = AdminAddress.tcp(namespace.tcp)
        else:
            path = namespace.socket or default_socket(os.environ, os.geteuid())
            address = AdminAddress(path=str(path))
    except ValueError as exc:
        sys.stderr.write(f"vspc: --tcp: {exc}\n")
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
