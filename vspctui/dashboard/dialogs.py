"""vspc-tui's dialogs: the overlays that ask before acting, and the requests they make.

Boundary: `Dialogs` puts one overlay (vspctui/dashboard/overlays.py) over the
dashboard's frame, hands the keyboard to its key context (vspctui/dashboard/keys.py:
Enter confirms, Esc cancels) and, on confirm, runs what the dialog was for: the help,
the filter, picking an attach lock mode, the alert list (admin `alerts`), and the
admin requests `clear`, `kick` and `break` (docs/admin-protocol.md), each with the
reason the operator typed.  It reaches the
rest of the dashboard only through `Host`, which the controller
(vspctui/dashboard/app.py) implements.  Keys and wording: docs/vspc-tui.md.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Protocol

import urwid

from vspc.common.admin import AdminError, ClientInfo, ConsoleInfo, LockMode
from vspc.vspctui.client import AdminClient, ClientError
from vspc.vspctui.dashboard.keys import KeyContext
from vspc.vspctui.dashboard.layout import Layout
from vspc.vspctui.dashboard.model import Model
from vspc.vspctui.dashboard.overlays import (
    AlertsView,
    ClientPicker,
    HelpView,
    LockPicker,
    PromptDialog,
)

__all__ = ["ALERT_LIST", "Dialogs", "Host"]

ALERT_LIST = 100  # alerts the A list asks for


def _stamp(when: object) -> str:
    if not isinstance(when, int | float):
        return "-"
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


class Host(Protocol):
    """What the dialogs need of the controller."""

    model: Model
    layout: Layout
    loop: urwid.MainLoop | None

    @property
    def client(self) -> AdminClient | None: ...

    def say(self, message: str, error: bool = False) -> None: ...

    def refresh(self, consoles: bool = True) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def attach(self, console: ConsoleInfo, lock: LockMode | None, readonly: bool) -> None: ...


class Dialogs:
    """At most one dialog at a time, with what Enter and Esc do while it is open."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.dialog: urwid.Widget | None = None
        self._confirm: Callable[[], None] | None = None
        self._cancel: Callable[[], None] | None = None

    # -- the overlay -------------------------------------------------------------------

    def _open(
        self,
        widget: urwid.Widget,
        context: KeyContext,
        *,
        confirm: Callable[[], None] | None = None,
        cancel: Callable[[], None] | None = None,
        height: Any = "pack",
    ) -> None:
        loop, layout = self._host.loop, self._host.layout
        assert loop is not None
        self.dialog, layout.context = widget, context
        self._confirm, self._cancel = confirm, cancel
        loop.widget = urwid.Overlay(
            widget, layout.frame, "center", ("relative", 70), "middle", height, min_width=40
        )

    def _close(self) -> None:
        loop, layout = self._host.loop, self._host.layout
        assert loop is not None
        self.dialog, layout.context = None, KeyContext.DASHBOARD
        self._confirm = self._cancel = None
        loop.widget = layout.frame

    def confirm(self) -> None:
        """Enter: close the dialog and do what it was for."""
        confirm = self._confirm
        self._close()
        if confirm is not None:
            confirm()

    def clear_text(self) -> None:
        """C-u in a prompt: empty its text (the filter then shows every console)."""
        if isinstance(self.dialog, PromptDialog):
            self.dialog.show("")

    def cancel(self) -> None:
        """Esc: close the dialog and undo what it changed while open."""
        cancel = self._cancel
        self._close()
        if cancel is not None:
            cancel()

    # -- the dialogs -------------------------------------------------------------------

    def show_help(self) -> None:
        self._open(HelpView(), KeyContext.HELP, height=("relative", 80))

    def show_alerts(self) -> None:
        """A: the newest alerts of every console the operator may watch; seeing them
        acknowledges the `!` marks."""
        admin = self._connected()
        if admin is not None:
            self._host.spawn(self._alerts(admin))

    async def _alerts(self, admin: AdminClient) -> None:
        host = self._host
        try:
            reply = await admin.request("alerts", limit=ALERT_LIST)
        except (AdminError, ClientError) as exc:
            host.say(f"alerts: {exc}", error=True)
            return
        rows = reply.get("alerts")
        rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
        if self.dialog is not None:
            return  # another dialog opened meanwhile: it keeps the keyboard
        self._open(AlertsView(rows, _stamp), KeyContext.HELP, height=("relative", 80))
        host.model.acknowledge_alerts()
        host.refresh()

    def ask_filter(self) -> None:
        previous = self._host.model.filter
        dialog = PromptDialog("filter", "Show the consoles whose name contains:", "/ ", previous)
        urwid.connect_signal(dialog, "change", self._set_filter)
        self._open(dialog, KeyContext.DIALOG, cancel=lambda: self._set_filter(previous))

    def _set_filter(self, text: str) -> None:
        self._host.model.filter = text
        self._host.layout.show_all()

    def ask_clear(self) -> None:
        console = self._host.layout.console_list.focused
        if console is None:
            return
        dialog = PromptDialog(
            "clear",
            f"Disconnect every client of {console.name} ({console.clients} attached)?  "
            "Each sees the reason.  Enter clears, Esc cancels.",
            "reason: ",
        )
        self._open(
            dialog,
            KeyContext.DIALOG,
            confirm=lambda: self._host.spawn(self._clear(console, dialog.text)),
        )

    async def _clear(self, console: ConsoleInfo, reason: str) -> None:
        host = self._host
        admin = self._connected()
        if admin is not None:
            try:
                reply = await admin.request("clear", vm=console.key, reason=reason or None)
            except (AdminError, ClientError) as exc:
                host.say(f"clear {console.name}: {exc}", error=True)
            else:
                host.say(f"cleared {reply.get('cleared', '?')} client(s) from {console.name}")
        host.refresh()

    def ask_break(self) -> None:
        console = self._host.layout.console_list.focused
        if console is None:
            return
        dialog = PromptDialog(
            "break",
            f"Send a serial break to {console.name}?  A Linux guest may take it as "
            "SysRq (the next key it gets is the command).  Enter sends, Esc cancels.",
            "",
        )
        self._open(
            dialog,
            KeyContext.DIALOG,
            confirm=lambda: self._host.spawn(self._break(console)),
            cancel=lambda: self._host.say(f"no break sent to {console.name}"),
        )

    async def _break(self, console: ConsoleInfo) -> None:
        host = self._host
        admin = self._connected()
        if admin is not None:
            try:
                await admin.request("break", vm=console.key)
            except (AdminError, ClientError) as exc:
                host.say(f"break {console.name}: {exc}", error=True)
            else:
                host.say(f"break sent to {console.name}")

    def pick_lock(self) -> None:
        host = self._host
        console = host.layout.console_list.focused
        if console is None:
            return
        picker = LockPicker(console.name)
        picker.show(LockMode.WRITE)
        self._open(
            picker, KeyContext.DIALOG, confirm=lambda: host.attach(console, picker.selected, False)
        )

    def pick_client(self) -> None:
        console = self._host.layout.console_list.focused
        if console is None:
            return
        if not console.attached:
            self._host.say(f"no client is attached to {console.name}")
            return
        picker = ClientPicker(console.name, console.attached)
        self._open(
            picker, KeyContext.DIALOG, confirm=lambda: self._ask_kick(console, picker.selected)
        )

    def _ask_kick(self, console: ConsoleInfo, client: ClientInfo) -> None:
        host = self._host
        who = client.user or client.peer
        dialog = PromptDialog(
            "kick",
            f"Kick client #{client.id} ({client.kind.value}, {who}) off {console.name}?  "
            "It sees the reason.  Enter kicks, Esc cancels.",
            "reason: ",
        )
        self._open(
            dialog,
            KeyContext.DIALOG,
            confirm=lambda: host.spawn(self._kick(console, client, dialog.text)),
            cancel=lambda: host.say(f"kept client #{client.id} on {console.name}"),
        )

    async def _kick(self, console: ConsoleInfo, client: ClientInfo, reason: str) -> None:
        host = self._host
        admin = self._connected()
        if admin is not None:
            try:
                await admin.request("kick", client=client.id, reason=reason or None)
            except (AdminError, ClientError) as exc:
                host.say(f"kick #{client.id} off {console.name}: {exc}", error=True)
            else:
                host.say(f"kicked client #{client.id} off {console.name}")
        host.refresh()

    def _connected(self) -> AdminClient | None:
        """The admin connection, or None after saying there is none."""
        host = self._host
        if host.client is None or not host.model.connected:
            host.say("not connected to vspcd", error=True)
            return None
        return host.client
