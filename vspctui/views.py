"""vspc-tui's views: urwid widgets that show the model and say what the user did.

Boundary: each view is a `WidgetWrap` with a `show(...)` method taking plain data
(`ConsoleInfo`, bytes, log entries, key bindings) and, where the user acts on it, its
own urwid signals (`ConsoleList` emits "attach" and "focus", `PromptDialog` emits
"change").  Views never talk to vspcd and never read the model themselves; the
controller (vspctui/app.py) calls `show()` after every change, as urwid's
`examples/graph.py` does.  `PALETTE` is declared here, next to the attributes it names.

Everything that came from the daemon or a VM goes through `safe()`/`screen_lines()`
before it reaches a `Text`: a VM name or console output is arbitrary bytes, and an
escape sequence passed to the terminal would repaint or reconfigure it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Sequence

import urwid
from urwid.widget import AbstractFlowWidget

from vspc.common.admin import ConsoleInfo, LockMode, VMotionPhase
from vspc.vspctui.keys import KEYS, Binding, help_sections
from vspc.vspctui.model import LogEntry

__all__ = [
    "LOCK_HELP",
    "PALETTE",
    "ConsoleList",
    "EventLog",
    "HelpView",
    "LockPicker",
    "PromptDialog",
    "StatusBar",
    "TailPane",
    "console_row",
    "safe",
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

LOCK_HELP = {
    LockMode.EXCLUSIVE: "only you may be attached",
    LockMode.WRITE: "only you type; others watch",
    LockMode.FREE_FOR_ALL: "all type; refused under a lock",
    LockMode.FREE_FOR_ALL_OR_READONLY: "all type; read-only under a write lock",
}

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


def safe(text: str) -> str:
    """`text` with every control character (C0, DEL, C1) shown in caret/hex form."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(_visible(c) if _is_control(c) else c for c in text)


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

    _sizing = frozenset([urwid.Sizing.BOX])
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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _vm_state(console: ConsoleInfo) -> str:
    if console.vmotion is VMotionPhase.PENDING:
        return "vmotion"
    if console.vmotion is VMotionPhase.PEERED:
        return "vmotion>"
    if console.connected:
        return "up"
    if console.expires_in is not None:
        return f"down {_duration(console.expires_in)}"
    return "down"


_COLUMNS = f"  {'NAME':<24} {'PORT':>5}  {'VM':<9} {'CL':>3}  LOCK"


def console_row(console: ConsoleInfo, following: bool = False) -> str:
    """One console list row: follow mark, name, port, VM state, clients, lock."""
    name = safe(console.name)
    if len(name) > 24:
        name = name[:23] + "~"
    port = "-" if console.port is None else str(console.port)
    lock = "-"
    if console.lock is not None:
        holder = console.lock_holder
        who = f" ({safe(holder.user or holder.peer)})" if holder is not None else ""
        lock = console.lock.value + who
    mark = "*" if following else " "
    return f"{mark} {name:<24} {port:>5}  {_vm_state(console):<9} {console.clients:>3}  {lock}"


# ===================================================================== the views


class ConsoleList(urwid.WidgetWrap[urwid.Widget]):
    """One row per console.  Emits "attach" with the focused `ConsoleInfo` on Enter,
    and "focus" with the newly focused one (or None) when the focus moves."""

    signals = ["attach", "focus"]

    def __init__(self) -> None:
        self._consoles: list[ConsoleInfo] = []
        self._walker: urwid.SimpleFocusListWalker[AbstractFlowWidget] = urwid.SimpleFocusListWalker(
            []
        )
        self._listbox = urwid.ListBox(self._walker)
        columns = urwid.AttrMap(urwid.Text(_COLUMNS, wrap="clip"), "columns")
        super().__init__(urwid.Frame(self._listbox, header=columns))

    @property
    def focused(self) -> ConsoleInfo | None:
        if not self._consoles:
            return None
        position = self._walker.focus
        return self._consoles[position] if position is not None else None

    def show(
        self, consoles: Sequence[ConsoleInfo], following: Collection[str] = (), empty: str = ""
    ) -> None:
        """Show `consoles` in order, keeping the focus on the same console if it is
        still there; `following` are the keys whose output is being tailed."""
        before = self.focused
        self._consoles = list(consoles)
        rows: list[AbstractFlowWidget] = [
            urwid.AttrMap(
                urwid.SelectableIcon(console_row(c, c.key in following), 0), None, "focus"
            )
            for c in self._consoles
        ]
        if not rows:
            rows = [urwid.Text(empty or "no consoles")]
        self._walker[:] = rows
        keys = [c.key for c in self._consoles]
        if before is not None and before.key in keys:
            self._walker.set_focus(keys.index(before.key))
        elif rows:
            self._walker.set_focus(0)
        self._focus_moved(before)

    def move(self, delta: int) -> None:
        """Move the focus by `delta` rows, clamped to the list."""
        if not self._consoles:
            return
        before = self.focused
        position = self._walker.focus or 0
        self._walker.set_focus(max(0, min(len(self._consoles) - 1, position + delta)))
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


