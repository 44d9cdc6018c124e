"""vspc-tui: the operator dashboard (entry point `main`), and its controller `App`.

Boundary: `App` owns the urwid `MainLoop` (on `urwid.AsyncioEventLoop`, sharing the one
asyncio loop with the admin connection), the `AdminClient`, the model
(vspctui/dashboard/model.py), the views (vspctui/dashboard/views.py) and the key table
(vspctui/dashboard/keys.py).
It subscribes to vspcd's events, folds them into the model, and redraws; keys become
commands through the table, and commands become admin requests (`tail`, `untail`,
`show`, `clear`, `kick`) or an attach session.  No threads: everything runs on the loop.

What issue #9 asked of it, and where it happens:

- The preview follows the focus: one task (`_tail_worker`) keeps the daemon's tail
  follows equal to what is wanted -- the focused console, the pinned ones (`t`) and
  the grid's -- starting the focused one first and untailing what is no longer
  wanted.  It reads the wanted set afresh after each request, so holding a key down
  over 10,000 consoles sends a few requests, not one per row passed.
- Redraws are coalesced: events fold into the model at once, the screen is redrawn
  at most every `REDRAW_EVERY` seconds under load, and the console list builds row
  widgets only for the rows on screen (vspctui/dashboard/views.py, `ConsoleList`).  Keys
  redraw at once.
- When vspcd goes away the rows turn stale ("?", never "up"), the status line says
  so on every redraw (an attach's messages cannot hide it), and `_reconnect` tries
  again with exponential back-off; on success the list is rebuilt from a fresh
  `subscribe` snapshot and the tails are started again.

Attaching suspends the dashboard: the urwid screen is stopped (the terminal goes back
to its normal mode and urwid stops reading it), `vspc attach`'s own session
(vspctui/attach.py, `run_attach`) runs on the real terminal with its raw mode and
escape menu, and when it ends the screen is started again and fully redrawn.  Events
keep arriving meanwhile, so the dashboard is current when it comes back.

Usage and keys: docs/vspc-tui.md.  Protocol: docs/admin-protocol.md (issue #4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from enum import StrEnum
from typing import Any, Protocol

import urwid

try:  # urwid >= 2.4
    from urwid.display.raw import Screen as RawScreen
except ImportError:  # urwid 2.1 (Debian 12's python3-urwid)
    from urwid.raw_display import Screen as RawScreen  # type: ignore[import-not-found,no-redef]

from vspc.common.admin import (
    AdminError,
    ClientInfo,
    ConsoleInfo,
    ErrorCode,
    EventName,
    LockMode,
)
from vspc.common.display import safe
from vspc.vspctui.attach import run_attach
from vspc.vspctui.client import (
    AdminAddress,
    AdminClient,
    ClientError,
    ConnectError,
    consoles_of,
)
from vspc.vspctui.cmdtable import (
    Context,
    ExitCode,
    NoExitParser,
    UsageError,
    client_version,
    exit_code_for,
)
from vspc.vspctui.dashboard.keys import Command, KeyContext, hints, lookup
from vspc.vspctui.dashboard.model import Model
from vspc.vspctui.dashboard.views import (
    PALETTE,
    ClientPicker,
    ConsoleList,
    DetailPane,
    EventLog,
    GridView,
    HelpView,
    LockPicker,
    PromptDialog,
    StatusBar,
    TailPane,
    detail_lines,
)
from vspc.vspctui.options import add_address_options, address_from

__all__ = [
    "ACTIVITY_POLL",
    "BACKOFF",
    "REDRAW_EVERY",
    "REPLAY",
    "TAIL_BYTES",
    "App",
    "AttachRunner",
    "Mode",
    "NotATerminal",
    "build_parser",
    "main",
]

TAIL_BYTES = 16 * 1024  # scrollback asked for when following a console
REPLAY = 4096  # scrollback shown when attaching, so the operator sees where the VM is
_PAGE = 10  # rows page up/down move the console list
REDRAW_EVERY = 0.05  # s: under a stream of events, at most 20 redraws a second
TICK = 1.0  # s: activity ages, the grid's "most active" and the detail pane refresh
BACKOFF = (0.5, 10.0)  # s: first and longest wait between reconnection attempts
ACTIVITY_POLL = 10.0  # s: `list` again for the daemon's activity figures, if it has them


class Mode(StrEnum):
    """What the pane under the console list shows."""

    TAIL = "tail"  # the focused console's output
    GRID = "grid"  # several live tails
    DETAIL = "detail"  # the focused console's `show`


class NotATerminal(Exception):
    """stdin or stdout is not a terminal; a dashboard needs one."""


class AttachRunner(Protocol):
    """`run_attach`'s signature (tests substitute a recorder)."""

    async def __call__(
        self,
        ctx: Context,
        vm: str,
        *,
        lock: LockMode | None = None,
        readonly: bool = False,
        replay: int = 0,
    ) -> int: ...


