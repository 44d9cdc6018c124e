"""vspc-tui's key table: every key, the command it runs, where, and its help text.

Boundary: data only (mitmproxy's `defaultkeys.py` at our scale).  The controller
(vspctui/dashboard/app.py) dispatches through `lookup()`, the help screen and the footer hints
are generated from `KEYS` (vspctui/dashboard/views.py: `HelpView`, `StatusBar`), and
docs/vspc-tui.md shows `help_text()`.  No urwid here: key names are urwid's strings
("enter", "esc", "page down"), which are plain text.

Widgets see keys first: the console list moves its focus on up/down itself and emits
"attach" on Enter, an open prompt takes printable keys.  Only the keys they leave
reach the table, so an entry like `enter -> attach` documents what the widget does and
is also what runs when no widget claims the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "KEYS",
    "Binding",
    "Command",
    "KeyContext",
    "help_sections",
    "help_text",
    "hints",
    "lookup",
]


class Command(StrEnum):
    """What a key does; the controller maps each to one handler."""

    UP = "up"
    DOWN = "down"
    PAGE_UP = "page-up"
    PAGE_DOWN = "page-down"
    TOP = "top"
    BOTTOM = "bottom"
    ATTACH = "attach"
    ATTACH_LOCK = "attach-lock"
    ATTACH_READONLY = "attach-readonly"
    TAIL = "tail"
    GRID = "grid"
    DETAIL = "detail"
    SORT = "sort"
    KICK = "kick"
    CLEAR = "clear"
    BREAK = "break"
    FILTER = "filter"
    ALERTS = "alerts"
    HELP = "help"
    QUIT = "quit"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    CLEAR_TEXT = "clear-text"


class KeyContext(StrEnum):
    """Where a binding applies: what has the keyboard."""

    DASHBOARD = "dashboard"  # the console list, tail and event panes
    DIALOG = "dialog"  # a prompt (filter, clear/kick reason), the lock or client picker
    HELP = "help"  # the help screen, the alert list


@dataclass(frozen=True, slots=True)
class Binding:
    """One row of the key table."""

    key: str  # urwid's key name
    command: Command
    context: KeyContext
    help: str


_D, _G, _H = KeyContext.DASHBOARD, KeyContext.DIALOG, KeyContext.HELP

KEYS: tuple[Binding, ...] = (
    Binding("up", Command.UP, _D, "previous console"),
    Binding("k", Command.UP, _D, "previous console"),
    Binding("down", Command.DOWN, _D, "next console"),
    Binding("j", Command.DOWN, _D, "next console"),
    Binding("page up", Command.PAGE_UP, _D, "a page of consoles up"),
    Binding("page down", Command.PAGE_DOWN, _D, "a page of consoles down"),
    Binding("home", Command.TOP, _D, "first console"),
    Binding("end", Command.BOTTOM, _D, "last console"),
    Binding("enter", Command.ATTACH, _D, "attach to the focused console; ^] then quit comes back"),
    Binding("l", Command.ATTACH_LOCK, _D, "attach with a lock mode you pick"),
    Binding("r", Command.ATTACH_READONLY, _D, "attach read-only (never sends a key)"),
    Binding("t", Command.TAIL, _D, "pin the focused console: keep following it, or unpin"),
    Binding("g", Command.GRID, _D, "grid of live tails: the pinned, else the most active"),
    Binding("d", Command.DETAIL, _D, "detail: clients, lock, vMotions, bytes each way"),
    Binding("s", Command.SORT, _D, "sort by name, by activity (latest first), by port"),
    Binding("K", Command.KICK, _D, "kick a client of the console (pick it, then confirm)"),
    Binding("c", Command.CLEAR, _D, "clear: disconnect every client of the console"),
    Binding("B", Command.BREAK, _D, "serial break to the VM (asks first)"),
    Binding("/", Command.FILTER, _D, "filter consoles by name"),
    Binding("A", Command.ALERTS, _D, "list recent console alerts; clears the ! marks"),
    Binding("?", Command.HELP, _D, "this help"),
    Binding("q", Command.QUIT, _D, "quit"),
    Binding("enter", Command.CONFIRM, _G, "confirm"),
    Binding("esc", Command.CANCEL, _G, "cancel"),
    Binding("ctrl u", Command.CLEAR_TEXT, _G, "clear the text typed"),
    Binding("esc", Command.CANCEL, _H, "close the help or the alert list"),
    Binding("q", Command.CANCEL, _H, "close the help or the alert list"),
    Binding("?", Command.CANCEL, _H, "close the help or the alert list"),
)

_TITLES = {
    KeyContext.DASHBOARD: "Dashboard",
    KeyContext.DIALOG: "Prompts and pickers (lock mode, client to kick)",
    KeyContext.HELP: "This screen and the alert list (up/down scroll)",
}

# The footer's short names, in order; commands absent here are in the help only.  The
# line must fit 80 columns.
_HINTS = {
    KeyContext.DASHBOARD: (
        (Command.ATTACH, "attach"),
        (Command.TAIL, "pin"),
        (Command.GRID, "grid"),
        (Command.DETAIL, "detail"),
        (Command.SORT, "sort"),
        (Command.KICK, "kick"),
        (Command.FILTER, "filter"),
        (Command.HELP, "help"),
        (Command.QUIT, "quit"),
    ),
    KeyContext.DIALOG: ((Command.CONFIRM, "ok"), (Command.CANCEL, "cancel")),
    KeyContext.HELP: ((Command.CANCEL, "close"),),
}


def lookup(context: KeyContext, key: str, keys: Iterable[Binding] = KEYS) -> Command | None:
    """The command `key` runs in `context`, or None."""
    return next((b.command for b in keys if b.context is context and b.key == key), None)


def _keys_for(context: KeyContext, command: Command, keys: Sequence[Binding]) -> list[str]:
    return [b.key for b in keys if b.context is context and b.command is command]


def help_sections(keys: Sequence[Binding] = KEYS) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(keys, help)]) per context, bindings of one command merged ("up/k")."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for context in KeyContext:
        rows: list[tuple[str, str]] = []
        seen: set[Command] = set()
        for binding in keys:
            if binding.context is not context or binding.command in seen:
                continue
            seen.add(binding.command)
            rows.append(("/".join(_keys_for(context, binding.command, keys)), binding.help))
        if rows:
            sections.append((_TITLES[context], rows))
    return sections


def help_text(keys: Sequence[Binding] = KEYS) -> str:
    """The help screen as plain text (docs/vspc-tui.md quotes it)."""
    lines: list[str] = []
    for title, rows in help_sections(keys):
        width = max(len(k) for k, _ in rows)
        lines.append(title)
        lines.extend(f"  {k:<{width}}  {h}" for k, h in rows)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def hints(context: KeyContext, keys: Sequence[Binding] = KEYS) -> str:
    """The footer line: the first key of each hinted command and its short name."""
    parts = []
    for command, short in _HINTS[context]:
        bound = _keys_for(context, command, keys)
        if bound:
            parts.append(f"{bound[0]} {short}")
    return "  ".join(parts)
