"""vspc-tui's controller against a real vspcd, and the real program in tmux.

In-process tests: `vspc.vspcd.service.server.Daemon` (tests/vspcd/harness.py), fake ESXi hosts
and the `App` share one asyncio loop; urwid draws on `HeadlessScreen`, and keys go in
through `App.press`, the same `MainLoop.process_input` the terminal feeds.  Waits are
on `App.changed` (set after every redraw) with a timeout.

The tmux test runs `python -m vspc.vspctui.dashboard.app` on a real terminal against a daemon
subprocess.  tmux has no "screen changed" event, so it polls `capture-pane` with a
short sleep under an overall timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urwid

from tests.daemonproc import start_vspcd
from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    free_port,
    identified,
    running,
)
from vspc.common.admin import LockMode
from vspc.common.esxi import SerialBreak
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.cmdtable import Context, ExitCode
from vspc.vspctui.dashboard.app import App, main

TIMEOUT = 5.0
SCREEN_TIMEOUT = 30.0


class HeadlessScreen(urwid.BaseScreen):
    """A screen with no terminal: remembers the last canvas drawn, reads no input."""

    def __init__(self, size: tuple[int, int] = (100, 32)) -> None:
        super().__init__()
        self.size = size
        self.rows: list[str] = []
        self.starts = 0

    def _start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def get_cols_rows(self) -> tuple[int, int]:
        return self.size

    def draw_screen(self, size: tuple[int, int], canvas: urwid.Canvas) -> None:
        self.rows = [row.decode() for row in canvas.text]

    def hook_event_loop(self, event_loop: Any, callback: Callable[..., Any]) -> None:
        pass

    def unhook_event_loop(self, event_loop: Any) -> None:
        pass

    @property
    def text(self) -> str:
        return "\n".join(self.rows)

    def row(self, name: str) -> list[str]:
        """The words of console `name`'s row in the list (the follow mark dropped)."""
        return next((words for words in _console_rows(self.rows) if words[0] == name), [])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="vspc-tui-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def until(app: App, predicate: Callable[[], bool], what: str) -> None:
    """Wait, redraw by redraw, until `predicate()` holds."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                app.changed.clear()
                await app.changed.wait()
    except TimeoutError:
        screen = app.loop.screen if app.loop is not None else None
        shown = screen.text if isinstance(screen, HeadlessScreen) else ""
        raise AssertionError(f"never saw {what}; screen:\n{shown}") from None


def test_dashboard_tracks_vms_tails_output_and_clears(short_dir: Path) -> None:
    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            screen = HeadlessScreen()
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: screen.row("db01")[2:3] == ["up"], "db01 up")

            # Events: a second VM appears, under its name once it says it.
            web02 = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02")
            await until(app, lambda: screen.row("web02")[2:3] == ["up"], "web02 up")
            assert "web02: VM connected from" in screen.text or "now called web02" in screen.text

            # t: follow db01 (focused: it sorts first); its output reaches the tail pane.
            app.press("t")
            await until(app, lambda: "tail: db01 (following)" in screen.text, "following")
            db01.send(b"\x1b[1mhello\x1b[0m from db01\r\n")
            await until(app, lambda: "hello from db01" in screen.text, "db01's output")
            assert "* db01" in screen.text  # the list marks followed consoles

            # c + reason + Enter: the telnet client sees the notice, the list the change.
            operator = await Operator.connect(console_port(daemon, UUID_A))
            await until(app, lambda: screen.row("db01")[3:4] == ["1"], "one client")
            app.press("c")
            assert "Disconnect every client of db01 (1 attached)" in screen.text
            app.press(*"maintenance", "enter")
            await operator.output.expect(b": maintenance]\r\n")
            assert b"[vspcd: disconnected by " in operator.output.data
            await until(app, lambda: "cleared 1 client(s) from db01" in screen.text, "status")
            await until(app, lambda: screen.row("db01")[3:4] == ["0"], "no client")

            # The VM goes away: the row says so.
            await web02.close()
            await until(app, lambda: screen.row("web02")[2:3] == ["down"], "web02 down")

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            await operator.close()
            await db01.close()

    asyncio.run(run())


def test_keys_drive_dialogs_filter_help_and_attach(short_dir: Path) -> None:
    attaches: list[tuple[str, LockMode | None, bool, bool]] = []

    async def fake_attach(
        ctx: Context,
        vm: str,
        *,
        lock: LockMode | None = None,
        readonly: bool = False,
        replay: int = 0,
    ) -> int:
        # The dashboard is suspended while the session has the terminal.
        attaches.append((vm, lock, readonly, screen.started))
        return ExitCode.OK

    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            vms = [
                await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01"),
                await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02"),
            ]
            await identified(events, UUID_B)
            address = AdminAddress(path=str(short_dir / "admin.sock"))
            app = App(address, screen=screen, attach=fake_attach)
            task = asyncio.create_task(app.run())
            await until(app, lambda: bool(screen.row("web02")), "both consoles")

            # ? shows the generated help; q there closes it instead of quitting.
            app.press("?")
            assert "attach with a lock mode you pick" in screen.text
            app.press("q")
            assert "attach with a lock mode you pick" not in screen.text

            # / filters as you type; Esc puts the old filter back.
            app.press("/", *"web")
            assert screen.row("db01") == [] and screen.row("web02")
            app.press("esc")
            assert screen.row("db01") and screen.row("web02")
            app.press("/", *"web", "enter")
            assert "consoles: 1 of 2  filter: web" in screen.text

            # enter / r / l: the attach session runs with the screen stopped.
            app.press("enter")
            await until(app, lambda: "detached from web02" in screen.text, "back from attach")
            assert screen.started and screen.starts == 2
            app.press("/", "backspace", "backspace", "backspace", "enter", "j", "r")
            await until(app, lambda: len(attaches) == 2 and not app.attaching, "read-only attach")
            app.press("k", "l", "down", "enter")  # the picker starts on write
            await until(app, lambda: len(attaches) == 3 and not app.attaching, "locked attach")
            assert attaches == [
                (UUID_B, None, False, False),
                (UUID_B, None, True, False),
                (UUID_A, LockMode.FREE_FOR_ALL, False, False),
            ]
            app.press("x")
            assert "no command on 'x'; ? shows the keys" in screen.text

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            for vm in vms:
                await vm.close()

    screen = HeadlessScreen()
    asyncio.run(run())


def test_break_asks_first_and_ctrl_u_clears_the_filter(short_dir: Path) -> None:
    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            web02 = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02")
            await identified(events, UUID_B)
            screen = HeadlessScreen()
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: bool(screen.row("web02")), "both consoles")

            # C-u empties what was typed after /; Enter then keeps no filter.
            app.press("/", *"web")
            assert screen.row("db01") == [] and screen.row("web02")
            app.press("ctrl u")
            assert screen.row("db01") and screen.row("web02")
            app.press(*"db", "ctrl u", *"web", "enter")
            assert "consoles: 1 of 2  filter: web" in screen.text
            app.press("/", "ctrl u", "enter")
            assert "filter:" not in screen.text and screen.row("db01")

            # B asks first (on web02: the filter left the focus there): Esc sends
            # nothing, Enter sends the break to the focused console's VM.
            operator = await Operator.connect(console_port(daemon, UUID_B))
            await until(app, lambda: screen.row("web02")[3:4] == ["1"], "one client")
            app.press("B")
            words = " ".join(screen.text.replace("\u2502", " ").split())  # the dialog wraps
            assert "Send a serial break to web02?" in words
            app.press("esc")
            assert "no break sent to web02" in screen.text
            app.press("B", "enter")
            await until(app, lambda: "break sent to web02" in screen.text, "break sent")
            assert isinstance(await web02.wait_for(SerialBreak), SerialBreak)
            await operator.output.expect(b"[vspcd: break sent by ")
            # One break, to web02 only: the cancelled dialog sent none.
            assert not any(isinstance(e, SerialBreak) for e in web02.events + db01.events)

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            await operator.close()
            for vm in (db01, web02):
                await vm.close()

    asyncio.run(run())


def test_unreachable_daemon_exits_3(short_dir: Path, capsys: Any) -> None:
    assert main(["--socket", str(short_dir / "nobody.sock")]) == ExitCode.NO_DAEMON
    err = capsys.readouterr().err
    assert err.startswith("vspc-tui: cannot connect to vspcd at ") and "nobody.sock" in err


# ===================================================================== real terminal


class Tmux:
    """One detached tmux server and session of its own (its own socket: -L)."""

    def __init__(self, name: str) -> None:
        self.args = ["tmux", "-L", name]

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.args, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise AssertionError(f"tmux {args}: {done.stderr}")
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "tui")

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        # A fresh Python drawing in tmux on a loaded machine: generous, polled.
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while True:
            shown = self.screen()
            if check(shown):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}; screen:\n{shown}")
            time.sleep(0.05)  # capture-pane has nothing to wait on


def _console_rows(lines: list[str]) -> list[list[str]]:
    """The words of each console list row: the lines between the column titles and the
    list's bottom border, without the border and the follow mark."""
    rows: list[list[str]] = []
    inside = False
    for line in lines:
        text = line.strip("│ ")
        if text.split()[:2] == ["NAME", "PORT"]:
            inside = True
        elif inside and line.startswith("└"):
            break
        elif inside and text:
            words = text.split()
            rows.append(words[1:] if words[0] == "*" else words)
    return rows