class _MainLoop(urwid.MainLoop):
    """A MainLoop that hands exceptions from its own callbacks to `on_error`.

    Without an `event_loop.run()`, which installs urwid's handler, an exception in a
    key handler or a render would only be logged by asyncio and the dashboard would
    carry on half-updated; the controller ends the run with it instead.
    """

    def __init__(self, *args: Any, on_error: Callable[[BaseException], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._on_error = on_error

    def process_input(self, keys: Iterable[str | tuple[str, int, int, int]]) -> bool:
        try:
            return super().process_input(keys)
        except Exception as exc:
            self._on_error(exc)
            return True

    def entering_idle(self) -> None:
        try:
            super().entering_idle()
        except Exception as exc:
            self._on_error(exc)


class App:
    """The controller.  Construct without a running loop; `await run()` does the rest.

    Args:
        address: where vspcd's admin protocol listens.
        screen: the urwid screen (default: the real terminal); tests pass a headless one.
        attach: runs an attach session on the terminal (default: `run_attach`).
        stdin_fd, stdout_fd: the terminal the attach session uses.
        model: the model to fill (tests inject one with a fixed clock).
        backoff: first and longest wait (s) between attempts to reconnect to vspcd.
        activity_poll: how often (s) to `list` again for the `last_output` of
            consoles nobody tails, when the daemon sends it.
    """

    def __init__(
        self,
        address: AdminAddress,
        *,
        screen: urwid.BaseScreen | None = None,
        attach: AttachRunner = run_attach,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        model: Model | None = None,
        backoff: tuple[float, float] = BACKOFF,
        activity_poll: float = ACTIVITY_POLL,
    ) -> None:
        self.address = address
        self._backoff = backoff
        self._activity_poll = activity_poll
        self._daemon_activity = False  # it sends `last_output` (issue #8)
        self.model = model or Model()
        self._screen = screen
        self._attach_runner = attach
        self._stdin_fd, self._stdout_fd = stdin_fd, stdout_fd

        # views
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
        self._layout()
        header = urwid.AttrMap(self._header, "header")
        self.frame = urwid.Frame(self._body, header=header, footer=self.status)
        urwid.connect_signal(self.console_list, "attach", self._on_attach)
        urwid.connect_signal(self.console_list, "focus", self._on_focus)
        urwid.connect_signal(self.grid, "resized", self._pick_grid)

        # what has the keyboard: the dashboard, or a dialog with its confirm/cancel
        self.context = KeyContext.DASHBOARD
        self.dialog: urwid.Widget | None = None
        self._confirm: Callable[[], None] | None = None
        self._cancel: Callable[[], None] | None = None

        self._message, self._error = "", False
        self._commands: dict[Command, Callable[[], None]] = {
            Command.UP: lambda: self.console_list.move(-1),
            Command.DOWN: lambda: self.console_list.move(1),
            Command.PAGE_UP: lambda: self.console_list.move(-_PAGE),
            Command.PAGE_DOWN: lambda: self.console_list.move(_PAGE),
            Command.TOP: lambda: self.console_list.move(-sys.maxsize),
            Command.BOTTOM: lambda: self.console_list.move(sys.maxsize),
            Command.ATTACH: lambda: self._attach_focused(None, False),
            Command.ATTACH_LOCK: self._pick_lock,
            Command.ATTACH_READONLY: lambda: self._attach_focused(None, True),
            Command.TAIL: self._toggle_pin,
            Command.GRID: lambda: self._switch(Mode.GRID),
            Command.DETAIL: lambda: self._switch(Mode.DETAIL),
            Command.SORT: self._cycle_sort,
            Command.KICK: self._pick_client,
            Command.CLEAR: self._ask_clear,
            Command.FILTER: self._ask_filter,
            Command.HELP: self._show_help,
            Command.QUIT: lambda: self.finish(ExitCode.OK),
            Command.CONFIRM: self._on_confirm,
            Command.CANCEL: self._on_cancel,
        }

        self._grid_keys: list[str] = []

        # set by run()
        self.loop: urwid.MainLoop | None = None
        self.client: AdminClient | None = None
        self.changed = asyncio.Event()  # set after every redraw (tests wait on it)
        self.attaching = False
        self._done: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._redraw_pending = False
        self._consoles_changed = False
        # tails: the consoles vspcd follows for us, and those it refused (not retried
        # until the focus moves or we reconnect)
        self._tailing: set[str] = set()
        self._tail_refused: set[str] = set()
        self._tail_wake = asyncio.Event()
        # detail: the last `show` of the focused console (key, reply), or None
        self._detail: tuple[str, ConsoleInfo] | None = None
        self._detail_wake = asyncio.Event()
        # connection: "" while connected, else what the status line says about it
        self.connection = ""
        self.reconnected = asyncio.Event()  # set on each reconnection (tests wait on it)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        """Connect, subscribe, show the dashboard until quit; returns the exit code.

        Raises:
            ConnectError: vspcd cannot be reached (before the terminal is touched).
            NotATerminal: no screen was given and stdin/stdout is not a terminal.
            AdminError, ClientError: the subscription failed.
        """
        aio = asyncio.get_running_loop()
        self.client = await AdminClient.connect(self.address)
        try:
            await self._subscribe(self.client)
            screen = self._screen
            if screen is None:
                if not (os.isatty(self._stdin_fd) and os.isatty(self._stdout_fd)):
                    raise NotATerminal("vspc-tui needs a terminal (stdin and stdout)")
                screen = RawScreen()
            self.loop = _MainLoop(
                self.frame,
                PALETTE,
                screen=screen,
                event_loop=urwid.AsyncioEventLoop(loop=aio),
                unhandled_input=self._on_key,
                handle_mouse=False,
                on_error=self._fail,
            )
            self._done = aio.create_future()
            self._say(f"connected to vspcd at {self.address}; ? for help")
            self.model.note(f"connected to vspcd: {len(self.model.consoles)} console(s)")
            self._show_all()
            self._spawn(self._session())
            self._spawn(self._tail_worker())
            self._spawn(self._detail_worker())
            self._spawn(self._ticker())
            self._spawn(self._activity_poller())
            self._catch_signals()
            with self.loop.start():
                self._refresh()
                return await self._done
        finally:
            self._release_signals()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.client is not None:
                await self.client.close()

    def finish(self, code: int) -> None:
        """End `run()` with exit code `code`."""
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    def _catch_signals(self) -> None:
        # SIGTERM/SIGHUP end the run normally, so the terminal is restored on the way out.
        aio = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                aio.add_signal_handler(signum, self.finish, 128 + signum)

    def _release_signals(self) -> None:
        aio = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                aio.remove_signal_handler(signum)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(exc)  # a bug: the handlers catch what the daemon can cause

    # -- vspcd -> model ----------------------------------------------------------------

    async def _subscribe(self, client: AdminClient) -> None:
        """Subscribe on `client` and rebuild the model from the snapshot."""
        reply = await client.request("subscribe")
        consoles = consoles_of(reply)
        self.model.load(consoles)
        # A daemon that knows when consoles were created also sends `last_output`
        # (issue #8), even if no console has printed anything yet.
        self._daemon_activity = any(
            c.created is not None or c.last_output is not None for c in consoles
        )
        self._tailing.clear()
        self._tail_refused.clear()
        self._detail = None

    async def _session(self) -> None:
        """Pump events; when the connection goes, reconnect, and pump again."""
        while True:
            why = await self._pump()
            self._connection_lost(why)
            await self._reconnect(why)

    async def _pump(self) -> str:
        """Fold events into the model until the connection ends; returns why it did."""
        client = self.client
        assert client is not None
        detail = self._detail_wake
        try:
            async for event in client.events():
                self.model.apply(event)
                name = event.event
                if name == EventName.OUTPUT:
                    # Output only changes the tails; the list need not be redrawn.
                    self._refresh(consoles=False)
                    continue
                if name in (EventName.TAIL_END, EventName.VM_EXPIRED):
                    self._tailing.discard(event.key or "")
                elif name == EventName.VM_CONNECTED:
                    # A console that was refused a tail (not there yet) may be tailed now.
                    self._tail_refused.discard(event.key or "")
                if set(self._wanted()) != self._tailing:
                    # A console appeared under the focus (e.g. right after a reconnect,
                    # before its VM did) or went away: the tails follow the list.
                    self._tail_wake.set()
                focused = self.console_list.focused
                if self.mode is Mode.DETAIL and focused is not None and event.key == focused.key:
                    detail.set()
                self._refresh()
        except (AdminError, ClientError) as exc:
            return str(exc)
        return "connection closed by vspcd"

    def _connection_lost(self, why: str) -> None:
        self.model.note(f"lost the connection to vspcd: {why}")
        self.model.disconnected()
        self._tailing.clear()
        self._detail = None
        self.connection = "not connected to vspcd"
        self._say(f"lost the connection to vspcd ({why}); reconnecting, q quits", error=True)
        self._refresh()

    async def _reconnect(self, why: str) -> None:
        """Try again until vspcd answers, waiting longer each time (up to the
        back-off's maximum), then resubscribe: the list is rebuilt from the fresh
        snapshot, never patched from what was shown before."""
        old = self.client
        if old is not None:
            await old.close()
        delay, longest = self._backoff
        attempt, last_why = 0, why
        while True:
            attempt += 1
            self.connection = f"not connected to vspcd: retry {attempt} in {delay:g}s"
            if why != last_why:  # the event log says why, once per different reason
                self.model.note(f"cannot reach vspcd: {why}")
                last_why = why
            self._refresh()
            await asyncio.sleep(delay)  # the back-off itself: nothing to wait on
            try:
                client = await AdminClient.connect(self.address)
            except ClientError as exc:
                why, delay = str(exc), min(delay * 2, longest)
                continue
            try:
                await self._subscribe(client)
            except (AdminError, ClientError) as exc:
                await client.close()
                why, delay = str(exc), min(delay * 2, longest)
                continue
            break
        self.client = client
        self.connection = ""
        self.model.note(f"reconnected to vspcd at {self.address}")
        self._say(f"reconnected to vspcd at {self.address}")
        self._tail_wake.set()
        self._detail_wake.set()
        self.reconnected.set()
        self._refresh()

    async def _activity_poller(self) -> None:
        """Events only tell about changes, and output only comes for tailed consoles;
        a daemon that sends `last_output` is asked for it again now and then, so the
        column and the activity order cover every console."""
        while True:
            await asyncio.sleep(self._activity_poll)
            client = self.client
            if not self._daemon_activity or client is None or not self.model.connected:
                continue
            try:
                consoles = consoles_of(await client.request("list"))
            except (AdminError, ClientError):
                continue  # the session notices a lost connection on its own
            self.model.learn(consoles)
            self._refresh()

    async def _ticker(self) -> None:
        """Once a `TICK`: ages in the activity column move on, the grid picks the
        most active consoles again, and the detail pane asks for fresh counters."""
        while True:
            await asyncio.sleep(TICK)
            self.model.reorder()
            if self.mode is Mode.GRID:
                self._pick_grid()
            elif self.mode is Mode.DETAIL:
                self._detail_wake.set()
            self._refresh()

    # -- drawing -----------------------------------------------------------------------

    def _refresh(self, consoles: bool = True) -> None:
        """Redraw soon: a burst of events costs one redraw, and a stream of them at
        most one per `REDRAW_EVERY`.  `consoles`: the console list (not only a tail
        buffer) may have changed."""
        self._consoles_changed |= consoles
        if not self._redraw_pending:
            self._redraw_pending = True
            asyncio.get_running_loop().call_later(REDRAW_EVERY, self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        if self._consoles_changed:
            self._consoles_changed = False
            self._show_all()
        else:
            self._show_middle()
        loop = self.loop
        # While attached the terminal belongs to the attach session.
        if loop is not None and loop.screen.started and not self.attaching:
            try:
                loop.draw_screen()
            except Exception as exc:  # a render bug: end the run with it
                self._fail(exc)
        self.changed.set()

    def _show_all(self) -> None:
        model = self.model
        visible = model.visible_keys()
        empty = f"no console matches {safe(model.filter)}" if model.filter else "no consoles"
        if not model.connected:
            empty = "not connected to vspcd"
        self.console_list.show_keys(
            visible, model.consoles, model.pinned, empty, idle=model.idle, stale=not model.connected
        )
        self._show_middle()
        self.event_log.show(list(model.log))
        shown = f"{len(visible)} of {len(model.consoles)}" if model.filter else len(visible)
        text = " vspc-tui  " + ("" if model.connected else "[NOT CONNECTED]  ")
        text += f"{self.address}  consoles: {shown}"
        if model.filter:
            text += f"  filter: {safe(model.filter)}"
        text += f"  sort: {model.sort.value}"
        self._header.set_text(text)
        self._show_status()

    def _show_status(self) -> None:
        self.status.show(self._message, hints(self.context), self._error, self.connection)

    def _layout(self) -> None:
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

    def _show_middle(self) -> None:
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
            (model.consoles[k].name, model.tail(k)) for k in self._grid_keys if k in model.consoles
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
        shown = self._detail
        if shown is not None and shown[0] == console.key:
            info, title = shown[1], f"detail: {safe(console.name)}"
        else:
            info, title = console, f"detail: {safe(console.name)} (asking vspcd)"
        self.detail.show(title, detail_lines(info, model.now(), model.idle(console.key)))

    def _say(self, message: str, error: bool = False) -> None:
        self._message, self._error = message, error
        self._show_status()  # drawn with the next redraw, whatever else changed

    # -- keys --------------------------------------------------------------------------

    def _on_key(self, key: str | tuple[str, int, int, int]) -> bool:
        """Keys no widget took: look them up in the table for the current context."""
        if not isinstance(key, str):
            return False
        command = lookup(self.context, key)
        if command is None:
            if self.context is KeyContext.DASHBOARD and len(key) == 1:
                self._say(f"no command on {key!r}; ? shows the keys")
                self._show_all()
            return False
        self._commands[command]()
        self._show_all()
        return True

    def press(self, *keys: str) -> None:
        """Feed keys as if typed (tests; the terminal's input goes the same way)."""
        assert self.loop is not None
        self.loop.process_input(keys)
        self._redraw()

    def _on_focus(self, console: ConsoleInfo | None) -> None:
        # The preview follows the focus: the worker tails the new one, untails the old.
        self._tail_refused.clear()
        self._tail_wake.set()
        if self.mode is Mode.DETAIL:
            self._detail_wake.set()
        self._show_middle()

    # -- dialogs -----------------------------------------------------------------------

    def _open(
        self,
        widget: urwid.Widget,
        context: KeyContext,
        *,
        confirm: Callable[[], None] | None = None,
        cancel: Callable[[], None] | None = None,
        height: Any = "pack",
    ) -> None:
        assert self.loop is not None
        self.dialog, self.context = widget, context
        self._confirm, self._cancel = confirm, cancel
        self.loop.widget = urwid.Overlay(
            widget, self.frame, "center", ("relative", 70), "middle", height, min_width=40
        )

    def _close(self) -> None:
        assert self.loop is not None
        self.dialog, self.context = None, KeyContext.DASHBOARD
        self._confirm = self._cancel = None
        self.loop.widget = self.frame

    def _on_confirm(self) -> None:
        confirm = self._confirm
        self._close()
        if confirm is not None:
            confirm()

    def _on_cancel(self) -> None:
        cancel = self._cancel
        self._close()
        if cancel is not None:
            cancel()

    def _show_help(self) -> None:
        self._open(HelpView(), KeyContext.HELP, height=("relative", 80))

    def _ask_filter(self) -> None:
        previous = self.model.filter
        dialog = PromptDialog("filter", "Show the consoles whose name contains:", "/ ", previous)
        urwid.connect_signal(dialog, "change", self._set_filter)
        self._open(dialog, KeyContext.DIALOG, cancel=lambda: self._set_filter(previous))

    def _set_filter(self, text: str) -> None:
        self.model.filter = text
        self._show_all()

    def _ask_clear(self) -> None:
        console = self.console_list.focused
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
            confirm=lambda: self._spawn(self._clear(console, dialog.text)),
        )

    async def _clear(self, console: ConsoleInfo, reason: str) -> None:
        if self.client is None or not self.model.connected:
            self._say("not connected to vspcd", error=True)
            self._refresh()
            return
        try:
            reply = await self.client.request("clear", vm=console.key, reason=reason or None)
        except (AdminError, ClientError) as exc:
            self._say(f"clear {console.name}: {exc}", error=True)
        else:
            self._say(f"cleared {reply.get('cleared', '?')} client(s) from {console.name}")
        self._refresh()

    def _pick_lock(self) -> None:
        console = self.console_list.focused
        if console is None:
            return
        picker = LockPicker(console.name)
        picker.show(LockMode.WRITE)
        self._open(
            picker, KeyContext.DIALOG, confirm=lambda: self._attach(console, picker.selected, False)
        )

    # -- modes, sort -------------------------------------------------------------------

    def _switch(self, mode: Mode) -> None:
        """Show `mode`'s pane, or go back to the tail pane if it is already shown."""
        self.mode = Mode.TAIL if self.mode is mode else mode
        if self.mode is Mode.GRID:
            self._pick_grid()
        elif self.mode is Mode.DETAIL:
            self._detail_wake.set()
        self._layout()
        self._tail_wake.set()  # the grid's tails start, or stop

    def _pick_grid(self) -> None:
        """The grid's consoles: the pinned ones, else the most recently active (the
        first of the list if nothing was seen active yet)."""
        model, capacity = self.model, self.grid.capacity
        if model.pinned:
            keys = sorted(model.pinned, key=lambda k: model.consoles[k].name.casefold())
        else:
            keys = model.most_active(capacity)
            if len(keys) < capacity:
                keys += [k for k in self.console_list.keys[:capacity] if k not in keys]
        keys = keys[:capacity]
        if keys != self._grid_keys:
            self._grid_keys = keys
            self._tail_wake.set()

    def _cycle_sort(self) -> None:
        self.model.sort = self.model.sort.next()  # re-sorts now, then once a tick
        self._say(f"sorted by {self.model.sort.value}")

    # -- tails -------------------------------------------------------------------------

    def _toggle_pin(self) -> None:
        console = self.console_list.focused
        if console is None:
            return
        pinned = self.model.pinned
        if console.key in pinned:
            pinned.discard(console.key)
            self._say(f"stopped following {console.name} (unpinned)")
        else:
            pinned.add(console.key)
            self._say(f"following {console.name} (pinned)")
        if self.mode is Mode.GRID:
            self._pick_grid()
        self._tail_wake.set()

    def _wanted(self) -> list[str]:
        """The consoles whose output should be live, the focused one first."""
        focused = self.console_list.focused
        wanted = [focused.key] if focused is not None else []
        wanted += sorted(self.model.pinned)
        if self.mode is Mode.GRID:
            wanted += self._grid_keys
        return [k for k in dict.fromkeys(wanted) if k in self.model.consoles]

    async def _tail_worker(self) -> None:
        """Keep vspcd's follows equal to `_wanted()`, one request at a time."""
        while True:
            await self._tail_wake.wait()
            self._tail_wake.clear()
            while (client := self.client) is not None and self.model.connected:
                wanted = self._wanted()
                start = [k for k in wanted if k not in self._tailing]
                start = [k for k in start if k not in self._tail_refused]
                stop = [k for k in self._tailing if k not in wanted]
                try:
                    # The focused console first: it is what the operator looks at.
                    if start and (not stop or start[0] == wanted[0]):
                        await self._tail(client, start[0])
                    elif stop:
                        await self._untail(client, stop[0])
                    else:
                        break
                except ClientError:
                    break  # the connection is gone: _session reconnects and wakes us
                self._refresh(consoles=False)

    async def _tail(self, client: AdminClient, key: str) -> None:
        self._tailing.add(key)
        self.model.start_following(key)
        try:
            chunk = await client.tail(key, TAIL_BYTES, follow=True)
        except AdminError as exc:
            self._tailing.discard(key)
            self._tail_refused.add(key)
            self.model.stop_following(key)
            console = self.model.consoles.get(key)
            self._say(f"tail {console.name if console else key}: {exc}", error=True)
        except ClientError:
            self._tailing.discard(key)
            raise
        else:
            self.model.tail_started(key, chunk.data)

    async def _untail(self, client: AdminClient, key: str) -> None:
        self._tailing.discard(key)
        self.model.stop_following(key)
        try:
            await client.request("untail", vm=key)
        except AdminError as exc:
            if exc.code is not ErrorCode.VM_NOT_FOUND:  # it expired meanwhile: nothing to stop
                self._say(f"untail {key}: {exc}", error=True)

    # -- detail ------------------------------------------------------------------------

    async def _detail_worker(self) -> None:
        """Ask vspcd to `show` the focused console while the detail pane is open."""
        while True:
            await self._detail_wake.wait()
            self._detail_wake.clear()
            client, console = self.client, self.console_list.focused
            if self.mode is not Mode.DETAIL or client is None or console is None:
                continue
            if not self.model.connected:
                continue
            try:
                reply = await client.request("show", vm=console.key)
                row = reply.get("console")
                if not isinstance(row, dict):
                    raise AdminError(ErrorCode.BAD_FIELD, "show reply without 'console'")
                info = ConsoleInfo.from_json(row)
            except AdminError as exc:
                self._say(f"show {console.name}: {exc}", error=True)
                self._refresh(consoles=False)
                continue
            except ClientError:
                continue  # _session reconnects
            self._learn_from_show(info)
            self._detail = (info.key, info)
            self._refresh(consoles=False)

    def _learn_from_show(self, info: ConsoleInfo) -> None:
        """A `show` that says more bytes came from the VM than the last one did means
        the console was active in between (for consoles not being tailed, from a
        daemon that sends no `last_output`)."""
        self.model.learn([info])
        previous = self._detail
        if previous is None or previous[0] != info.key:
            return
        before, after = previous[1].counters or {}, info.counters or {}
        if after.get("bytes_from_vm", 0) > before.get("bytes_from_vm", 0):
            self.model.touch(info.key)

    # -- kick --------------------------------------------------------------------------

    def _pick_client(self) -> None:
        console = self.console_list.focused
        if console is None:
            return
        if not console.attached:
            self._say(f"no client is attached to {console.name}")
            return
        picker = ClientPicker(console.name, console.attached)
        self._open(
            picker, KeyContext.DIALOG, confirm=lambda: self._ask_kick(console, picker.selected)
        )

    def _ask_kick(self, console: ConsoleInfo, client: ClientInfo) -> None:
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
            confirm=lambda: self._spawn(self._kick(console, client, dialog.text)),
            cancel=lambda: self._say(f"kept client #{client.id} on {console.name}"),
        )

    async def _kick(self, console: ConsoleInfo, client: ClientInfo, reason: str) -> None:
        admin = self.client
        if admin is None or not self.model.connected:
            self._say("not connected to vspcd", error=True)
        else:
            try:
                await admin.request("kick", client=client.id, reason=reason or None)
            except (AdminError, ClientError) as exc:
                self._say(f"kick #{client.id} off {console.name}: {exc}", error=True)
            else:
                self._say(f"kicked client #{client.id} off {console.name}")
        self._refresh()

    # -- attach ------------------------------------------------------------------------

    def _on_attach(self, console: ConsoleInfo) -> None:
        self._attach(console, None, False)

    def _attach_focused(self, lock: LockMode | None, readonly: bool) -> None:
        console = self.console_list.focused
        if console is None:
            self._say("no console to attach to")
            return
        self._attach(console, lock, readonly)

    def _attach(self, console: ConsoleInfo, lock: LockMode | None, readonly: bool) -> None:
        if self.attaching:
            return
        if not self.model.connected:
            self._say("attach: wait for the reconnection", error=True)
            return
        self.attaching = True  # before the task runs: no second Enter gets in
        self._spawn(self._attach_session(console, lock, readonly))

    async def _attach_session(
        self, console: ConsoleInfo, lock: LockMode | None, readonly: bool
    ) -> None:
        assert self.loop is not None
        screen = self.loop.screen
        ctx = Context(self.address, stdin_fd=self._stdin_fd, stdout_fd=self._stdout_fd)
        code: int | None = None
        # Stopping the screen restores the terminal and makes the MainLoop stop
        # watching stdin (urwid's "input descriptors changed"), so the attach session
        # is the only reader until the screen starts again.
        screen.stop()
        try:
            code = await self._attach_runner(
                ctx, console.key, lock=lock, readonly=readonly, replay=REPLAY
            )
        except (AdminError, ClientError) as exc:
            self._say(f"attach {console.name}: {exc}", error=True)
        finally:
            # run_attach replaced our SIGTERM/SIGHUP handlers with its own and removed them.
            self._catch_signals()
            screen.start()
            screen.clear()
            self.loop.screen_size = None  # the terminal may have been resized meanwhile
            self.attaching = False
        if code is not None:
            if code >= 128:  # the attach session was ended by a signal: so are we
                self.finish(code)
            elif code == ExitCode.DETACHED:
                self._say(f"{console.name}: the attach session was ended by vspcd", error=True)
            else:
                self._say(f"detached from {console.name}")
        self._refresh()


# ===================================================================== command line


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """`vspc-tui [--socket PATH | --tcp HOST:PORT] [--reconnect-max SECONDS]`."""
    parser = NoExitParser(
        prog="vspc-tui",
        description="Dashboard of vspcd: consoles, their live output, details and events; "
        "attach, kick, clear.",
        epilog="Keys: press ? in the dashboard.  exit codes: 0 ok, 2 usage, 3 cannot "
        "connect, 7 protocol error, 130 interrupted.",
    )
    add_address_options(parser)
    parser.add_argument(
        "--reconnect-max",
        metavar="SECONDS",
        type=_positive,
        default=BACKOFF[1],
        help="after losing vspcd, retry with a wait that doubles from "
        f"{BACKOFF[0]:g} s up to this (default {BACKOFF[1]:g})",
    )
    parser.add_argument("--version", action="version", version=f"vspc-tui {client_version()}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run vspc-tui with `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        if exc.status != 0:
            sys.stderr.write(f"{exc}\n")
        else:
            sys.stdout.write(str(exc))
        return exc.status
    try:
        address = address_from(ns, os.environ, os.geteuid())
    except ValueError as exc:
        sys.stderr.write(f"vspc-tui: {exc}\n")
        return ExitCode.USAGE
    try:
        backoff = (min(BACKOFF[0], ns.reconnect_max), ns.reconnect_max)
        return asyncio.run(App(address, backoff=backoff).run())
    except ConnectError as exc:
        sys.stderr.write(f"vspc-tui: {exc}\n")
        return ExitCode.NO_DAEMON
    except NotATerminal as exc:
        sys.stderr.write(f"vspc-tui: {exc}\n")
        return ExitCode.USAGE
    except (AdminError, ClientError) as exc:
        sys.stderr.write(f"vspc-tui: {exc}\n")
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
