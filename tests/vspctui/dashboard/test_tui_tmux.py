"""vspc-tui end to end: the real program in tmux against a real vspcd (docs/vspc-tui.md).

Every dashboard flow of docs/vspc-tui.md -- live tail on focus, the grid, the detail pane,
kick with its confirmation, reconnection after a daemon restart -- at 80x24 and
200x50.  vspcd runs as a subprocess (so it can be killed and restarted on the same
socket), fake ESXi hosts (tests/vspcd/harness.py, `FakeEsxi`) run on a loop of their
own thread, and tmux's `capture-pane` is what the operator would see.  tmux has no
"screen changed" event, so `Tmux.wait_for` polls `capture-pane` under an overall
timeout; nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import VspcdProcess, start_vspcd
from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, free_port
from tests.vspctui.dashboard.test_tui_app import TIMEOUT, Tmux, _console_rows

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 50), id="200x50")]


class Vms:
    """Fake ESXi hosts on their own loop and thread (the test's thread stays free to
    drive tmux)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.vms: dict[str, FakeEsxi] = {}

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def connect(self, proxy_port: int, uuid: str, name: str) -> None:
        self.vms[name] = self._call(FakeEsxi.connect(proxy_port, uuid, name))

    def send(self, name: str, data: bytes) -> None:
        vm = self.vms[name]
        self._loop.call_soon_threadsafe(vm.send, data)

    def drop(self) -> None:
        """Forget the connections (after the daemon died, they are closed anyway)."""

        async def close_all() -> None:
            for vm in self.vms.values():
                await vm.close()

        self._call(close_all())
        self.vms.clear()

    def close(self) -> None:
        async def shutdown() -> None:
            for vm in self.vms.values():
                await vm.close()
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


