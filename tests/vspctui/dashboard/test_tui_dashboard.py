"""The dashboard (docs/vspc-tui.md), headless against a real in-process vspcd.

Keys go in through `App.press` (the `MainLoop.process_input` the terminal feeds) and
the screen is `HeadlessScreen`'s last canvas; waits are on `App.changed` (set after
every redraw) under a timeout, as in test_tui_app.py.  The same flows run in tmux
against a daemon subprocess in test_tui_tmux.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from tests.vspctui.dashboard.test_tui_app import TIMEOUT, HeadlessScreen, short_dir, until
from vspc.common.admin import LockMode
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.dashboard.app import App, Mode, main
from vspc.vspctui.shell.commands import Context, ExitCode

__all__ = ["short_dir"]  # the fixture, imported for the tests below

DB01_KEY = UUID_A.replace("-", "").lower()


def _keys_of(app: App, *names: str) -> set[str]:
    return {k for k, c in app.model.consoles.items() if c.name in names}


def test_preview_follows_the_focus_and_pins_stay(short_dir: Path) -> None:
    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            web02 = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02")
            await identified(events, UUID_B)
            web02.send(b"web02 scrollback\r\n")
            screen = HeadlessScreen()
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: "tail: db01 (live)" in screen.text, "db01 live")
            await until(app, lambda: set(app.model.tails) == _keys_of(app, "db01"), "db01 tail")

            # Down: web02's scrollback and output are live; db01 is no longer followed.
            app.press("j")
            await until(app, lambda: "web02 scrollback" in screen.text, "web02's scrollback")
            await until(
                app, lambda: set(app.model.tails) == _keys_of(app, "web02"), "only web02 tailed"
            )
            db01.send(b"db01 unseen\r\n")
            web02.send(b"web02 live\r\n")
            await until(app, lambda: "web02 live" in screen.text, "web02's output")
            assert not app.model.tail(next(iter(_keys_of(app, "db01"))))

            # t pins web02: still followed, and marked, when the focus moves back.
            app.press("t", "k")
            both = _keys_of(app, "db01", "web02")
            await until(app, lambda: set(app.model.tails) == both, "db01 and web02 tailed")
            assert "* web02" in screen.text and "tail: db01 (live)" in screen.text
            app.press("j", "t", "k")  # unpinned: dropped once the focus is elsewhere
            await until(app, lambda: set(app.model.tails) == _keys_of(app, "db01"), "unpinned")

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            await db01.close()
            await web02.close()

    asyncio.run(run())


def test_activity_column_sort_and_grid(short_dir: Path) -> None:
    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            vms = [
                await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01"),
                await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02"),
            ]
            await identified(events, UUID_B)
            screen = HeadlessScreen((100, 32))
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: bool(screen.row("web02")), "both consoles")
            assert "ACT" in screen.text  # 100 columns: room for the activity column

            # Output seen on web02 (the grid follows both) makes it the most active.
            app.press("g")
            assert app.mode is Mode.GRID
            await until(app, lambda: len(app.model.tails) == 2, "the grid's two tails")
            vms[1].send(b"busy web02\r\n")
            await until(app, lambda: screen.row("web02")[4:5] == ["0s"], "web02 active")
            assert app.model.most_active(1) == list(_keys_of(app, "web02"))

            # s: by activity, web02 first; then by port; then by name again.
            app.press("s")
            assert "sort: activity" in screen.text
            names = [words[0] for words in screen_rows(screen)]
            assert names == ["web02", "db01"]
            app.press("s", "s")
            assert "sort: name" in screen.text

            # Pinning makes the grid show the pinned consoles only.
            app.press("t")
            await until(app, lambda: "grid: 1 pinned console(s)" in screen.text, "pinned grid")
            app.press("g")
            assert app.mode is Mode.TAIL

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            for vm in vms:
                await vm.close()

    asyncio.run(run())


def screen_rows(screen: HeadlessScreen) -> list[list[str]]:
    from tests.vspctui.dashboard.test_tui_app import _console_rows

    return _console_rows(screen.rows)


def test_detail_and_kick_with_confirmation(short_dir: Path) -> None:
    async def run() -> None:
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            db01.send(b"0123456789")
            operator = await Operator.connect(console_port(daemon, DB01_KEY))
            screen = HeadlessScreen((100, 32))
            app = App(AdminAddress(path=str(short_dir / "admin.sock")), screen=screen)
            task = asyncio.create_task(app.run())
            await until(app, lambda: screen.row("db01")[3:4] == ["1"], "db01's client")

            app.press("d")
            await until(
                app,
                lambda: "clients  1" in screen.text and "asking vspcd" not in screen.text,
                "the detail pane from `show`",
            )
            assert "detail: db01" in screen.text and "telnet" in screen.text
            assert "vMotions 0" in screen.text and "lock     none" in screen.text
            # The pane asks again as things change (here: once a tick).
            await until(app, lambda: "from VM 10 B" in screen.text, "db01's bytes counted")

            # K picks the client, Enter asks, Esc keeps it.
            app.press("K")
            assert "kick which client of db01?" in screen.text
            app.press("enter")
            assert "Kick client #" in screen.text and "off db01?" in screen.text
            app.press("esc")
            assert "kept client #" in screen.text
            # ... and Enter on the confirmation kicks, with the reason typed there.
            app.press("K", "enter", *"bye", "enter")
            await operator.output.expect(b": bye]\r\n")
            await until(app, lambda: "kicked client #" in screen.text, "kicked")
            await until(app, lambda: "clients  0" in screen.text, "detail updated")

            app.press("d")
            assert app.mode is Mode.TAIL
            # A console without clients: nothing to pick.
            app.press("K")
            assert "no client is attached to db01" in screen.text

            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            await operator.close()
            await db01.close()

    asyncio.run(run())


def test_reconnects_with_a_fresh_list_and_says_so_after_an_attach(short_dir: Path) -> None:
    stopped = asyncio.Event()

    async def attach_while_vspcd_stops(
        ctx: Context, vm: str, *, lock: LockMode | None = None, readonly: bool = False,
        replay: int = 0,
    ) -> int:  # fmt: skip
        await stopped.wait()  # the daemon went away while the operator was attached
        return ExitCode.OK

    async def run() -> None:
        screen = HeadlessScreen()
        address = AdminAddress(path=str(short_dir / "admin.sock"))
        app = App(address, screen=screen, attach=attach_while_vspcd_stops, backoff=(0.05, 0.2))
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            web02 = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web02")
            await identified(events, UUID_B)
            task = asyncio.create_task(app.run())
            await until(app, lambda: screen.row("web02")[2:3] == ["up"], "web02 up")
            app.press("enter")
            await until(app, lambda: app.attaching, "attached")
        await web02.close()
        await until(app, lambda: not app.model.connected, "the lost connection")
        stopped.set()
        await until(app, lambda: "detached from web02" in screen.text, "back from attach")
        # The attach's message does not hide the connection state, nor do rows say "up".
        assert "not connected to vspcd" in screen.text and "[NOT CONNECTED]" in screen.text
        assert screen.row("web02")[2:3] == ["?"]
        app.press("enter")
        assert "attach: wait for the reconnection" in screen.text

        app.reconnected.clear()
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            await asyncio.wait_for(app.reconnected.wait(), TIMEOUT)
            await until(app, lambda: screen.row("db01")[2:3] == ["up"], "the new daemon's list")
            assert screen.row("web02") == []  # rebuilt from `subscribe`, not patched
            assert "reconnected to vspcd" in screen.text
            db01.send(b"after the restart\r\n")
            await until(app, lambda: "after the restart" in screen.text, "live tail again")
            app.press("q")
            assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
            await db01.close()

    asyncio.run(run())


def test_daemon_activity_fields_fill_the_column_and_are_asked_again(short_dir: Path) -> None:
    """A daemon whose rows say when each console last printed (`last_output`, optional,
    docs/vspc-tui.md "Activity"): the column and the activity order use it, and `list`
    is asked again for consoles nobody tails.  A minimal admin server plays that
    daemon, so the figures are exact: alpha printed two minutes ago, beta has not yet
    (it sends only `created`, as vspcd does before the first output)."""
    path = str(short_dir / "fake.sock")
    created = time.time() - 3600
    alpha = {"key": "a" * 32, "name": "alpha", "uuid": "u1", "connected": True}
    beta = {"key": "b" * 32, "name": "beta", "uuid": "u2", "connected": True}
    beta |= {"created": created}
    lists = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal lists
        while line := await reader.readline():
            request = json.loads(line)
            reply: dict[str, Any] = {"ok": True, "id": request["id"]}
            if request["cmd"] == "subscribe":
                reply["vms"] = [alpha | {"last_output": time.time() - 120}, beta]
            elif request["cmd"] == "list":
                lists += 1
                alpha_output = {"last_output": time.time() - 120}
                reply["vms"] = [alpha | alpha_output, beta | {"last_output": time.time()}]
            elif request["cmd"] == "tail":
                reply |= {"key": request["vm"], "name": "?", "data_b64": ""}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def run() -> None:
        server = await asyncio.start_unix_server(serve, path)
        screen = HeadlessScreen((100, 32))
        app = App(AdminAddress(path=path), screen=screen, activity_poll=0.05)
        task = asyncio.create_task(app.run())
        await until(app, lambda: screen.row("alpha")[4:5] == ["2m"], "alpha's age from its row")
        await until(app, lambda: screen.row("beta")[4:5] == ["0s"], "beta's age from `list`")
        assert lists >= 1
        app.press("s")
        assert [words[0] for words in screen_rows(screen)] == ["beta", "alpha"]
        app.press("q")
        assert await asyncio.wait_for(task, TIMEOUT) == ExitCode.OK
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def test_default_socket_is_the_shared_rule_and_reconnect_max_is_checked(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --socket: vspc.common.paths.client_socket decides; here the config file does.
    config = short_dir / "vspcd.toml"
    config.write_text(f'admin_socket = "{short_dir / "from-config.sock"}"\n')
    monkeypatch.delenv("VSPC_SOCKET", raising=False)
    monkeypatch.setenv("VSPC_CONFIG", str(config))
    assert main([]) == ExitCode.NO_DAEMON
    assert "from-config.sock" in capsys.readouterr().err
    monkeypatch.setenv("VSPC_SOCKET", str(short_dir / "from-env.sock"))
    assert main([]) == ExitCode.NO_DAEMON
    assert "from-env.sock" in capsys.readouterr().err
    for bad in ("0", "-1", "soon", "3601"):
        assert main(["--reconnect-max", bad]) == ExitCode.USAGE
        assert "--reconnect-max" in capsys.readouterr().err


def test_a_console_that_comes_back_after_a_reconnect_goes_live(short_dir: Path) -> None:
    """The dashboard reconnects to a new vspcd before the VM does: when db01 comes
    back under the focus, its preview is live again without a key press."""

    async def run() -> None:
        screen = HeadlessScreen()
        address = AdminAddress(path=str(short_dir / "admin.sock"))
        app = App(address, screen=screen, backoff=(0.05, 0.2))
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            task = asyncio.create_task(app.run())
            await until(app, lambda: DB01_KEY in app.model.tails, "db01 tailed")
        await db01.close()
        await until(app, lambda: not app.model.connected, "the lost connection")
        app.reconnected.clear()
        async with running(short_dir) as (daemon, events):
            assert daemon.proxy_port is not None
            await asyncio.wait_for(app.reconnected.wait(), TIMEOUT)  # no console yet
            db01 = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            await until(app, lambda: DB01_KEY in app.model.tails, "db01 tailed again")
            db01.send(b"back again\r\n")
            await until(app, lambda: "back again" in screen.text, "db01 live again")
            app.press("q")
            await asyncio.wait_for(task, TIMEOUT)
            await db01.close()

    asyncio.run(run())
