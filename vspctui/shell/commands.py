"""The `vspc` commands: one handler each, registered in the table `commands`.

Boundary: handlers parse nothing themselves (the table's argparse parsers do, see
vspctui/cmdtable.py), talk to vspcd through `Context.client()` and print through
vspctui/formatting.py, where every peer-controlled string is made safe
(docs/vspc.md, "Output is safe to print").
`--json` prints the protocol's reply exactly.  `attach`, `proxy` and `shell` hand over
to their own modules, which depend on the framework only, never on this table.

Arguments that are admin request fields are derived from `vspc.common.admin.COMMANDS`
(`protocol_arg`), so help, defaults and bounds are the protocol's
(docs/admin-protocol.md).  Usage and exit codes: docs/vspc.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from vspc.common.admin import ClientInfo, ConsoleInfo, LockMode, Stats, encode_message
from vspc.common.display import safe
from vspc.vspctui.attach import parse_escape, run_attach
from vspc.vspctui.client import consoles_of, parse_reply
from vspc.vspctui.cmdtable import (
    Arg,
    ArgKind,
    CommandTable,
    Context,
    ExitCode,
    UsageError,
    client_version,
    protocol_arg,
)
from vspc.vspctui.formatting import (
    CLIENT_HEADERS,
    LIST_HEADERS,
    client_rows,
    cluster_problems,
    event_line,
    format_console,
    format_stats,
    format_table,
    list_rows,
)
from vspc.vspctui.shell.forced import run_forced
from vspc.vspctui.shell.proxy import run_proxy
from vspc.vspctui.shell.shell import run_shell

__all__ = ["REPLAY_DEFAULT", "commands"]

# `vspc attach` shows this much scrollback first, as Enter in vspc-tui does
# (docs/vspc-tui.md, "Attaching"); the protocol's own default stays 0 for scripts.
REPLAY_DEFAULT = 4096


def _print_json(ctx: Context, reply: dict[str, Any]) -> None:
    # The reply exactly as the protocol has it, minus our request id.
    ctx.out.write(encode_message({k: v for k, v in reply.items() if k != "id"}).decode())
    ctx.out.flush()


async def _reply(
    ctx: Context, ns: argparse.Namespace, command: str, **fields: Any
) -> dict[str, Any] | None:
    """The daemon's reply to `command`, or None once `--json` printed it."""
    client = await ctx.client()
    reply = await client.request(command, **fields)
    if ns.json:
        _print_json(ctx, reply)
        return None
    return reply


# ===================================================================== the commands

commands = CommandTable()

_VM_ARG = protocol_arg("show", "vm")
_JSON = Arg(("--json",), "print the protocol's JSON reply", ArgKind.FLAG)
_ATTACH_ARGS = (
    protocol_arg("attach", "vm"),
    protocol_arg("attach", "lock", metavar="MODE"),
    protocol_arg("attach", "readonly", "--readonly", "-r"),
)


_NAMES = Arg(("--names",), "print only console names, one a line (for shell completion)",
             ArgKind.FLAG)  # fmt: skip


@commands.register("list", help="list consoles (the default command)", args=[_JSON, _NAMES],
                   aliases=["ls"])  # fmt: skip
async def list_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("list")
    # In cluster mode the list may be incomplete: say what is missing, never "no
    # consoles", and exit 1 so a script notices (docs/vspc.md, "Exit codes").
    problems = cluster_problems(reply)
    status = ExitCode.ERROR if problems else ExitCode.OK
    if ns.names:
        # Completion scripts read these as words: a name a VM chose is made inert first.
        for name in sorted({safe(c.name) for c in consoles_of(reply)}):
            ctx.print(name)
        return ExitCode.OK
    if ns.json:
        _print_json(ctx, reply)
        return status
    consoles = consoles_of(reply)
    if consoles:
        ctx.print(format_table(LIST_HEADERS, list_rows(consoles)))
    elif not problems:
        ctx.print("no consoles")
    for problem in problems:
        ctx.err.write(f"vspc: list: {problem}\n")
        ctx.err.flush()
    return status