class Stack:
    """vspcd (restartable), fake VMs and vspc-tui in a tmux session of `size`."""

    def __init__(self, directory: Path, size: tuple[int, int]) -> None:
        self.directory = directory
        self.sock = directory / "admin.sock"
        self.proxy = 0  # the running daemon's, read back from its log
        self.range = free_port()
        self.env = dict(os.environ)
        self.env.pop("VSPC_SOCKET", None)
        self.daemon: VspcdProcess | None = None
        self.vms = Vms()
        self.tmux = Tmux(directory.name)
        self.size = size

    def start_daemon(self) -> None:
        self.daemon = start_vspcd(
            ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "-i", "127.0.0.1",
             "-r", str(self.range), "--admin-socket", str(self.sock)],
            self.directory / "vspcd.log", env=self.env,
        )  # fmt: skip
        assert self.daemon.proxy_port is not None
        self.proxy = self.daemon.proxy_port

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.close()

    def start_tui(self) -> None:
        cols, rows = self.size
        command = (
            f"{sys.executable} -m vspc.vspctui.dashboard.app"
            f" --socket {self.sock} --reconnect-max 0.5"
        )
        self.tmux.run("new-session", "-d", "-s", "tui", "-x", str(cols), "-y", str(rows), command)

    def keys(self, *keys: str) -> None:
        self.tmux.run("send-keys", "-t", "tui", *keys)

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        return self.tmux.wait_for(check, what)

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """One admin request on a connection of its own."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(TIMEOUT)
            conn.connect(str(self.sock))
            conn.sendall(json.dumps({"id": 1, **request}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        return reply

    def port_of(self, name: str) -> int:
        port: int = self.request({"cmd": "show", "vm": name})["console"]["port"]
        return port

    def close(self) -> None:
        subprocess.run([*self.tmux.args, "kill-server"], capture_output=True, timeout=10)
        self.vms.close()
        self.stop_daemon()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="vspc-tmux-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def stack(short_dir: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """db01 and web02 connected (each printed a line), and the dashboard showing both."""
    stack = Stack(short_dir, request.param)
    try:
        stack.start_daemon()
        stack.vms.connect(stack.proxy, UUID_A, "db01")
        stack.vms.connect(stack.proxy, UUID_B, "web02")
        stack.vms.send("db01", b"db01 booted\r\n")
        stack.vms.send("web02", b"web02 booted\r\n")
        stack.start_tui()
        stack.wait_for(lambda s: up(s, "db01") and up(s, "web02"), "both consoles up")
        yield stack
    finally:
        stack.close()


def row(shown: str, name: str) -> list[str]:
    return next((w for w in _console_rows(shown.splitlines()) if w[0] == name), [])


def up(shown: str, name: str) -> bool:
    return row(shown, name)[2:3] == ["up"]


def capture(name: str, shown: str) -> None:
    """Keep a screen for docs/vspc-tui.md (VSPC_TUI_CAPTURES=DIR)."""
    directory = os.environ.get("VSPC_TUI_CAPTURES")
    if directory:
        Path(directory, f"{name}.txt").write_text(shown.rstrip() + "\n")


@pytest.mark.parametrize("stack", SIZES, indirect=True)
def test_live_tail_follows_the_focus(stack: Stack) -> None:
    # The first console has the focus: its scrollback and new output are live at once.
    stack.wait_for(lambda s: "tail: db01 (live)" in s and "db01 booted" in s, "db01 live")
    stack.vms.send("db01", b"db01 says hello\r\n")
    stack.wait_for(lambda s: "db01 says hello" in s, "db01's new output")
    # Moving the focus moves the preview: web02's scrollback, then its new output.
    stack.keys("Down")
    stack.wait_for(lambda s: "tail: web02 (live)" in s and "web02 booted" in s, "web02 live")
    stack.vms.send("web02", b"web02 says hello\r\n")
    shown = stack.wait_for(lambda s: "web02 says hello" in s, "web02's new output")
    assert "db01 says hello" not in shown  # the pane shows the focused console only
    # t pins: the console is marked, and stays followed when the focus moves on.
    stack.keys("t")
    stack.wait_for(lambda s: "tail: web02 (following)" in s and "* web02" in s, "web02 pinned")
    capture(f"tail-{stack.size[0]}x{stack.size[1]}", stack.tmux.screen())
    stack.keys("Up")
    stack.wait_for(lambda s: "tail: db01 (live)" in s and "* web02" in s, "db01 live again")
    stack.keys("q")


@pytest.mark.parametrize("stack", SIZES, indirect=True)
def test_grid_shows_several_live_tails(stack: Stack) -> None:
    stack.keys("g")
    stack.wait_for(
        lambda s: "grid: the 2 most recently active" in s and "db01 booted" in s
        and "web02 booted" in s,
        "both tails in the grid",
    )  # fmt: skip
    stack.vms.send("web02", b"web02 in the grid\r\n")
    stack.vms.send("db01", b"db01 in the grid\r\n")
    shown = stack.wait_for(
        lambda s: "web02 in the grid" in s and "db01 in the grid" in s, "live output in the grid"
    )
    capture(f"grid-{stack.size[0]}x{stack.size[1]}", shown)
    # With a console pinned, the grid shows the pinned ones.
    stack.keys("Down", "t")
    stack.wait_for(lambda s: "grid: 1 pinned console(s)" in s, "the pinned grid")
    stack.keys("g")
    stack.wait_for(lambda s: "tail: web02 (following)" in s, "back to the tail pane")
    stack.keys("q")


@pytest.mark.parametrize("stack", SIZES, indirect=True)
def test_detail_pane_and_kick_with_confirmation(stack: Stack) -> None:
    port = stack.port_of("db01")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as operator:
        stack.wait_for(lambda s: row(s, "db01")[3:4] == ["1"], "db01's telnet client")
        stack.keys("d")
        shown = stack.wait_for(
            lambda s: "detail: db01" in s and "(asking" not in s and "telnet" in s,
            "db01's detail",
        )
        assert "clients  1" in shown and "lock     none" in shown
        assert "from VM" in shown and "vMotions 0" in shown
        capture(f"detail-{stack.size[0]}x{stack.size[1]}", shown)

        # K: pick the client, then a confirmation; Esc there keeps it.
        stack.keys("K")
        stack.wait_for(lambda s: "kick which client of db01?" in s, "the client picker")
        stack.keys("Enter")
        stack.wait_for(lambda s: "Kick client #" in s, "the confirmation")
        stack.keys("Escape")
        stack.wait_for(lambda s: "kept client #" in s, "kick cancelled")
        assert row(stack.tmux.screen(), "db01")[3:4] == ["1"]

        stack.keys("K")
        stack.wait_for(lambda s: "kick which client of db01?" in s, "the client picker")
        stack.keys("Enter")
        stack.wait_for(lambda s: "Kick client #" in s, "the confirmation")
        stack.keys("lunch", "Enter")
        stack.wait_for(lambda s: "kicked client #" in s, "kicked")
        stack.wait_for(lambda s: row(s, "db01")[3:4] == ["0"], "no client left")
        received = b""
        while b"]\r\n" not in received:
            chunk = operator.recv(4096)
            if not chunk:
                break
            received += chunk
        assert b"[vspcd: disconnected by " in received and b": lunch]" in received
    stack.keys("q")


@pytest.mark.parametrize("stack", SIZES, indirect=True)
def test_reconnects_after_a_daemon_restart(stack: Stack) -> None:
    stack.stop_daemon()
    shown = stack.wait_for(lambda s: "[NOT CONNECTED]" in s, "the lost connection")
    assert not up(shown, "db01") and not up(shown, "web02")  # never "up" while we cannot know
    stack.wait_for(lambda s: "not connected to vspcd" in s and "retry" in s, "the back-off")
    # Enter while disconnected: refused, and the status line still says why.
    stack.keys("Enter")
    shown = stack.wait_for(lambda s: "wait for the reconnection" in s, "attach refused")
    assert "not connected to vspcd" in shown
    capture(f"disconnected-{stack.size[0]}x{stack.size[1]}", shown)
    stack.vms.drop()

    # A new daemon on the same socket; only db01 comes back.
    stack.start_daemon()
    stack.vms.connect(stack.proxy, UUID_A, "db01")
    shown = stack.wait_for(
        lambda s: "reconnected to vspcd" in s and up(s, "db01"), "reconnected, db01 up"
    )
    assert row(shown, "web02") == []  # the list is the new daemon's, not the old one's
    assert "[NOT CONNECTED]" not in shown
    # And the preview is live again.
    stack.vms.send("db01", b"db01 after the restart\r\n")
    stack.wait_for(lambda s: "db01 after the restart" in s, "db01 live after the restart")
    stack.keys("q")


def test_sizes_are_what_was_asked(short_dir: Path) -> None:
    """The captures above are only meaningful if tmux gives the pane the size asked."""
    tmux = Tmux(short_dir.name)
    try:
        tmux.run("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", "sleep 30")
        assert tmux.run("display", "-p", "-t", "tui", "#{pane_width}x#{pane_height}").strip() == (
            "80x24"
        )
    finally:
        subprocess.run([*tmux.args, "kill-server"], capture_output=True, timeout=10)
        time.sleep(0)  # nothing to wait for: kill-server returns when the server is gone
