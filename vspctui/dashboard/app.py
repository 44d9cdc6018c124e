"""vspc-tui: the operator dashboard (entry point `main`), and its controller `App`.

Boundary: `App` owns the urwid `MainLoop` (on `urwid.AsyncioEventLoop`, sharing the one
asyncio loop with the admin connection), the `AdminClient`, the model
(vspctui/dashboard/model.py), the layout of the views (vspctui/dashboard/layout.py,
vspctui/dashboard/views.py), the dialogs (vspctui/dashboard/dialogs.py), the workers
that keep tails and details in step with the focus (vspctui/dashboard/tails.py) and
the key table (vspctui/dashboard/keys.py).
It subscribes to vspcd's events, folds them into the model, and redraws; keys become
commands through the table, and commands become admin requests (`tail`, `untail`,
`show`, `clear`, `kick`) or an attach session.  No threads: everything runs on the loop.

What the dashboard promises (docs/vspc-tui.md, "Staying responsive" and "When vspcd
goes away"), and where it happens:

- The preview follows the focus: `TailSync` keeps the daemon's tail follows equal to
  what is wanted -- the focused console, the pinned ones (`t`) and the grid's.
- Redraws are coalesced: events fold into the model at once, the screen is redrawn
  at most every `REDRAW_EVERY` seconds under load, and the console list builds row
  widgets only for the rows on screen (vspctui/dashboard/views.py, `ConsoleList`).  Keys
  redraw at once.
- When vspcd goes away the rows turn stale ("?", never "up"), the status line says
  so on every redraw (an attach's messages cannot hide it), and `Feed`
  (vspctui/dashboard/feed.py) tries again with exponential back-off; on success the
  list is rebuilt from a fresh `subscribe` snapshot and the tails are started again.

Attaching suspends the dashboard: the urwid screen is stopped (the terminal goes back
to its normal mode and urwid stops reading it), `vspc attach`'s own session
(vspctui/attach.py, `run_attach`) runs on the real terminal with its raw mode and
escape menu, and when it ends the screen is started again and fully redrawn.  Events
keep arriving meanwhile, so the dashboard is current when it comes back.

Usage and keys: docs/vspc-tui.md.  Protocol: docs/admin-protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol

import urwid

from vspc.common.admin import AdminError, ConsoleInfo, LockMode
from vspc.common.convert import seconds
from vspc.vspctui.attach import run_attach
from vspc.vspctui.client import (
    AdminAddress,
    AdminClient,
    ClientError,
    ConnectError,
)
from vspc.vspctui.cmdtable import (
    Context,
    ExitCode,
    NoExitParser,
    client_version,
    exit_code_for,
    parse_command_line,
)
from vspc.vspctui.dashboard.compat import RawScreen
from vspc.vspctui.dashboard.dialogs import Dialogs
from vspc.vspctui.dashboard.feed import Feed
from vspc.vspctui.dashboard.keys import Command, KeyContext, lookup
from vspc.vspctui.dashboard.layout import Layout, Mode
from vspc.vspctui.dashboard.model import Model
from vspc.vspctui.dashboard.tails import TAIL_BYTES, DetailSync, TailSync
from vspc.vspctui.dashboard.views import PALETTE
from vspc.vspctui.options import add_address_options

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

REPLAY = 4096  # scrollback shown when attaching, so the operator sees where the VM is
_PAGE = 10  # rows page up/down move the console list
REDRAW_EVERY = 0.05  # s: under a stream of events, at most 20 redraws a second
TICK = 1.0  # s: activity ages, the grid's "most active" and the detail pane refresh
BACKOFF = (0.5, 10.0)  # s: first and longest wait between reconnection attempts
ACTIVITY_POLL = 10.0  # s: `list` again for the daemon's activity figures, if it has them


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
        backoff, activity_poll: handed to the `Feed` (see there).
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
        self.model = model or Model()
        self._screen = screen
        self._attach_runner = attach
        self._stdin_fd, self._stdout_fd = stdin_fd, stdout_fd

        self.layout = Layout(self.model, address)
        console_list = self.layout.console_list
        urwid.connect_signal(console_list, "attach", self._on_attach)
        urwid.connect_signal(console_list, "focus", self._on_focus)
        urwid.connect_signal(self.layout.grid, "resized", self._pick_grid)
        self.dialogs = Dialogs(self)
        connected = self._connected
        self.tails = TailSync(self.model, self.layout, connected, self.say, self.refresh)
        self.details = DetailSync(self.model, self.layout, connected, self.say, self.refresh)
        self.feed = Feed(
            address,
            self.model,
            self.layout,
            self.tails,
            self.details,
            self.say,
            self.refresh,
            backoff=backoff,
            activity_poll=activity_poll,
        )

        dialogs = self.dialogs
        self._commands: dict[Command, Callable[[], None]] = {
            Command.UP: lambda: console_list.move(-1),
            Command.DOWN: lambda: console_list.move(1),
            Command.PAGE_UP: lambda: console_list.move(-_PAGE),
            Command.PAGE_DOWN: lambda: console_list.move(_PAGE),
            Command.TOP: lambda: console_list.move(-sys.maxsize),
            Command.BOTTOM: lambda: console_list.move(sys.maxsize),
            Command.ATTACH: lambda: self._attach_focused(None, False),
            Command.ATTACH_LOCK: dialogs.pick_lock,
            Command.ATTACH_READONLY: lambda: self._attach_focused(None, True),
            Command.TAIL: self._toggle_pin,
            Command.GRID: lambda: self._switch(Mode.GRID),
            Command.DETAIL: lambda: self._switch(Mode.DETAIL),
            Command.SORT: self._cycle_sort,
            Command.KICK: dialogs.pick_client,
            Command.CLEAR: dialogs.ask_clear,
            Command.BREAK: dialogs.ask_break,
            Command.FILTER: dialogs.ask_filter,
            Command.ALERTS: dialogs.show_alerts,
            Command.HELP: dialogs.show_help,
            Command.QUIT: lambda: self.finish(ExitCode.OK),
            Command.CONFIRM: dialogs.confirm,
            Command.CANCEL: dialogs.cancel,
            Command.CLEAR_TEXT: dialogs.clear_text,
        }

        # set by run()
        self.loop: urwid.MainLoop | None = None
        self.changed = asyncio.Event()  # set after every redraw (tests wait on it)
        self.attaching = False
        self._done: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._redraw_pending = False
        self._consoles_changed = False

    @property
    def client(self) -> AdminClient | None:
        """The admin connection (None before `run()`)."""
        return self.feed.client

    @property
    def reconnected(self) -> asyncio.Event:
        """Set on each reconnection to vspcd (tests wait on it)."""
        return self.feed.reconnected

    def _connected(self) -> AdminClient | None:
        return self.feed.connected()

    @property
    def mode(self) -> Mode:
        """What the pane under the console list shows."""
        return self.layout.mode

    @property
    def context(self) -> KeyContext:
        """What has the keyboard: the dashboard, or a dialog."""
        return self.layout.context

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        """Connect, subscribe, show the dashboard until quit; returns the exit code.

        Raises:
            ConnectError: vspcd cannot be reached (before the terminal is touched).
            NotATerminal: no screen was given and stdin/stdout is not a terminal.
            AdminError, ClientError: the subscription failed.
        """
        aio = asyncio.get_running_loop()
        feed = self.feed
        await feed.connect()
        try:
            assert feed.client is not None
            await feed.subscribe(feed.client)
            screen = self._screen
            if screen is None:
                if not (os.isatty(self._stdin_fd) and os.isatty(self._stdout_fd)):
                    raise NotATerminal("vspc-tui needs a terminal (stdin and stdout)")
                screen = RawScreen()
            self.loop = _MainLoop(
                self.layout.frame,
                PALETTE,
                screen=screen,
                event_loop=urwid.AsyncioEventLoop(loop=aio),
                unhandled_input=self._on_key,
                handle_mouse=False,
                on_error=self._fail,
            )
            self._done = aio.create_future()
            self.say(f"connected to vspcd at {self.address}; ? for help")
            self.model.note(f"connected to vspcd: {len(self.model.consoles)} console(s)")
            self.layout.show_all()
            self.spawn(feed.run())
            self.spawn(self.tails.run())
            self.spawn(self.details.run())
            self.spawn(self._ticker())
            self.spawn(feed.poll_activity())
            self._catch_signals()
            with self.loop.start():
                self.refresh()
                return await self._done
        finally:
            self._release_signals()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await feed.close()

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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task of this run; an exception from it ends the run."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(exc)  # a bug: the handlers catch what the daemon can cause

    async def _ticker(self) -> None:
        """Once a `TICK`: ages in the activity column move on, the grid picks the
        most active consoles again, and the detail pane asks for fresh counters."""
        while True:
            await asyncio.sleep(TICK)
            self.model.reorder()
            if self.mode is Mode.GRID:
                self._pick_grid()
            elif self.mode is Mode.DETAIL:
                self.details.wake()
            self.refresh()

    # -- drawing -----------------------------------------------------------------------

    def refresh(self, consoles: bool = True) -> None:
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
            self.layout.show_all()
        else:
            self.layout.show_middle()
        loop = self.loop
        # While attached the terminal belongs to the attach session.
        if loop is not None and loop.screen.started and not self.attaching:
            try:
                loop.draw_screen()
            except Exception as exc:  # a render bug: end the run with it
                self._fail(exc)
        self.changed.set()

    def say(self, message: str, error: bool = False) -> None:
        """Put `message` on the status line (drawn with the next redraw)."""
        self.layout.say(message, error)

    # -- keys --------------------------------------------------------------------------

    def _on_key(self, key: str | tuple[str, int, int, int]) -> bool:
        """Keys no widget took: look them up in the table for the current context."""
        if not isinstance(key, str):
            return False
        command = lookup(self.context, key)
        if command is None:
            if self.context is KeyContext.DASHBOARD and len(key) == 1:
                self.say(f"no command on {key!r}; ? shows the keys")
                self.layout.show_all()
            return False
        self._commands[command]()
        self.layout.show_all()
        return True

    def press(self, *keys: str) -> None:
        """Feed keys as if typed (tests; the terminal's input goes the same way)."""
        assert self.loop is not None
        self.loop.process_input(keys)
        self._redraw()

    def _on_focus(self, console: ConsoleInfo | None) -> None:
        # The preview follows the focus: the worker tails the new one, untails the old.
        self.tails.focus_moved()
        if self.mode is Mode.DETAIL:
            self.details.wake()
        self.layout.show_middle()

    # -- modes, sort, pins -------------------------------------------------------------

    def _switch(self, mode: Mode) -> None:
        """Show `mode`'s pane, or go back to the tail pane if it is already shown."""
        layout = self.layout
        layout.mode = Mode.TAIL if layout.mode is mode else mode
        if layout.mode is Mode.GRID:
            self._pick_grid()
        elif layout.mode is Mode.DETAIL:
            self.details.wake()
        layout.arrange()
        self.tails.wake()  # the grid's tails start, or stop

    def _pick_grid(self) -> None:
        if self.layout.pick_grid():
            self.tails.wake()

    def _cycle_sort(self) -> None:
        self.model.sort = self.model.sort.next()  # re-sorts now, then once a tick
        self.say(f"sorted by {self.model.sort.value}")

    def _toggle_pin(self) -> None:
        console = self.layout.console_list.focused
        if console is None:
            return
        pinned = self.model.pinned
        if console.key in pinned:
            pinned.discard(console.key)
            self.say(f"stopped following {console.name} (unpinned)")
        else:
            pinned.add(console.key)
            self.say(f"following {console.name} (pinned)")
        if self.mode is Mode.GRID:
            self._pick_grid()
        self.tails.wake()

    # -- attach ------------------------------------------------------------------------

    def _on_attach(self, console: ConsoleInfo) -> None:
        self.attach(console, None, False)

    def _attach_focused(self, lock: LockMode | None, readonly: bool) -> None:
        console = self.layout.console_list.focused
        if console is None:
            self.say("no console to attach to")
            return
        self.attach(console, lock, readonly)

    def attach(self, console: ConsoleInfo, lock: LockMode | None, readonly: bool) -> None:
        """Suspend the dashboard and attach to `console` (unless already attaching)."""
        if self.attaching:
            return
        if not self.model.connected:
            self.say("attach: wait for the reconnection", error=True)
            return
        self.attaching = True  # before the task runs: no second Enter gets in
        self.spawn(self._attach_session(console, lock, readonly))

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
            self.say(f"attach {console.name}: {exc}", error=True)
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
                self.say(f"{console.name}: the attach session was ended by vspcd", error=True)
            else:
                self.say(f"detached from {console.name}")
        self.refresh()


# ===================================================================== command line


_positive = seconds(positive=True, maximum=3600)


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
    parsed = parse_command_line("vspc-tui", build_parser(), sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    ns, address = parsed
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
