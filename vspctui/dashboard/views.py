"""vspc-tui's views: urwid widgets that show the model and say what the user did.

Boundary: each view is a `WidgetWrap` with a `show(...)` method taking plain data
(`ConsoleInfo`, bytes, log entries) and, where the user acts on it, its own urwid
signals (`ConsoleList` emits "attach" and "focus").  Views never talk to vspcd and
never read the model themselves; the layout (vspctui/dashboard/layout.py) calls
`show()` after every change, as urwid's `examples/graph.py` does.  The dialogs'
widgets are in vspctui/dashboard/overlays.py.  `PALETTE` is declared here, next to
the attributes it names.

Everything that came from the daemon or a VM goes through `vspc.common.display.safe`
(names, labels, reasons, users, addresses: docs/vspc-tui.md, "What it shows") or,
for console output, `screen_lines()` before it reaches a `Text`: a VM name or console
output is arbitrary bytes, and an escape sequence passed to the terminal would repaint
or reconfigure it.  Event-log lines are made safe as they enter the model's log.
Durations, who a client is and clock times come from vspctui/formatting.py, the one
definition the `vspc` CLI uses too; narrow columns ask it for the
coarse form (``3m``, not ``3m07s``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

import urwid

from vspc.common.admin import ClientInfo, ConsoleInfo, VMotionPhase
from vspc.common.display import safe
from vspc.vspctui.dashboard.compat import Wrap
from vspc.vspctui.dashboard.model import LogEntry
from vspc.vspctui.formatting import duration, since, who

__all__ = [
    "PALETTE",
    "ConsoleList",
    "DetailPane",
    "EventLog",
    "GridView",
    "StatusBar",
    "TailPane",
    "console_row",
    "detail_lines",
    "screen_lines",
]

PALETTE: list[tuple[str, str, str]] = [
    ("header", "white,bold", "dark blue"),
    ("focus", "black", "light gray"),
    ("columns", "bold", ""),
    ("status", "white", "dark blue"),
    ("error", "light red,bold", ""),
    ("hints", "light gray", ""),
    ("dialog", "white", "dark gray"),
]

# ===================================================================== safe text

# ECMA-48 sequences a VM may print: CSI (colours, cursor motion), OSC (window title,
# ended by BEL or ST), the string commands DCS/SOS/PM/APC (ended by ST), and the
# two-byte escapes.  Stripped, not shown: the pane is a log, not a terminal emulator.
_ESCAPE = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]"
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|[PX^_][^\x1b]*\x1b\\"
    rb"|(?![\[\]PX^_])[ -/]*[0-~])"
)
# The start of one of those cut off by the end of the buffer: the rest is coming.
_PARTIAL_ESCAPE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|[PX^_][^\x1b]*|[ -/]*)\Z")
_TAB = 8
_SILENT = {"\x00", "\x07", "\x7f"}  # NUL padding, bells, DEL: noise on a log pane


def _visible(char: str) -> str:
    """A control character as text you can see: ^X for C0, <9b> for C1."""
    code = ord(char)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<{code:02x}>"


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0


def _cook(segment: str) -> str:
    """One CR-free piece of a line: backspace erases, tabs expand, other controls show."""
    out: list[str] = []
    for char in segment:
        if char == "\b":
            if out:
                out.pop()
        elif char == "\t":
            out.append(" " * (_TAB - len("".join(out)) % _TAB))
        elif char in _SILENT or 0x80 <= ord(char) < 0xA0:
            continue
        elif _is_control(char):
            out.append(_visible(char))
        else:
            out.append(char)
    return "".join(out)


def _line(raw: str) -> str:
    # A CR returns to column 0 and what follows overwrites (progress bars, "\r\n").
    shown = ""
    for i, segment in enumerate(raw.split("\r")):
        cooked = _cook(segment)
        shown = cooked + shown[len(cooked) :] if i else cooked
    return shown


def screen_lines(data: bytes, limit: int | None = None) -> list[str]:
    """Console output -> display lines: UTF-8 with replacement, escape sequences
    stripped, CR/backspace/tab applied, other control characters made visible.

    Args:
        data: raw console bytes (may start or end in the middle of anything).
        limit: keep only the last `limit` lines (decoding only those).
    """
    pieces = data.split(b"\n")
    if limit is not None:
        pieces = pieces[-limit:]
    chunk = _PARTIAL_ESCAPE.sub(b"", _ESCAPE.sub(b"", b"\n".join(pieces)))
    return [_line(raw) for raw in chunk.decode("utf-8", "replace").split("\n")]


# ===================================================================== building blocks


class _BottomText(urwid.Widget):
    """A box of text lines showing the last ones that fit, like `tail`: once the lines
    overflow the box, the newest sits on the bottom row.  (A ListBox would keep its
    scroll position instead of following the end.)"""

    _sizing = frozenset([urwid.BOX])
    _selectable = False

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []

    def set_lines(self, lines: Sequence[str]) -> None:
        self._lines = list(lines)
        self._invalidate()

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        maxcol, maxrow = size
        # Every line takes at least one row, so the last `maxrow` lines fill the box.
        text = urwid.Text("\n".join(self._lines[-maxrow:]) if maxrow else "", wrap="any")
        canvas = urwid.CompositeCanvas(text.render((maxcol,)))
        rows = canvas.rows()
        if rows > maxrow:
            canvas.trim(rows - maxrow)
        elif rows < maxrow:
            canvas.pad_trim_top_bottom(0, maxrow - rows)
        return canvas


def _vm_state(console: ConsoleInfo) -> str:
    if console.vmotion is VMotionPhase.PENDING:
        return "vmotion"
    if console.vmotion is VMotionPhase.PEERED:
        return "vmotion>"
    if console.connected:
        return "up"
    if console.expires_in is not None:
        return f"down {duration(console.expires_in, coarse=True)}"
    return "down"


_COLUMNS = f"  {'NAME':<24} {'PORT':>5}  {'VM':<9} {'CL':>3}  LOCK"
# With room for it, the activity column (docs/vspc-tui.md, "Activity"): time since
# the console last did something.  Narrower lists keep the five columns they always had.
_COLUMNS_WIDE = f"  {'NAME':<24} {'PORT':>5}  {'VM':<9} {'CL':>3}  {'ACT':>4}  LOCK"
WIDE = 72  # list width from which the activity column is shown
STALE = "?"  # the VM column while the dashboard is not connected to vspcd


def console_row(
    console: ConsoleInfo,
    following: bool = False,
    *,
    idle: float | None = None,
    activity: bool = False,
    stale: bool = False,
    alerted: bool = False,
) -> str:
    """One console list row: pin mark, alert mark, name, port, VM state, clients,
    [activity,] lock.

    Args:
        following: the console is pinned (`*`).
        alerted: the console raised a console alert this session (`!`).
        idle: seconds since it was last active (None: not seen active).
        activity: show the activity column (`idle`).
        stale: the dashboard lost vspcd: the VM state is unknown, not "up".
    """
    name = safe(console.name)
    if len(name) > 24:
        name = name[:23] + "~"
    port = "-" if console.port is None else str(console.port)
    lock = "-"
    if console.lock is not None:
        holder = console.lock_holder
        lock = console.lock.value + (f" ({who(holder)})" if holder is not None else "")
    mark = "*" if following else " "
    state = STALE if stale else _vm_state(console)
    bang = "!" if alerted else " "
    row = f"{mark}{bang}{name:<24} {port:>5}  {state:<9} {console.clients:>3}  "
    if activity:
        row += f"{duration(idle, coarse=True):>4}  "
    return row + lock


# ===================================================================== the views


class _Rows(urwid.ListWalker):  # type: ignore[type-arg]
    """A list walker over positions 0..size-1 whose widgets are made on demand.

    urwid's `SimpleFocusListWalker` holds one widget per row: with many consoles,
    rebuilding them all on every change would keep the dashboard busy
    (docs/vspc-tui.md, "Staying responsive").  The ListBox only asks for the rows it
    draws, so only those are built (and cached while their text does not change).
    """

    def __init__(self, make: Callable[[int], urwid.Widget]) -> None:
        self.size = 0
        self.focus = 0
        self._make = make

    def __getitem__(self, position: int) -> urwid.Widget:
        if not 0 <= position < self.size:
            raise IndexError(position)
        return self._make(position)

    def next_position(self, position: int) -> int:
        if position + 1 >= self.size:
            raise IndexError(position)
        return position + 1

    def prev_position(self, position: int) -> int:
        if position <= 0:
            raise IndexError(position)
        return position - 1

    def positions(self, reverse: bool = False) -> Iterable[int]:
        return range(self.size - 1, -1, -1) if reverse else range(self.size)

    def set_focus(self, position: int) -> None:
        self.focus = position
        self._modified()

    def changed(self) -> None:
        """The rows' contents changed: the ListBox must draw them again."""
        self._modified()