@commands.register("show", help="one console in detail: clients, lock, counters",
                   args=[_VM_ARG, _JSON])  # fmt: skip
async def show_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    reply = await _reply(ctx, ns, "show", vm=ns.vm)
    if reply is None:
        return ExitCode.OK
    console = reply.get("console")
    ctx.print(format_console(parse_reply(ConsoleInfo.from_json, console)))
    level = console.get("level") if isinstance(console, dict) else None
    if isinstance(level, str):  # daemons with access rules say the caller's level
        ctx.print(f"your level: {safe(level)}")
    return ExitCode.OK


@commands.register(
    "attach",
    help="connect this terminal to a console (escape key opens a menu)",
    args=[
        *_ATTACH_ARGS,
        protocol_arg("attach", "replay", "--replay", default=REPLAY_DEFAULT, metavar="N",
                     help="bytes of scrollback to show first, 0 for none"),
        protocol_arg("attach", "quiet", "--quiet"),
        Arg(("--escape", "-e"), "escape key, e.g. ^] (default) or 'none'", ArgKind.KEY,
            "^]", "KEY"),
    ],
)  # fmt: skip
async def attach_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    try:
        escape = parse_escape(ns.escape)
    except ValueError as exc:
        raise UsageError(f"attach: {exc}") from None
    lock = None if ns.lock is None else LockMode(ns.lock)
    return await run_attach(
        ctx,
        ns.vm,
        lock=lock,
        readonly=ns.readonly,
        replay=ns.replay,
        quiet=ns.quiet,
        escape=escape,
    )


@commands.register(
    "proxy",
    help="pipe stdin/stdout to a console, binary clean (gdb: target remote | vspc proxy VM)",
    args=[
        *_ATTACH_ARGS,
        protocol_arg("attach", "replay", "--replay", metavar="N"),
    ],
    shell=False,  # it owns stdin and stdout
)
async def proxy_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    lock = None if ns.lock is None else LockMode(ns.lock)
    return await run_proxy(ctx, ns.vm, lock=lock, readonly=ns.readonly, replay=ns.replay)


@commands.register(
    "clear",
    help="disconnect every client of a console (telnet and attach)",
    args=[
        Arg(("target",), "console, or its telnet port number", ArgKind.TARGET, metavar="vm|port"),
        protocol_arg("clear", "reason", metavar="TEXT"),
    ],
)
async def clear_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    target: dict[str, Any] = {"port": int(ns.target)} if ns.target.isdigit() else {"vm": ns.target}
    reply = await client.request("clear", reason=ns.reason, **target)
    name = safe(reply.get("name", ns.target))
    ctx.print(f"cleared {safe(reply.get('cleared', 0))} client(s) of {name}")
    return ExitCode.OK


@commands.register(
    "kick",
    help="disconnect one client (ids from show)",
    args=[
        protocol_arg("kick", "client", kind=ArgKind.CLIENT, metavar="client_id"),
        protocol_arg("kick", "reason", metavar="TEXT", help="shown to the client"),
    ],
)
async def kick_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("kick", client=ns.client, reason=ns.reason)
    ctx.print(f"kicked client {ns.client} from {safe(reply.get('name', '?'))}")
    return ExitCode.OK


@commands.register(
    "break",
    help="send a serial break to the VM (control access; attached clients are told)",
    args=[protocol_arg("break", "vm")],
)
async def break_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("break", vm=ns.vm)
    ctx.print(f"break sent to {safe(reply.get('name', ns.vm))}")
    return ExitCode.OK


WHO_HEADERS = ("CONSOLE", *CLIENT_HEADERS)


