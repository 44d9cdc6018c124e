"""vspc-tui's layout: the dashboard's widgets, how a mode arranges them, and how the
model is put on them.

Boundary: `Layout` owns the views (vspctui/dashboard/views.py) and the frame around
them, and knows what each pane shows: the console list, the focused console's tail,
the grid of tails, the detail of a `show`, the event log, the header and the status
line.  It reads the model (vspctui/dashboard/model.py) and never talks to vspcd; the
controller (vspctui/dashboard/app.py) decides when to call `show_all()` and what the
status line says.  Usage: docs/vspc-tui.md.
"""

from __future__ import annotations

from enum import StrEnum

import urwid

from vspc.common.admin import ConsoleInfo
from vspc.common.display import safe
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.dashboard.keys import KeyContext, hints
from vspc.vspctui.dashboard.model import Model
from vspc.vspctui.dashboard.views import (
    ConsoleList,
    DetailPane,
    EventLog,
    GridView,
    StatusBar,
    TailPane,
    detail_lines,
)

__all__ = ["Layout", "Mode"]


class Mode(StrEnum):
    """What the pane under the console list shows."""

    TAIL = "tail"  # the focused console's output
    GRID = "grid"  # several live tails
    DETAIL = "detail"  # the focused console's `show`


class Layout:
    """The views in a frame: a header, the body for the current `mode`, the status bar.

    State the panes draw from besides the model: `grid_keys` (the grid's consoles),
    `shown_detail` (the last `show` of the focused console, as (key, reply)), the
    status line's `message`/`error`, `connection` ("" while connected, else what the
    status line says about it) and `context` (what has the keyboard, for the hints).
    """

    def __init__(self, model: Model, address: AdminAddress) -> None:
        self.model = model
        self.address = address
        self.console_list = ConsoleList()
        self.tail_pane = TailPane()
        self.grid = GridView()
        self.detail = DetailPane()
        self.event_log = EventLog()
        self.status = StatusBar()
        self._header = urwid.Text("", wrap="clip")
        self._list_box = urwid.LineBox(self.console_list, title="consoles")
        self._body = urwid.Pile([self._list_box])
        self.mode = Mode.TAIL
        self.arrange()
        header = urwid.AttrMap(self._header, "header")
        self.frame = urwid.Frame(self._body, header=header, footer=self.status)

        self.grid_keys: list[str] = []
        self.shown_detail: tuple[str, ConsoleInfo] | None = None
        self.message, self.error = "", False
        self.connection = ""
        self.context = KeyContext.DASHBOARD

    def arrange(self) -> None:
        """The body for the current mode: the list, then the tail pane and the event
        log, or the grid or the detail pane in the room of both."""
        pile = self._body
        weight = pile.options("weight", 2)
        if self.mode is Mode.TAIL:
            parts = [
                (self._list_box, pile.options("weight", 3)),
                (self.tail_pane, pile.options("weight", 3)),
                (self.event_log, weight),
            ]
        else:
            middle = self.grid if self.mode is Mode.GRID else self.detail
            parts = [(self._list_box, weight), (middle, pile.options("weight", 5))]
        pile.contents = parts
        pile.focus_position = 0

    def pick_grid(self) -> bool:
        """Choose the grid's consoles: the pinned ones, else the most recently active
        (the first of the list if nothing was seen active yet).  True if they changed."""
        model, capacity = self.model, self.grid.capacity
        if model.pinned:
            keys = sorted(model.pinned, key=lambda k: model.consoles[k].name.casefold())
        else:
            keys = model.most_active(capacity)
            if len(keys) < capacity:
                keys += [k for k in self.console_list.keys[:capacity] if k not in keys]
        keys = keys[:capacity]
        if keys == self.grid_keys:
            return False
        self.grid_keys = keys
        return True

    # -- drawing -----------------------------------------------------------------------

    def show_all(self) -> None:
        """Every pane, the header and the status line, from the model."""
        model = self.model
        visible = model.visible_keys()
        empty = f"no console matches {safe(model.filter)}" if model.filter else "no consoles"
        if not model.connected:
            empty = "not connected to vspcd"
        self.console_list.show_keys(
            visible,
            model.consoles,
            model.pinned,
            empty,
            idle=model.idle,
            stale=not model.connected,
            alerted=model.alerts,
        )
        self.show_middle()
        self.event_log.show(list(model.log))
        shown = f"{len(visible)} of {len(model.consoles)}" if model.filter else len(visible)
        text = " vspc-tui  " + ("" if model.connected else "[NOT CONNECTED]  ")
        text += f"{self.address}  consoles: {shown}"
        if model.filter:
            text += f"  filter: {safe(model.filter)}"
        text += f"  sort: {model.sort.value}"
        self._header.set_text(text)
        self.show_status()

    def show_status(self) -> None:
        self.status.show(self.message, hints(self.context), self.error, self.connection)

    def say(self, message: str, error: bool = False) -> None:
        """Put `message` on the status line (drawn with the next redraw)."""
        self.message, self.error = message, error
        self.show_status()

    def show_middle(self) -> None:
        """The pane under the list, for the current mode."""
        if self.mode is Mode.GRID:
            self._show_grid()
        elif self.mode is Mode.DETAIL:
            self._show_detail()
        else:
            self._show_tail()

    def _show_tail(self) -> None:
        console = self.console_list.focused
        if console is None:
            self.tail_pane.show(None, b"", False)
        elif not self.model.connected:
            self.tail_pane.show(console.name, b"", False, message="not connected to vspcd")
        else:
            key, model = console.key, self.model
            pinned = key in model.pinned
            live = model.following(key) and not pinned
            self.tail_pane.show(console.name, model.tail(key), pinned and model.connected, live)

    def _show_grid(self) -> None:
        model = self.model
        tails = [
            (model.consoles[k].name, model.tail(k)) for k in self.grid_keys if k in model.consoles
        ]
        if model.pinned:
            title = f"grid: {len(tails)} pinned console(s)  (t pins/unpins, g closes)"
        else:
            title = f"grid: the {len(tails)} most recently active  (t pins, g closes)"
        self.grid.show(title, tails)

    def _show_detail(self) -> None:
        console = self.console_list.focused
        if console is None:
            self.detail.show("detail", ["no console"])
            return
        model = self.model
        shown = self.shown_detail
        if shown is not None and shown[0] == console.key:
            info, title = shown[1], f"detail: {safe(console.name)}"
        else:
            info, title = console, f"detail: {safe(console.name)} (asking vspcd)"
        seen = [(a.time, a.alert, a.severity, a.line) for a in model.alert_log.get(console.key, ())]
        self.detail.show(title, detail_lines(info, model.now(), model.idle(console.key), seen))