class _RowMarks(TypedDict, total=False):
    """What `ConsoleList.show` passes on to `show_keys` as it is."""

    idle: Callable[[str], float | None] | None  # idle(key): seconds since last active
    stale: bool  # vspcd is unreachable
    alerted: Collection[str]  # keys of consoles that raised a console alert


class ConsoleList(Wrap):
    """One row per console.  Emits "attach" with the focused `ConsoleInfo` on Enter,
    and "focus" with the newly focused one (or None) when the focus moves.

    Rows are built only for the part of the list on screen (`_Rows`), and `show_keys`
    with the same key list as before costs nothing however many consoles there are:
    the rows read the consoles through the mapping they were given when drawn."""

    signals = ["attach", "focus"]

    def __init__(self) -> None:
        self._keys: Sequence[str] = []
        self._lookup: Mapping[str, ConsoleInfo] = {}
        self._index: dict[str, int] | None = {}
        self._following: Collection[str] = ()
        self._alerted: Collection[str] = ()
        self._idle: Callable[[str], float | None] | None = None
        self._stale = False
        self._empty = "no consoles"
        self._wide = False
        self._cache: dict[str, tuple[str, urwid.Widget]] = {}
        self._walker = _Rows(self._row)
        self._listbox = urwid.ListBox(self._walker)
        self._columns = urwid.Text(_COLUMNS, wrap="clip")
        super().__init__(urwid.Frame(self._listbox, header=urwid.AttrMap(self._columns, "columns")))

    @property
    def focused(self) -> ConsoleInfo | None:
        if not self._keys:
            return None
        return self._lookup.get(self._keys[min(self._walker.focus, len(self._keys) - 1)])

    @property
    def keys(self) -> list[str]:
        """The keys shown, in order."""
        return list(self._keys)

    def show(
        self,
        consoles: Sequence[ConsoleInfo],
        following: Collection[str] = (),
        empty: str = "",
        **marks: Unpack[_RowMarks],
    ) -> None:
        """Show `consoles` in order, keeping the focus on the same console if it is
        still there; `following` are the keys to mark (pinned); `marks` as
        `_RowMarks` says."""
        keys = [c.key for c in consoles]
        self.show_keys(keys, {c.key: c for c in consoles}, following, empty, **marks)

    def show_keys(
        self,
        keys: Sequence[str],
        lookup: Mapping[str, ConsoleInfo],
        following: Collection[str] = (),
        empty: str = "",
        *,
        idle: Callable[[str], float | None] | None = None,
        stale: bool = False,
        alerted: Collection[str] = (),
    ) -> None:
        """`show()` by key: `keys` in order, each looked up in `lookup` when its row is
        drawn.  Pass the same `keys` object again when the order has not changed."""
        before = self.focused
        if keys is not self._keys:
            self._keys, self._index = keys, None
        self._lookup = lookup
        self._following, self._idle, self._stale = following, idle, stale
        self._alerted = alerted
        self._empty = empty or "no consoles"
        if len(self._cache) > 4 * 1024:
            self._cache.clear()
        walker = self._walker
        walker.size = max(1, len(keys))
        if before is not None and (walker.focus >= len(keys) or keys[walker.focus] != before.key):
            if self._index is None:
                self._index = {k: i for i, k in enumerate(keys)}
            walker.focus = self._index.get(before.key, 0)
        elif before is None:
            walker.focus = 0
        walker.changed()
        self._focus_moved(before)

    def _row(self, position: int) -> urwid.Widget:
        if not self._keys:
            return urwid.Text(self._empty)
        key = self._keys[position]
        console = self._lookup.get(key)
        if console is None:  # gone since the order was computed; the next show drops it
            return urwid.SelectableIcon("  ...", 0)
        idle = self._idle(key) if self._idle is not None and self._wide else None
        text = console_row(
            console,
            key in self._following,
            idle=idle,
            activity=self._wide,
            stale=self._stale,
            alerted=key in self._alerted,
        )
        cached = self._cache.get(key)
        if cached is not None and cached[0] == text:
            return cached[1]
        widget = urwid.AttrMap(urwid.SelectableIcon(text, 0), None, "focus")
        self._cache[key] = (text, widget)
        return widget

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        wide = size[0] >= WIDE
        if wide != self._wide:
            self._wide = wide
            self._columns.set_text(_COLUMNS_WIDE if wide else _COLUMNS)
            self._walker.changed()
        return super().render(size, focus)

    def move(self, delta: int) -> None:
        """Move the focus by `delta` rows, clamped to the list."""
        if not self._keys:
            return
        before = self.focused
        position = self._walker.focus or 0
        self._walker.set_focus(max(0, min(len(self._keys) - 1, position + delta)))
        self._focus_moved(before)

    def keypress(self, size: tuple[()] | tuple[int] | tuple[int, int], key: str) -> str | None:
        if key == "enter" and self.focused is not None:
            urwid.emit_signal(self, "attach", self.focused)
            return None
        before = self.focused
        unhandled = super().keypress(size, key)
        self._focus_moved(before)
        return unhandled

    def _focus_moved(self, before: ConsoleInfo | None) -> None:
        after = self.focused
        if (before.key if before else None) != (after.key if after else None):
            urwid.emit_signal(self, "focus", after)


