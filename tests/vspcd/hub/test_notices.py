"""Consoles say what is going on in one `[vspcd: ...]` line each.

VM not connected (on connect), VM connected / disconnected / vMotion done, input
dropped under another client's lock (once per lock), lock released; `--no-notices`
turns them off.  Hub-level tests with the fakes, then a raw telnet client over
loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.vspcd.faces.test_admin import daemon_with
from tests.vspcd.fakes import FakeClient
from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from tests.vspcd.hub.test_hub import (
    SEQ,
    attach,
    connect,
    console_of,
    make_rig,
    peer,
    pending,
    scene,
)
from vspc.common import vmware as vm
from vspc.vspcd.hub.console import LockMode

# ---------------------------------------------------------------------- hub level


def test_vm_state_changes_are_told_to_clients() -> None:
    rig = make_rig()
    conn, _ = connect(rig)
    console = console_of(conn)
    rig.hub.vm_closed(conn)
    _, viewer = attach(rig, console)
    assert viewer.notes == ["VM not connected; input is held until it is"]
    connect(rig, peer="esx-a:2")
    rig.hub.vm_closed(console.vm)  # type: ignore[arg-type]
    assert viewer.notes[1:] == ["VM vm01 connected", "VM vm01 disconnected; input is held"]


def test_attaching_to_a_connected_console_says_nothing() -> None:
    s = scene()
    assert s.viewer.notes == []


def test_vmotion_done_is_told_once() -> None:
    s = scene()
    cookie = pending(s)
    dst, _ = peer(s.rig, cookie)
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.viewer.notes == ["vMotion done: VM now connected from esx-b:40002"]


def test_dropped_input_is_told_once_per_lock_and_release_is_told() -> None:
    s = scene()
    writer, writer_fake = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    s.type(b"a")
    s.type(b"b")
    expected = f"input dropped: write lock held by client {writer.ident} (c:w)"
    assert s.viewer.notes == [expected]
    s.rig.hub.detach(writer)
    assert s.viewer.notes[-1] == f"write lock released by client {writer.ident} (c:w)"
    s.type(b"c")  # may write again: nothing said
    second, _ = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:x")
    s.type(b"d")
    s.type(b"e")
    assert s.viewer.notes[-1] == f"input dropped: write lock held by client {second.ident} (c:x)"
    assert len(s.viewer.notes) == 3
    assert writer_fake.notes == []


def test_read_only_attachment_is_told_once() -> None:
    s = scene()
    _, fake = attach(s.rig, s.console, readonly=True)
    client = s.console.clients[-1]
    s.rig.hub.client_input(client, b"x")
    s.rig.hub.client_input(client, b"y")
    assert fake.notes == ["input dropped: you attached read-only"]


def test_names_in_notices_are_rendered_safe() -> None:
    rig = make_rig()
    conn, _ = connect(rig, name="evil\x1b]0;pwned\x07")
    console = console_of(conn)
    rig.hub.vm_closed(conn)
    viewer = FakeClient()
    rig.hub.attach(console, viewer, kind="telnet")
    connect(rig, name="evil\x1b]0;pwned\x07", peer="esx-a:9")
    assert "\x1b" not in viewer.notes[-1] and "\x07" not in viewer.notes[-1]


# ---------------------------------------------------------------------- raw telnet


def test_raw_telnet_client_sees_what_is_going_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.proxy_port is not None and daemon.hub is not None
            src = await FakeEsxi.connect(daemon.proxy_port, name="web01")
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            await src.close()
            await events.wait("vm_disconnected")
            op = await Operator.connect(port, raw=True)
            await op.wire.expect(b"\r\n[vspcd: VM not connected; input is held until it is]\r\n")
            src = await FakeEsxi.connect(daemon.proxy_port, name="web01")
            await op.wire.expect(b"[vspcd: VM web01 connected]")
            # vMotion
            cookie = await src.begin(SEQ)
            dst = await FakeEsxi.connect(daemon.proxy_port, name="web01", cookie=cookie)
            await events.wait("vmotion_peer")
            dst.complete(SEQ)
            await op.wire.expect(b"[vspcd: vMotion done: VM now connected from 127.0.0.1:")
            # Another client's write lock: told once, then told it is released.
            (console,) = daemon.hub.consoles()
            holder = daemon.hub.attach(
                console, FakeClient("10.1.1.1:7"), kind="attach", lock=LockMode.WRITE, user="alice"
            )
            op.type(b"one")
            op.type(b"two")
            await op.wire.expect(b"[vspcd: input dropped: write lock held by client")
            daemon.hub.detach(holder)
            end = await op.wire.expect(b"[vspcd: write lock released by client")
            assert op.wire.data.count(b"input dropped") == 1
            assert b"alice" in op.wire.data
            await dst.close()
            await op.wire.expect(b"[vspcd: VM web01 disconnected; input is held]", start=end)
            await op.close()
            await src.close()

    asyncio.run(main())


def test_no_notices_keeps_a_scripted_client_to_vm_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--no-notices") as (daemon, events):
            assert daemon.proxy_port is not None
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            await src.close()
            await events.wait("vm_disconnected")
            op = await Operator.connect(port, raw=True)
            await events.wait("client_attached")
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A, count=2)
            src.send(b"only VM bytes")
            await op.wire.expect(b"only VM bytes")
            assert b"[vspcd:" not in op.wire.data
            await op.close()
            await src.close()

    asyncio.run(main())


def test_admin_attach_is_told_after_its_reply_and_replay(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            vm.say(b"last words")
            await h.until(lambda c: c["counters"]["bytes_from_vm"] == len(b"last words"))
            vm.writer.close()
            await h.until(lambda c: not c["connected"])
            peer, reply = await h.attach(replay=10)
            assert reply["ok"] is True
            expected = b"last words\r\n[vspcd: VM not connected; input is held until it is]\r\n"
            assert await peer.read_exactly(len(expected)) == expected

    asyncio.run(main())