class TailPane(urwid.WidgetWrap[urwid.Widget]):
    """The output of the focused console, newest line at the bottom."""

    def __init__(self) -> None:
        self._text = _BottomText()
        self._box = urwid.LineBox(self._text, title="tail")
        super().__init__(self._box)

    def selectable(self) -> bool:
        return False  # the console list keeps the keyboard

    def show(self, name: str | None, data: bytes, following: bool) -> None:
        """`data` is the buffered output of console `name` (None: no console)."""
        box = self._box
        if name is None:
            box.set_title("tail")
            self._text.set_lines([])
        elif following:
            box.set_title(f"tail: {safe(name)} (following)")
            # A box is never taller than the terminal; 200 lines is plenty.
            self._text.set_lines(screen_lines(data, limit=200))
        else:
            box.set_title(f"tail: {safe(name)}")
            self._text.set_lines(["not following this console: press t to follow its output"])


class EventLog(urwid.WidgetWrap[urwid.Widget]):
    """The event log, newest line at the bottom."""

    def __init__(self) -> None:
        self._text = _BottomText()
        super().__init__(urwid.LineBox(self._text, title="events"))

    def selectable(self) -> bool:
        return False

    def show(self, entries: Iterable[LogEntry]) -> None:
        self._text.set_lines(
            [
                f"{time.strftime('%H:%M:%S', time.localtime(e.when))}  {safe(e.text)}"
                for e in list(entries)[-200:]
            ]
        )


class StatusBar(urwid.WidgetWrap[urwid.Widget]):
    """Two rows: the last message (or error) and the key hints of the current context."""

    def __init__(self) -> None:
        self._message = urwid.Text("", wrap="clip")
        self._hints = urwid.Text("", wrap="clip")
        self._message_attr = urwid.AttrMap(self._message, "status")
        super().__init__(urwid.Pile([self._message_attr, urwid.AttrMap(self._hints, "hints")]))

    def show(self, message: str, hints: str, error: bool = False) -> None:
        self._message.set_text(safe(message))
        self._message_attr.set_attr_map({None: "error" if error else "status"})
        self._hints.set_text(hints)


class HelpView(urwid.WidgetWrap[urwid.Widget]):
    """The key table, one section per context; scrolls with up/down."""

    def __init__(self, keys: Sequence[Binding] = KEYS) -> None:
        self._walker: urwid.SimpleFocusListWalker[AbstractFlowWidget] = urwid.SimpleFocusListWalker(
            []
        )
        super().__init__(urwid.LineBox(urwid.ListBox(self._walker), title="vspc-tui keys"))
        self.show(keys)

    def show(self, keys: Sequence[Binding]) -> None:
        rows: list[AbstractFlowWidget] = []
        for title, bindings in help_sections(keys):
            width = max(len(k) for k, _ in bindings)
            rows.append(urwid.AttrMap(urwid.Text(title), "columns"))
            rows.extend(urwid.Text(f"  {k:<{width}}  {h}") for k, h in bindings)
            rows.append(urwid.Divider())
        self._walker[:] = rows
        self._walker.set_focus(0)


class PromptDialog(urwid.WidgetWrap[urwid.Widget]):
    """A question and a line of text (the filter, the reason of a clear).  Emits
    "change" with the text as it is edited; Enter and Esc are left to the key table."""

    signals = ["change"]

    def __init__(self, title: str, question: str, caption: str, text: str = "") -> None:
        self._edit = urwid.Edit(caption, text)
        urwid.connect_signal(self._edit, "postchange", self._changed)
        body = urwid.Pile([urwid.Text(safe(question)), urwid.Divider(), self._edit])
        super().__init__(urwid.AttrMap(urwid.LineBox(body, title=safe(title)), "dialog"))

    @property
    def text(self) -> str:
        text: str = self._edit.edit_text
        return text

    def show(self, text: str) -> None:
        self._edit.set_edit_text(text)
        self._edit.set_edit_pos(len(text))

    def _changed(self, edit: urwid.Edit, old: str) -> None:
        urwid.emit_signal(self, "change", self._edit.edit_text)


class LockPicker(urwid.WidgetWrap[urwid.Widget]):
    """The four lock modes, one per row; `selected` is the focused one."""

    def __init__(self, console: str) -> None:
        self._modes = list(LockMode)
        width = max(len(m.value) for m in self._modes)
        choices = [
            urwid.AttrMap(
                urwid.SelectableIcon(f"{m.value:<{width}}  {LOCK_HELP[m]}", 0), None, "focus"
            )
            for m in self._modes
        ]
        self._choices = urwid.Pile(choices)
        question = urwid.Text(f"attach to {safe(console)} with lock mode:")
        body = urwid.Pile([question, urwid.Divider(), self._choices])
        super().__init__(urwid.AttrMap(urwid.LineBox(body, title="lock mode"), "dialog"))
        body.focus_position = 2

    @property
    def selected(self) -> LockMode:
        return self._modes[self._choices.focus_position]

    def show(self, mode: LockMode) -> None:
        self._choices.focus_position = self._modes.index(mode)
