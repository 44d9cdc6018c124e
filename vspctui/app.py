"""vspc-tui: the operator dashboard (entry point `main`), and its controller `App`.

Boundary: `App` owns the urwid `MainLoop` (on `urwid.AsyncioEventLoop`, sharing the one
asyncio loop with the admin connection), the `AdminClient`, the model
(vspctui/model.py), the views (vspctui/views.py) and the key table (vspctui/keys.py).
It subscribes to vspcd's events, folds them into the model, and redraws; keys become
commands through the table, and commands become admin requests (`tail`, `untail`,
`clear`) or an attach session.  No threads: everything runs on the loop.

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
from typing import Any, Protocol

import urwid

from vspc.common.admin import AdminError, ConsoleInfo, ErrorCode, EventName, LockMode
from vspc.common.paths import client_socket as default_socket
from vspc.vspctui.attach import run_attach
from vspc.vspctui.client import AdminAddress, AdminClient, ClientError, ConnectError
from vspc.vspctui.cmdtable import (
    Context,
    ExitCode,
    NoExitParser,
    UsageError,
    client_version,
    exit_code_for,
)
from vspc.vspctui.keys import Command, KeyContext, hints, lookup
from vspc.vspctui.model import Model
from vspc.vspctui.views import (
    PALETTE,
    ConsoleList,
    EventLog,
    HelpView,
    LockPicker,
    PromptDialog,
    StatusBar,
    TailPane,
)

__all__ = ["REPLAY", "TAIL_BYTES", "App", "AttachRunner", "NotATerminal", "build_parser", "main"]

TAIL_BYTES = 16 * 1024  # scrollback asked for when following a console
REPLAY = 4096  # scrollback shown when attaching, so the operator sees where the VM is
_PAGE = 10  # rows page up/down move the console list


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
    ) -> None:
        self.address = address
        self.model = model or Model()
        self._screen = screen
        self._attach_runner = attach
        self._stdin_fd, self._stdout_fd = stdin_fd, stdout_fd

        # views
        self.console_list = ConsoleList()
        self.tail_pane = TailPane()
        self.event_log = EventLog()
        self.status = StatusBar()
        self._header = urwid.Text("", wrap="clip")
        body = urwid.Pile(
            [
                ("weight", 3, urwid.LineBox(self.console_list, title="consoles")),
                ("weight", 3, self.tail_pane),
                ("weight", 2, self.event_log),
            ]
        )
        header = urwid.AttrMap(self._header, "header")
        self.frame = urwid.Frame(body, header=header, footer=self.status)
        urwid.connect_signal(self.console_list, "attach", self._on_attach)
        urwid.connect_signal(self.console_list, "focus", self._on_focus)

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
            Command.TAIL: self._toggle_tail,
            Command.CLEAR: self._ask_clear,
            Command.FILTER: self._ask_filter,
            Command.HELP: self._show_help,
            Command.QUIT: lambda: self.finish(ExitCode.OK),
            Command.CONFIRM: self._on_confirm,
            Command.CANCEL: self._on_cancel,
        }

        # set by run()
        self.loop: urwid.MainLoop | None = None
        self.client: AdminClient | None = None
        self.changed = asyncio.Event()  # set after every redraw (tests wait on it)
        self.attaching = False
        self._done: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tail_busy: set[str] = set()
        self._redraw_pending = False
        self._consoles_changed = False

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
            self.model.load(await self.client.subscribe())
            screen = self._screen
            if screen is None:
                if not (os.isatty(self._stdin_fd) and os.isatty(self._stdout_fd)):
                    raise NotATerminal("vspc-tui needs a terminal (stdin and stdout)")
                screen = urwid.display.raw.Screen()
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
            self._show_all()
            self._spawn(self._pump())
            self._catch_signals()
            with self.loop.start():
                self._refresh()
                return await self._done
        finally:
            self._release_signals()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
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

    async def _pump(self) -> None:
        assert self.client is not None
        try:
            async for event in self.client.events():
                self.model.apply(event)
                # Output only changes the tail pane; the list need not be rebuilt.
                self._refresh(consoles=event.event != EventName.OUTPUT)
        except (AdminError, ClientError) as exc:
            self._connection_lost(str(exc))
        else:
            self._connection_lost("connection closed by vspcd")

    def _connection_lost(self, why: str) -> None:
        self.model.note(f"lost the connection to vspcd: {why}")
        self._say(f"lost the connection to vspcd ({why}); q quits", error=True)
        self._refresh()

    # -- drawing -----------------------------------------------------------------------

    def _refresh(self, consoles: bool = True) -> None:
        """Redraw soon: a burst of events costs one redraw.  `consoles`: the console
        list (not only a tail buffer) may have changed."""
        self._consoles_changed |= consoles
        if not self._redraw_pending:
            self._redraw_pending = True
            asyncio.get_running_loop().call_soon(self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        if self._consoles_changed:
            self._consoles_changed = False
            self._show_all()
        else:
            self._show_tail()
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
        visible = model.visible()
        empty = f"no console matches {model.filter!r}" if model.filter else "no consoles"
        self.console_list.show(visible, model.tails.keys(), empty)
        self._show_tail()
        self.event_log.show(list(model.log))
        shown = f"{len(visible)} of {len(model.consoles)}" if model.filter else len(visible)
        text = f" vspc-tui  {self.address}  consoles: {shown}"
        if model.filter:
            text += f"  filter: {model.filter}"
        self._header.set_text(text)
        self.status.show(self._message, hints(self.context), self._error)

    def _show_tail(self) -> None:
        console = self.console_list.focused
        if console is None:
            self.tail_pane.show(None, b"", False)
        else:
            key = console.key
            self.tail_pane.show(console.name, self.model.tail(key), self.model.following(key))

    def _say(self, message: str, error: bool = False) -> None:
        self._message, self._error = message, error

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
        self._show_tail()

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
        assert self.client is not None
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

    # -- tail --------------------------------------------------------------------------

    def _toggle_tail(self) -> None:
        console = self.console_list.focused
        if console is None:
            return
        key = console.key
        if key in self._tail_busy:
            self._say(f"{console.name}: still waiting for vspcd")
        elif self.model.following(key):
            self.model.stop_following(key)
            self._say(f"stopped following {console.name}")
            self._spawn(self._untail(console))
        else:
            self.model.start_following(key)
            self._say(f"following {console.name}")
            self._spawn(self._tail(console))

    async def _tail(self, console: ConsoleInfo) -> None:
        assert self.client is not None
        self._tail_busy.add(console.key)
        try:
            chunk = await self.client.tail(console.key, TAIL_BYTES, follow=True)
        except (AdminError, ClientError) as exc:
            self.model.stop_following(console.key)
            self._say(f"tail {console.name}: {exc}", error=True)
        else:
            self.model.tail_started(console.key, chunk.data)
        finally:
            self._tail_busy.discard(console.key)
        self._refresh()

    async def _untail(self, console: ConsoleInfo) -> None:
        assert self.client is not None
        self._tail_busy.add(console.key)
        try:
            await self.client.request("untail", vm=console.key)
        except AdminError as exc:
            if exc.code is not ErrorCode.VM_NOT_FOUND:  # it expired meanwhile: nothing to stop
                self._say(f"untail {console.name}: {exc}", error=True)
        except ClientError as exc:
            self._say(f"untail {console.name}: {exc}", error=True)
        finally:
            self._tail_busy.discard(console.key)
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


def build_parser() -> argparse.ArgumentParser:
    """`vspc-tui [--socket PATH | --tcp HOST:PORT]`."""
    parser = NoExitParser(
        prog="vspc-tui",
        description="Dashboard of vspcd: consoles, their output and events; attach, clear.",
        epilog="Keys: press ? in the dashboard.  exit codes: 0 ok, 2 usage, 3 cannot "
        "connect, 7 protocol error, 130 interrupted.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help="vspcd's admin socket (default: as vspc: $VSPC_SOCKET, else "
        "/run/vspcd/vspcd.sock or your own daemon's $XDG_RUNTIME_DIR/vspcd.sock)",
    )
    where.add_argument("--tcp", metavar="HOST:PORT", help="use vspcd's TCP admin port instead")
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
        if ns.tcp:
            address = AdminAddress.tcp(ns.tcp)
        else:
            address = AdminAddress(path=str(ns.socket or default_socket(os.environ, os.geteuid())))
    except ValueError as exc:
        sys.stderr.write(f"vspc-tui: --tcp: {exc}\n")
        return ExitCode.USAGE
    try:
        return asyncio.run(App(address).run())
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