class TailPane(Wrap):
    """The output of the focused console, newest line at the bottom."""

    def __init__(self) -> None:
        self._text = _BottomText()
        self._box = urwid.LineBox(self._text, title="tail")
        super().__init__(self._box)

    def selectable(self) -> bool:
        return False  # the console list keeps the keyboard

    def show(
        self,
        name: str | None,
        data: bytes,
        following: bool,
        live: bool = False,
        message: str | None = None,
    ) -> None:
        """`data` is the buffered output of console `name` (None: no console);
        `following`: pinned (kept live when the focus moves on), `live`: followed
        because it has the focus (the preview follows the focus);
        `message`: why there is no output to show instead."""
        box = self._box
        if message is not None and name is not None:
            box.set_title(f"tail: {safe(name)}")
            self._text.set_lines([message])
        elif name is None:
            box.set_title("tail")
            self._text.set_lines([])
        elif following or live:
            state = "following" if following else "live"
            box.set_title(f"tail: {safe(name)} ({state})")
            # A box is never taller than the terminal; 200 lines is plenty.
            self._text.set_lines(screen_lines(data, limit=200))
        else:
            box.set_title(f"tail: {safe(name)}")
            self._text.set_lines(["not following this console yet; press t to pin its output"])


class GridView(Wrap):
    """Several live tails at once, in a grid of boxes (docs/vspc-tui.md, "Grid"): the
    pinned consoles, or the most recently active ones.  Cells beyond the consoles shown stay empty.

    The grid has as many cells as fit: 2x2 on an 80x24 terminal, up to 3x3 on a large
    one (`layout`).  When a render finds the cell count changed it emits "resized", so
    the controller can pick that many consoles."""

    signals = ["resized"]

    def __init__(self) -> None:
        self.grid_columns, self.grid_rows = 2, 2
        self._tails: list[tuple[str, bytes]] = []
        self._title = urwid.Text("", wrap="clip")
        self._frame: urwid.Frame[urwid.Widget, Any, None] = urwid.Frame(
            urwid.SolidFill(" "), header=urwid.AttrMap(self._title, "columns")
        )
        super().__init__(self._frame)
        self._build()

    @property
    def capacity(self) -> int:
        return self.grid_columns * self.grid_rows

    @staticmethod
    def layout(size: tuple[int, int]) -> tuple[int, int]:
        """(columns, rows) of cells for a grid of `size`: cells at least ~50x10."""
        maxcol, maxrow = size
        return max(2, min(3, maxcol // 50)), max(2, min(3, maxrow // 10))

    def selectable(self) -> bool:
        return False

    def _build(self) -> None:
        self._texts = [_BottomText() for _ in range(self.capacity)]
        self._boxes = [urwid.LineBox(t, title="-") for t in self._texts]
        cols = self.grid_columns
        self._frame.body = urwid.Pile(
            [urwid.Columns(self._boxes[r * cols : (r + 1) * cols]) for r in range(self.grid_rows)]
        )
        self._fill()

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        layout = self.layout(size)
        if layout != (self.grid_columns, self.grid_rows):
            self.grid_columns, self.grid_rows = layout
            self._build()
            urwid.emit_signal(self, "resized")
        return super().render(size, focus)

    def show(self, title: str, tails: Sequence[tuple[str, bytes]]) -> None:
        """`tails`: (console name, buffered output) per cell; those beyond `capacity`
        are not shown."""
        self._title.set_text(title)
        self._tails = list(tails)
        self._fill()

    def _fill(self) -> None:
        for i, (text, box) in enumerate(zip(self._texts, self._boxes, strict=True)):
            if i < len(self._tails):
                name, data = self._tails[i]
                box.set_title(safe(name))
                text.set_lines(screen_lines(data, limit=100))
            else:
                box.set_title("-")
                text.set_lines([])


# `show` counters the traffic line names, in its order; zero is shown only for the
# first three (a console that never aborted a vMotion need not say so).
_TRAFFIC = (
    ("bytes_from_vm", "from VM {} B", True),
    ("bytes_to_vm", "to VM {} B", True),
    ("vmotions", "vMotions {}", True),
    ("vmotion_aborts", "aborted {}", False),
    ("input_dropped", "input dropped {} B", False),
)


def _client_line(client: ClientInfo, now: float) -> str:
    # One line per client, short enough for 80 columns in the usual case; the byte
    # counts only from a daemon that sends them (older ones do not).
    ro = " read-only" if client.readonly else ""
    age = duration(now - client.since, coarse=True)
    line = f"  #{client.id} {client.kind.value} {who(client)} {client.mode.value}{ro}"
    line += f" since {since(client.since, time_only=True)} ({age})"
    if client.bytes_in is not None or client.bytes_out is not None:
        sent, got = (("-" if n is None else n) for n in (client.bytes_in, client.bytes_out))
        line += f"  in {sent} B out {got} B"
    return line


def detail_lines(
    console: ConsoleInfo,
    now: float,
    idle: float | None,
    alerts: Sequence[tuple[float, str, str, str]] = (),
) -> list[str]:
    """The detail pane's text: what `show` says about one console (docs/vspc-tui.md, "Detail").

    Args:
        console: the typed `show` reply (or the list row until it arrives); fields an
            older daemon does not send (counters, per-client bytes) are not shown.
        now: Unix time ("since" and "last active" are shown as ages).
        idle: seconds since the console was last active, as far as anyone knows.
        alerts: the console's alerts seen this session, oldest first, as (Unix time,
            rule, severity, line).
    """
    lines = [
        f"name     {safe(console.name)}   key {safe(console.key)}",
        f"uuid     {safe(console.uuid)}   port "
        + ("-" if console.port is None else str(console.port)),
        f"VM       {_vm_state(console)}"
        + (f" from {safe(console.vm_peer)}" if console.vm_peer else "")
        + (f"   uri {safe(console.service_uri)}" if console.service_uri else ""),
    ]
    counters = console.counters or {}
    traffic = [
        text.format(counters[name])
        for name, text, zero in _TRAFFIC
        if name in counters and (zero or counters[name])
    ]
    lines.append("traffic  " + ("   ".join(traffic) if traffic else "(no counters from vspcd)"))
    lines.append("active   " + ("-" if idle is None else f"{duration(idle, coarse=True)} ago"))
    if console.lock is None:
        lines.append("lock     none")
    else:
        holder = console.lock_holder
        by = f" held by client {holder.id} ({who(holder)})" if holder is not None else ""
        lines.append(f"lock     {console.lock.value}{by}")
    lines.append(f"clients  {len(console.attached)}")
    lines.extend(_client_line(client, now) for client in console.attached)
    if alerts:
        lines.append(f"alerts   {len(alerts)} seen (A lists every console's)")
        lines.extend(
            f"  {duration(max(0.0, now - when), coarse=True)} ago  {safe(rule)} "
            f"({safe(severity)}): {safe(line)}"
            for when, rule, severity, line in alerts
        )
    return lines


class DetailPane(Wrap):
    """The focused console in detail (`detail_lines`), in place of the tail pane."""

    def __init__(self) -> None:
        self._text = urwid.Text("", wrap="clip")
        self._box = urwid.LineBox(urwid.Filler(self._text, valign="top"), title="detail")
        super().__init__(self._box)

    def selectable(self) -> bool:
        return False

    def show(self, title: str, lines: Sequence[str]) -> None:
        self._box.set_title(title)
        self._text.set_text("\n".join(lines))


class EventLog(Wrap):
    """The event log, newest line at the bottom."""

    def __init__(self) -> None:
        self._text = _BottomText()
        super().__init__(urwid.LineBox(self._text, title="events"))

    def selectable(self) -> bool:
        return False

    def show(self, entries: Iterable[LogEntry]) -> None:
        self._text.set_lines(
            [
                f"{since(e.when, time_only=True)}  {e.text}"  # the model made it safe
                for e in list(entries)[-200:]
            ]
        )


class StatusBar(Wrap):
    """Two rows: the last message (or error) and the key hints of the current context."""

    def __init__(self) -> None:
        self._message = urwid.Text("", wrap="clip")
        self._hints = urwid.Text("", wrap="clip")
        self._message_attr = urwid.AttrMap(self._message, "status")
        super().__init__(urwid.Pile([self._message_attr, urwid.AttrMap(self._hints, "hints")]))

    def show(self, message: str, hints: str, error: bool = False, connection: str = "") -> None:
        """`connection`, when not empty, says the dashboard is not connected to vspcd;
        it leads the line whatever the last message was, so nothing hides it."""
        if connection:
            message = f"{connection} | {message}" if message else connection
            error = True
        self._message.set_text(safe(message))
        self._message_attr.set_attr_map({None: "error" if error else "status"})
        self._hints.set_text(hints)