class FakeVm:
    """A fake ESXi host on its own loop and thread, next to a daemon subprocess."""

    def __init__(self, proxy_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._vm: FakeEsxi = self._call(FakeEsxi.connect(proxy_port, UUID_A, "db01"))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def close(self) -> None:
        async def shutdown() -> None:
            await self._vm.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_real_terminal_in_tmux(short_dir: Path) -> None:
    sock, status = short_dir / "admin.sock", short_dir / "status"
    env = dict(os.environ)
    env.pop("VSPC_SOCKET", None)
    daemon = start_vspcd(
        ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "-i", "127.0.0.1",
         "-r", str(free_port()), "--admin-socket", str(sock)],
        short_dir / "vspcd.log", env=env,
    )  # fmt: skip
    assert daemon.proxy_port is not None
    tmux = Tmux(short_dir.name)
    vm: FakeVm | None = None
    try:
        vm = FakeVm(daemon.proxy_port)
        # The pane's shell reports the exit status, then signals a tmux channel.
        command = (
            f"{sys.executable} -m vspc.vspctui.dashboard.app --socket {sock}; echo $? > {status}; "
            f"tmux -L {short_dir.name} wait-for -S tui-exited"
        )
        tmux.run("new-session", "-d", "-s", "tui", "-x", "120", "-y", "30", command)

        def vm_up(shown: str) -> bool:
            return ["db01", "up"] in (w[0:1] + w[2:3] for w in _console_rows(shown.splitlines()))

        tmux.wait_for(vm_up, "db01 up")
        tmux.run("send-keys", "-t", "tui", "?")
        tmux.wait_for(lambda s: "attach with a lock mode you pick" in s, "the help")
        tmux.run("send-keys", "-t", "tui", "Escape")
        tmux.wait_for(lambda s: "attach with a lock mode you pick" not in s, "help closed")

        # Enter suspends the dashboard for a real attach session; ^] quit comes back.
        tmux.run("send-keys", "-t", "tui", "Enter")
        tmux.wait_for(lambda s: "vspc: attached to db01" in s, "attached")
        tmux.run("send-keys", "-t", "tui", "C-]")
        tmux.wait_for(lambda s: "vspc db01>" in s, "the escape menu")
        tmux.run("send-keys", "-t", "tui", "quit", "Enter")
        tmux.wait_for(lambda s: "detached from db01" in s and "consoles: 1" in s, "dashboard")

        tmux.run("send-keys", "-t", "tui", "q")
        tmux.run("wait-for", "tui-exited")  # remembered if the signal came first
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux.args, "kill-server"], capture_output=True, timeout=10)
        if vm is not None:
            vm.close()
        daemon.close()


def test_alert_list_acknowledges_the_marks_and_the_detail_lists_alerts(short_dir: Path) -> None:
    panic = b"[    2.861301] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"

    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: bool(screen.row("db01")), "db01")
            vm.send(b"booting\r\n" + panic)
            await until(app, lambda: any(" !db01 " in r for r in screen.rows), "the ! mark")

            # A: the alert list (admin `alerts`), which acknowledges the marks.
            app.press("A")
            await until(app, lambda: "console alerts" in screen.text, "the alert list")
            assert "db01  kernel_panic (critical)" in screen.text
            assert "    booting" in screen.text
            assert "  > [    2.861301] Kernel panic - not syncing" in screen.text
            assert not any(" !db01 " in r for r in screen.rows)
            app.press("q")  # closes the list, not the dashboard
            assert "console alerts" not in screen.text and not task.done()

            # d: the detail pane lists the console's alerts seen this session.
            app.press("d")
            await until(app, lambda: "alerts   1 seen" in screen.text, "alerts in the detail")
            assert "kernel_panic (critical): [    2.861301] Kernel panic" in screen.text
            app.press("q")
            await asyncio.wait_for(task, TIMEOUT)

    screen = HeadlessScreen(size=(120, 40))
    asyncio.run(run())
