"""vspc-tui's overlays: the widgets of the dialogs shown over the dashboard.

Boundary: like the views (vspctui/dashboard/views.py), each is a `WidgetWrap` with
plain data in and urwid signals out (`PromptDialog` emits "change"); Enter and Esc
are left to the key table (vspctui/dashboard/keys.py) and what they do to the
controller's dialogs (vspctui/dashboard/dialogs.py).  Names that came from the daemon
or a VM go through `vspc.common.display.safe` (docs/vspc-tui.md, "What it shows").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import urwid

from vspc.common.admin import ClientInfo, LockMode
from vspc.common.display import safe
from vspc.vspctui.dashboard.compat import Wrap
from vspc.vspctui.dashboard.keys import KEYS, Binding, help_sections
from vspc.vspctui.formatting import who

if TYPE_CHECKING:  # urwid 2.6+ names it; only annotations use it
    from urwid.widget import AbstractFlowWidget

__all__ = ["LOCK_HELP", "AlertsView", "ClientPicker", "HelpView", "LockPicker", "PromptDialog"]

LOCK_HELP = {
    LockMode.EXCLUSIVE: "only you may be attached",
    LockMode.WRITE: "only you type; others watch",
    LockMode.FREE_FOR_ALL: "all type; refused under a lock",
    LockMode.FREE_FOR_ALL_OR_READONLY: "all type; read-only under a write lock",
}


class HelpView(Wrap):
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


class AlertsView(Wrap):
    """The recent console alerts (admin `alerts`), oldest first, the newest focused;
    scrolls with up/down.  Lines come from VMs: rendered safe."""

    def __init__(self, rows: Sequence[dict[str, object]], when: Callable[[object], str]) -> None:
        self._walker: urwid.SimpleFocusListWalker[AbstractFlowWidget] = urwid.SimpleFocusListWalker(
            []
        )
        title = f"console alerts: the newest {len(rows)}" if rows else "console alerts"
        super().__init__(urwid.LineBox(urwid.ListBox(self._walker), title=title))
        self.show(rows, when)

    def show(self, rows: Sequence[dict[str, object]], when: Callable[[object], str]) -> None:
        lines: list[AbstractFlowWidget] = []
        for row in rows:
            head = (
                f"{when(row.get('time'))}  {safe(row.get('name'))}  {safe(row.get('alert'))} "
                f"({safe(row.get('severity'))})"
            )
            lines.append(urwid.AttrMap(urwid.Text(head), "columns"))
            context = row.get("context")
            if isinstance(context, list):
                lines.extend(urwid.Text(f"    {safe(line)}") for line in context)
            lines.append(urwid.Text(f"  > {safe(row.get('line'))}"))
        if not lines:
            lines.append(urwid.Text("no alerts"))
        self._walker[:] = lines
        self._walker.set_focus(len(lines) - 1)


class PromptDialog(Wrap):
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


class _Picker(Wrap):
    """A dialog: a question over one selectable row per choice; the focused row is
    the choice (the key table's confirm/cancel decide what happens with it)."""

    def __init__(self, title: str, question: str, labels: Sequence[str]) -> None:
        rows = [urwid.AttrMap(urwid.SelectableIcon(label, 0), None, "focus") for label in labels]
        self._choices = urwid.Pile(rows)
        body = urwid.Pile([urwid.Text(question), urwid.Divider(), self._choices])
        super().__init__(urwid.AttrMap(urwid.LineBox(body, title=title), "dialog"))
        body.focus_position = 2


class LockPicker(_Picker):
    """The four lock modes, one per row; `selected` is the focused one."""

    def __init__(self, console: str) -> None:
        self._modes = list(LockMode)
        width = max(len(m.value) for m in self._modes)
        super().__init__(
            "lock mode",
            f"attach to {safe(console)} with lock mode:",
            [f"{m.value:<{width}}  {LOCK_HELP[m]}" for m in self._modes],
        )

    @property
    def selected(self) -> LockMode:
        return self._modes[self._choices.focus_position]

    def show(self, mode: LockMode) -> None:
        self._choices.focus_position = self._modes.index(mode)


class ClientPicker(_Picker):
    """The clients of one console, one per row, to pick one to kick; `selected` is
    the focused one."""

    def __init__(self, console: str, clients: Sequence[ClientInfo]) -> None:
        self._clients = list(clients)
        super().__init__(
            "kick",
            f"kick which client of {safe(console)}?",
            [
                f"#{c.id:<4} {c.kind.value:<6} {who(c):<16} {c.mode.value}"
                + (" read-only" if c.readonly else "")
                for c in self._clients
            ],
        )

    @property
    def selected(self) -> ClientInfo:
        return self._clients[self._choices.focus_position]
