"""`vspc ssh-command`: one vspc command line from `$SSH_ORIGINAL_COMMAND`, nothing else.

For sshd's `ForceCommand` on a console-only account (docs/operations.md, "Remote
operators over SSH"): `ssh host vspc db01`, `ssh host list` or `ssh -t host` reach
vspcd with the ssh user's own uid and groups, which the access rules judge
(docs/security.md, "Who may do what").  What such a user must not get, and how:

- a shell or any other program: the line is split with `shlex` and never handed to a
  shell; its first word must name a vspc command (a leading `vspc` is allowed, after
  which the `vspc VM` shorthand works as on the command line);
- another daemon or socket: the command's own parser has no `--socket`/`--tcp`, so
  the address is the one the ForceCommand line (the administrator) chose;
- this mode again or the daemon's files: only the commands of `ALLOWED` run, and
  control characters, `@file` arguments and over-long lines are refused.

No command (`ssh -t host`) starts `vspc shell` on a terminal; without one it says how
to give a command.  Refusals exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping

from vspc.vspctui.cmdtable import (
    Command,
    CommandTable,
    Context,
    ExitCode,
    UsageError,
    run_command,
)

__all__ = ["ALLOWED", "MAX_LINE", "parse_forced", "run_forced"]

# Every command that only talks to vspcd over the administrator's socket.  `proxy`
# pipes stdin/stdout to a console the rules let the user reach (gdb over ssh), and
# `shell` reads its lines with the same table (no address options either).
ALLOWED = frozenset(
    {"list", "show", "attach", "proxy", "clear", "kick", "tail", "events", "stats",
     "version", "whoami", "access", "help", "shell"}
)  # fmt: skip
MAX_LINE = 4096
ENV = "SSH_ORIGINAL_COMMAND"


def parse_forced(line: str, table: CommandTable) -> tuple[Command, argparse.Namespace]:
    """The command and its arguments `line` names.

    Raises:
        UsageError: the line is refused (the message says why).
    """
    if len(line) > MAX_LINE:
        raise UsageError(f"vspc: refused: command longer than {MAX_LINE} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
        raise UsageError("vspc: refused: control characters in the command")
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"vspc: refused: cannot parse the command: {exc}") from None
    if words and words[0] == "vspc":
        words = words[1:]
        # The command line's shorthand: `vspc` lists, `vspc VM` attaches.
        if not words:
            words = ["list"]
        elif table.get(words[0]) is None and not words[0].startswith("-"):
            words = ["attach", *words]
    if not words:
        raise UsageError("vspc: refused: empty command")
    command = table.get(words[0])
    if command is None or not command.cli or command.name not in ALLOWED:
        raise UsageError(
            f"vspc: refused: {words[0]!r} is not a vspc command this account "
            f"may run ({', '.join(sorted(ALLOWED))})"
        )
    if any(word.startswith("@") for word in words[1:]):
        # argparse reads no @files here (no fromfile_prefix_chars), but say so plainly
        # rather than rely on a default.
        raise UsageError("vspc: refused: arguments starting with '@'")
    parser = command.parser(prog=f"vspc {command.name}")
    try:
        namespace = parser.parse_args(words[1:])
    except UsageError as exc:
        if exc.status == 0:  # -h
            raise UsageError(parser.format_help(), 0) from None
        raise
    namespace.command = command.name
    return command, namespace


async def run_forced(
    ctx: Context, table: CommandTable, environ: Mapping[str, str] | None = None
) -> int:
    """Run the one command `$SSH_ORIGINAL_COMMAND` names (module docstring)."""
    env = os.environ if environ is None else environ
    line = env.get(ENV)
    if line is None or not line.strip():
        shell = table.get("shell")
        if shell is not None and os.isatty(ctx.stdin_fd):
            return await run_command(ctx, shell, argparse.Namespace(command="shell"))
        ctx.err.write("vspc: give a command, e.g. ssh HOST vspc list (or ssh -t HOST)\n")
        return ExitCode.USAGE
    try:
        command, namespace = parse_forced(line, table)
    except UsageError as exc:
        return exc.report(ctx)
    return await run_command(ctx, command, namespace)