@commands.register(
    "who",
    help="who is on which console: how, in which mode, since when",
    args=[
        Arg(("vm",), "only this console", ArgKind.VM, optional=True),
        _JSON,
    ],
)
async def who_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    reply = await _reply(ctx, ns, "who", **({"vm": ns.vm} if ns.vm else {}))
    if reply is None:
        return ExitCode.OK
    rows = reply.get("clients")
    entries = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    if not entries:
        ctx.print("nobody is attached")
        return ExitCode.OK
    table = []
    for row, cells in zip(entries, client_rows(map(ClientInfo.from_json, entries)), strict=True):
        mode = cells[4] + (" (lock)" if row.get("lock") is True else "")
        table.append((str(row.get("console", "?")), *cells[:4], mode, *cells[5:]))
    ctx.print(format_table(WHO_HEADERS, table))
    return ExitCode.OK


@commands.register(
    "tail",
    help="print a console's recent output; -f keeps following it",
    args=[
        _VM_ARG,
        protocol_arg("tail", "bytes", "-n", "--bytes", metavar="N"),
        protocol_arg(
            "tail", "follow", "-f", "--follow", help="keep printing new output until interrupted"
        ),
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
                reason = safe(event.fields.get("reason", "gone"))
                ctx.err.write(f"vspc: {safe(chunk.name)}: {reason}\n")
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
            ctx.print(event_line(event, time.strftime("%H:%M:%S")))
    finally:
        if ctx.in_shell and not client.lost:
            await client.request("unsubscribe")
    return ExitCode.OK


@commands.register("stats", help="the daemon's counters: consoles, clients, bytes, vMotions",
                   args=[_JSON])  # fmt: skip
async def stats_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    if (reply := await _reply(ctx, ns, "stats")) is not None:
        ctx.print(format_stats(parse_reply(Stats.from_json, reply)))
    return ExitCode.OK


@commands.register("version", help="client and daemon versions, protocol, your access")
async def version_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    version = client_version()
    client = await ctx.client()
    hello = await client.hello(f"vspc/{version}")
    who = safe(hello.user) if hello.user else ("-" if hello.uid is None else f"uid {hello.uid}")
    ctx.print(f"vspc {version}; vspcd {safe(hello.version)}, protocol {safe(hello.protocol)}")
    ctx.print(f"access: {safe(hello.access.value)} (as {who})")
    return ExitCode.OK


@commands.register("whoami", help="who vspcd thinks you are: user, uid, groups, default level",
                   args=[_JSON])  # fmt: skip
async def whoami_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    reply = await _reply(ctx, ns, "whoami")
    if reply is None:
        return ExitCode.OK
    user, uid = reply.get("user"), reply.get("uid")
    who = safe(user) if user else ("-" if uid is None else f"uid {safe(uid)} (no passwd entry)")
    groups = reply.get("groups")
    ctx.print(f"user: {who}")
    ctx.print(f"uid: {safe(uid)}  gid: {safe(reply.get('gid'))}")
    if isinstance(groups, list):
        ctx.print(f"groups: {safe(' '.join(str(g) for g in groups)) or '-'}")
    ctx.print(f"default level: {safe(reply.get('level'))} ({safe(reply.get('reason'))})")
    return ExitCode.OK


@commands.register("access", help="your level on a console, and the rule that gave it",
                   args=[protocol_arg("access", "vm"), _JSON])  # fmt: skip
async def access_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    reply = await _reply(ctx, ns, "access", vm=ns.vm)
    if reply is None:
        return ExitCode.OK
    name = safe(reply.get("name", ns.vm))
    ctx.print(f"{name}: {safe(reply.get('level'))} ({safe(reply.get('reason'))})")
    return ExitCode.OK


def parse_when(text: str, now: float | None = None) -> int:
    """A `--since`/`--until` value as Unix seconds: Unix seconds, an ISO 8601 date or
    time (local time unless it says otherwise), or an age such as 90s, 30m, 2h, 7d.

    Raises:
        UsageError: none of these.
    """
    now = time.time() if now is None else now
    word = text.strip()
    if word.isdigit():
        return int(word)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(word) > 1 and word[-1] in units and word[:-1].isdigit():
        return int(now - int(word[:-1]) * units[word[-1]])
    try:
        return int(datetime.fromisoformat(word).timestamp())
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (Unix seconds, ISO 8601, or an age like 30m, 2h, 7d)"
        ) from None


def _stamp(when: object) -> str:
    if not isinstance(when, int | float) or isinstance(when, bool):
        return "-"
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


@commands.register("alerts", help="recent console alerts: kernel panics, Oopses, OOM kills, ...",
                   args=[Arg(("vm",), "only this console (name, key, UUID or port)", ArgKind.VM,
                             optional=True),
                         protocol_arg("alerts", "limit", "--limit", "-n", metavar="N"),
                         _JSON])  # fmt: skip
async def alerts_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    client = await ctx.client()
    reply = await client.request("alerts", vm=ns.vm, limit=ns.limit)
    if ns.json:
        _print_json(ctx, reply)
        return ExitCode.OK
    rows = reply.get("alerts")
    if not isinstance(rows, list) or not rows:
        ctx.print("no alerts")
        return ExitCode.OK
    for row in rows:
        if not isinstance(row, dict):
            continue
        ctx.print(
            f"{_stamp(row.get('time'))}  {safe(row.get('name'))}  {safe(row.get('alert'))} "
            f"({safe(row.get('severity'))})"
        )
        for line in row.get("context") or []:
            ctx.print(f"    {safe(line)}")
        ctx.print(f"  > {safe(row.get('line'))}")
    return ExitCode.OK


@commands.register("grep", help="search every console's history: logs (rotated, gzipped) and "
                   "scrollback", args=[
    protocol_arg("grep", "pattern"),
    Arg(("vms",), "consoles to search (globs, uuid:UUID, label:LABEL; default all)",
        ArgKind.VM, metavar="vm", many=True),
    Arg(("--since",), "lines from this time on (Unix seconds, ISO 8601, or an age: 2h, 7d)",
        metavar="T"),
    Arg(("--until",), "lines up to this time", metavar="T"),
    protocol_arg("grep", "ignore_case", "--ignore-case", "-i"),
    protocol_arg("grep", "limit", "--limit", "-n", metavar="N"),
    _JSON,
])  # fmt: skip
async def grep_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    since = None if ns.since is None else parse_when(ns.since)
    until = None if ns.until is None else parse_when(ns.until)
    client = await ctx.client()
    reply = await client.request(
        "grep",
        pattern=ns.pattern,
        consoles=",".join(ns.vms) or None,
        since=since,
        until=until,
        ignore_case=ns.ignore_case or None,
        limit=ns.limit,
    )
    if ns.json:
        _print_json(ctx, reply)
        return ExitCode.OK
    matches = reply.get("matches")
    found = isinstance(matches, list) and bool(matches)
    for row in matches if isinstance(matches, list) else []:
        if isinstance(row, dict):
            ctx.print(
                f"{safe(row.get('name'))}  {_stamp(row.get('time'))}  {safe(row.get('line'))}"
            )
    if reply.get("truncated"):
        ctx.err.write(f"vspc: grep: truncated at {len(matches or [])} matches (use --limit)\n")
        ctx.err.flush()
    return ExitCode.OK if found else ExitCode.ERROR


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
    return await run_shell(ctx, commands)


@commands.register(
    "ssh-command",
    help="for sshd's ForceCommand: run the one vspc command in $SSH_ORIGINAL_COMMAND",
    shell=False,
)
async def ssh_command_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    return await run_forced(ctx, commands)


@commands.register("quit", help="leave the shell", aliases=["exit"], cli=False)
async def quit_cmd(ctx: Context, ns: argparse.Namespace) -> int:
    raise EOFError  # the REPL's way out, as Ctrl-D
