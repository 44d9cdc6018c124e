"""The admin server (vspcd/faces/admin/) against a real in-process daemon.

Spec: docs/admin-protocol.md.  Every test starts `Daemon(config)` from
vspcd/service/server.py inside `asyncio.run(...)`, on 127.0.0.1 with port 0 for ESXi and a
Unix socket under tmp_path for the admin channel.  Consoles are created by fake ESXi
hosts (`common/esxi.py` EsxiSession) connecting to the proxy port.  Nothing sleeps to
synchronise: every wait is a reply, an event or bytes, under `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import json
import logging
import os
import pwd
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import free_port
from vspc.common.admin import (
    COMMANDS,
    Access,
    ClientInfo,
    ConsoleInfo,
    Level,
    encode_message,
)
from vspc.common.esxi import ConsoleInput, EsxiEvent, EsxiSession, Goahead, PeerOk
from vspc.common.vmware import parse_service_uri
from vspc.vspcd.faces.admin import handlers, limits
from vspc.vspcd.faces.admin import link as link_module
from vspc.vspcd.faces.admin.access import Gate
from vspc.vspcd.faces.admin.link import AdminLink
from vspc.vspcd.faces.admin.policy import Identity, Source
from vspc.vspcd.faces.admin.server import AdminServer
from vspc.vspcd.service.config import Config, parse_args
from vspc.vspcd.service.server import Daemon

WAIT = 5.0  # seconds any single expected thing may take
U1 = "0123456789abcdeffedcba9800000000"
U2 = "89abcdef0123456776543210fedcba98"
U1_WIRE = "01 23 45 67 89 ab cd ef-fe dc ba 98 00 00 00 00"
ME = pwd.getpwuid(os.geteuid()).pw_name


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def make_config(tmp_path: Path, *extra: str) -> Config:
    return parse_args(
        [
            "--proxy-iface",
            "127.0.0.1",
            "--proxy-port",
            "0",
            "--admin-socket",
            str(tmp_path / "s.sock"),
            "-r",
            str(free_port()),
            *extra,
        ],
        {},
    )


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


# ----------------------------------------------------------------------- peers


class Admin:
    """One admin connection: JSON requests, replies, events, then maybe raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | bytes) -> None:
        self.writer.write(message if isinstance(message, bytes) else encode_message(message))
        await within(self.writer.drain())

    async def message(self) -> dict[str, Any]:
        line = await within(self.reader.readline())
        assert line.endswith(b"\n"), f"connection ended: {line[-200:]!r}"
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    async def reply(self) -> dict[str, Any]:
        """The next reply; events on the way are kept in `events`."""
        while True:
            message = await self.message()
            if "ok" in message:
                return message
            self.events.append(message)

    async def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        await self.send({"cmd": cmd, **fields})
        return await self.reply()

    async def ok(self, cmd: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(cmd, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def error(self, cmd: str, **fields: Any) -> str:
        reply = await self.request(cmd, **fields)
        assert reply["ok"] is False, reply
        code: str = reply["error"]["code"]
        return code

    async def event(self, kind: str, /, **match: Any) -> dict[str, Any]:
        """The next event called `kind` whose fields include `match`."""

        def wanted(event: dict[str, Any]) -> bool:
            return event.get("event") == kind and all(event.get(k) == v for k, v in match.items())

        for event in self.events:
            if wanted(event):
                self.events.remove(event)
                return event
        while True:
            message = await self.message()
            assert "ok" not in message, f"reply {message} while waiting for {kind}"
            if wanted(message):
                return message
            self.events.append(message)

    async def read_until(self, token: bytes) -> bytes:
        """Raw bytes (attach channel) up to and including `token`."""
        return bytes(await within(self.reader.readuntil(token)))

    async def read_exactly(self, count: int) -> bytes:
        return bytes(await within(self.reader.readexactly(count)))

    async def read_to_eof(self) -> bytes:
        return bytes(await within(self.reader.read()))

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with suppress(ConnectionError, BrokenPipeError):
            await within(self.writer.wait_closed())


class FakeVm:
    """An ESXi host's serial-port connection, driven by common/esxi.py."""

    def __init__(
        self, session: EsxiSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # console input from operators
        self.events: list[EsxiEvent] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, port: int, session: EsxiSession) -> FakeVm:
        if session.role is None:
            session.connect_source()
        reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
        vm = cls(session, reader, writer)
        vm._flush()
        return vm

    async def _pump(self) -> None:
        while data := await self.reader.read(65536):
            events = self.session.receive_data(data)
            self._flush()
            async with self._changed:
                for event in events:
                    match event:
                        case ConsoleInput(payload):
                            self.received += payload
                        case _:
                            self.events.append(event)
                self._changed.notify_all()

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)

    def say(self, data: bytes) -> None:
        self.session.send_data(data)
        self._flush()

    async def expect(self, data: bytes) -> None:
        """Wait until the operators' input so far ends with... contains `data`."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: data in self.received)

        await within(wait())

    async def event(self, kind: type) -> Any:
        async def wait() -> Any:
            async with self._changed:
                await self._changed.wait_for(lambda: any(isinstance(e, kind) for e in self.events))
                found = next(e for e in self.events if isinstance(e, kind))
                self.events.remove(found)
                return found

        return await within(wait())

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with suppress(ConnectionError):
            await within(self.writer.wait_closed())
        self._task.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await self._task


class Harness:
    """One running daemon plus every peer a test opened (closed at the end)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._admins: list[Admin] = []
        self._vms: list[FakeVm] = []

    @property
    def server(self) -> AdminServer:
        server = self.daemon._admin  # the Daemon's own AdminServer, for its state
        assert server is not None
        return server

    async def admin(self) -> Admin:
        reader, writer = await within(
            asyncio.open_unix_connection(str(self.daemon.config.admin_socket), limit=1 << 24)
        )
        peer = Admin(reader, writer)
        self._admins.append(peer)
        return peer

    async def tcp(self, port: int) -> Admin:
        reader, writer = await within(asyncio.open_connection("127.0.0.1", port, limit=1 << 24))
        peer = Admin(reader, writer)
        self._admins.append(peer)
        return peer

    async def telnet(self, port: int) -> Admin:
        # A telnet client is just raw bytes here; its negotiation is ignored.
        return await self.tcp(port)

    async def vm(self, uuid: str = U1, name: str = "vm01", uri: str = "vSPC.py") -> FakeVm:
        """A VM whose console is up (its vm_connected event has been sent)."""
        watcher = await self.admin()
        await watcher.ok("subscribe")
        assert self.daemon.proxy_port is not None
        vm = await FakeVm.open(self.daemon.proxy_port, EsxiSession(uuid, name, service_uri=uri))
        self._vms.append(vm)
        _, label = parse_service_uri(uri)
        key = f"{uuid}_{label}" if label else uuid
        await watcher.event("vm_connected", key=key)
        await watcher.close()
        # VM-NAME may trail the binding by a segment: wait until the name is known.
        await self.until(lambda console: console["vm_name"] == name, vm=key)
        return vm

    async def attach(self, vm: str = "vm01", **fields: Any) -> tuple[Admin, dict[str, Any]]:
        peer = await self.admin()
        reply = await peer.request("attach", vm=vm, **fields)
        return peer, reply

    async def shown(self, vm: str = "vm01") -> dict[str, Any]:
        peer = await self.admin()
        reply = await peer.ok("show", vm=vm)
        await peer.close()
        console: dict[str, Any] = reply["console"]
        return console

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], vm: str = "vm01"
    ) -> dict[str, Any]:
        """`show` round trips until the console satisfies `predicate` (bytes from
        another connection have no ordering relative to ours)."""
        peer = await self.admin()
        for _ in range(500):
            console: dict[str, Any] = (await peer.ok("show", vm=vm))["console"]
            if predicate(console):
                await peer.close()
                return console
        raise AssertionError(f"console never matched: {console}")

    async def close(self) -> None:
        for peer in self._admins:
            await peer.close()
        for vm in self._vms:
            await vm.close()


@asynccontextmanager
async def daemon_with(tmp_path: Path, *extra: str) -> AsyncIterator[Harness]:
    daemon = Daemon(make_config(tmp_path, *extra))
    await daemon.start()
    harness = Harness(daemon)
    try:
        yield harness
    finally:
        await harness.close()
        await daemon.stop()


class Bystanders:
    """Another admin client and an attached console viewer that must keep working."""

    def __init__(self, h: Harness, vm: FakeVm, other: Admin, viewer: Admin) -> None:
        self.h, self.vm, self.other, self.viewer = h, vm, other, viewer
        self._round = 0

    @classmethod
    async def start(cls, h: Harness, vm: FakeVm) -> Bystanders:
        other = await h.admin()
        await other.ok("hello")
        viewer, reply = await h.attach()
        assert reply["ok"] is True
        return cls(h, vm, other, viewer)

    async def check(self) -> None:
        self._round += 1
        listed = await self.other.ok("list")
        assert [c["name"] for c in listed["vms"]] == ["vm01"]
        token = f"<out{self._round}>".encode()
        self.vm.say(token)
        await self.viewer.read_until(token)
        typed = f"<in{self._round}>".encode()
        await self.viewer.send(typed)
        await self.vm.expect(typed)


def _my_gids() -> list[int]:
    """This process's gids as SO_PEERGROUPS reports them to the daemon: primary first."""
    primary = os.getegid()
    return [primary, *sorted(set(os.getgroups()) - {primary})]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------- commands


def test_hello_reports_protocol_capabilities_and_peer(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            peer = await h.admin()
            reply = await peer.request("hello", id=1, client="pytest/1")
            assert reply == {
                "ok": True,
                "id": 1,
                "protocol": 1,
                "version": "0.1.0",
                "capabilities": sorted(COMMANDS),
                "access": "full",
                "uid": os.geteuid(),
                "user": ME,
                # who the peer is, from its own credentials, and its default level
                "gid": os.getegid(),
                "groups": [grp.getgrgid(g).gr_name for g in _my_gids()],
                "level": "control",
            }
            assert (await peer.request("hello", id="abc"))["id"] == "abc"
            assert "id" not in await peer.request("hello")

    run(main)


def test_list_and_show(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            peer = await h.admin()
            assert (await peer.ok("list"))["vms"] == []
            vm = await h.vm()
            vm.say(b"abc")
            viewer, _ = await h.attach(replay=3)
            assert await viewer.read_exactly(3) == b"abc"
            await h.vm(U2, "web02", "vSPC.py?port=console2")
            rows = (await peer.ok("list", id=2))["vms"]
            assert [r["key"] for r in rows] == [U1, f"{U2}_console2"]  # sorted by key
            first, second = (ConsoleInfo.from_json(r) for r in rows)
            assert first.name == "vm01" and first.vm_name == "vm01" and first.label == ""
            assert first.uuid == "01234567-89ab-cdef-fedc-ba9800000000"
            assert first.connected and first.clients == 1 and first.vmotion == "normal"
            assert first.expires_in is None and first.lock is None and first.lock_holder is None
            assert isinstance(first.port, int)
            (client,) = first.attached
            assert client.kind == "attach" and client.peer == "unix" and client.uid == os.geteuid()
            assert client.user == ME and client.mode == "free_for_all_or_readonly"
            assert abs(client.since - time.time()) < 60  # Unix time
            assert second.name == "web02_console2" and second.label == "console2"
            assert "service_uri" not in rows[0] and "counters" not in rows[0]  # show only

            shown = (await peer.ok("show", vm="vm01"))["console"]
            assert {k: v for k, v in shown.items() if k in rows[0]} == rows[0]
            assert shown["service_uri"] == "vSPC.py"
            assert shown["vm_peer"].startswith("127.0.0.1:")
            assert shown["counters"]["bytes_from_vm"] == 3
            assert shown["counters"]["vm_connects"] == 1
            # every documented selector
            for selector in (U1, U1_WIRE, "01234567-89ab-cdef-fedc-ba9800000000", str(first.port)):
                assert (await peer.ok("show", vm=selector))["console"]["key"] == U1
            assert (await peer.ok("show", vm="web02"))["console"]["key"] == f"{U2}_console2"
            reply = await peer.request("show", id=4, vm="nosuch")
            assert reply == {
                "ok": False,
                "id": 4,
                "error": {"code": "vm_not_found", "message": "no console matches 'nosuch'"},
            }
            await h.vm(U2, "web02", "vSPC.py?port=console3")
            assert await peer.error("show", vm="web02") == "ambiguous_vm"
            assert await peer.error("show", vm=U2) == "ambiguous_vm"  # no unlabelled port

    run(main)


def test_attach_channel_carries_raw_bytes_both_ways(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            watcher = await h.admin()
            await watcher.ok("subscribe")
            vm.say(b"old\x00\xff\x01")
            await watcher.ok("tail", vm="vm01", bytes=0, follow=True)
            vm.say(b"boot\x00\xff\xfe")
            await watcher.event("output", data_b64=b64(b"boot\x00\xff\xfe"))

            peer = await h.admin()
            # Bytes after the attach line are console input once it succeeds.
            await peer.send(encode_message({"cmd": "attach", "id": 5, "vm": "vm01", "replay": 6}))
            reply = await peer.reply()
            assert reply == {
                "ok": True,
                "id": 5,
                "key": U1,
                "name": "vm01",
                "client": reply["client"],
                "mode": "free_for_all_or_readonly",
                "readonly": False,
            }
            assert await peer.read_exactly(6) == b"\x00\xff\x01boot\x00\xff\xfe"[-6:]
            vm.say(b"live\xff\xff\x00\r\n")
            assert await peer.read_exactly(9) == b"live\xff\xff\x00\r\n"
            await peer.send(b'\xff\x00typed\r{"cmd":"list"}\n')  # raw, not JSON any more
            await vm.expect(b'\xff\x00typed\r{"cmd":"list"}\n')
            attached = await watcher.event("client_attached")
            assert attached["client"]["id"] == reply["client"]

            # EOF means detach; the daemon closes its side.
            peer.writer.write_eof()
            assert await peer.read_to_eof() == b""
            detached = await watcher.event("client_detached", client=reply["client"])
            assert "reason" not in detached
            assert (await h.shown())["clients"] == 0

    run(main)


def test_input_sent_right_after_the_attach_line_reaches_the_vm(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            peer = await h.admin()
            await peer.send(encode_message({"cmd": "attach", "vm": "vm01"}) + b"early\xff")
            assert (await peer.reply())["ok"] is True
            await vm.expect(b"early\xff")

    run(main)


def test_attach_refusals_leave_a_json_connection(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path, "--client-limit", "1") as h:
            await h.vm()
            holder, reply = await h.attach(lock="exclusive")
            assert reply["ok"] is True
            peer = await h.admin()
            reply = await peer.request("attach", id=5, vm="vm01")
            assert reply["error"]["code"] == "client_limit" and reply["id"] == 5
            assert await peer.error("attach", vm="db1") == "vm_not_found"
            assert await peer.error("attach", vm="vm01", lock="write", readonly=True) == "bad_field"
            await peer.ok("hello")

    run(main)


# The lock table of docs/admin-protocol.md: (requested, readonly) x console state.
HOLDER, RW, RO, FAIL = "holder", "read-write", "read-only", "lock_failed"
LOCK_TABLE = {
    ("exclusive", False): (HOLDER, FAIL, FAIL, FAIL),
    ("write", False): (HOLDER, HOLDER, FAIL, FAIL),
    ("free_for_all", False): (RW, RW, FAIL, FAIL),
    ("free_for_all_or_readonly", False): (RW, RW, RO, FAIL),
    ("free_for_all", True): (RO, RO, RO, FAIL),
    ("free_for_all_or_readonly", True): (RO, RO, RO, FAIL),
}
STATES = ("nobody", "others", "write_held", "exclusive_held")


@pytest.mark.parametrize("state", range(4), ids=STATES)
@pytest.mark.parametrize(
    "request_", list(LOCK_TABLE), ids=lambda r: f"{r[0]}{'-ro' if r[1] else ''}"
)
def test_lock_table(tmp_path: Path, request_: tuple[str, bool], state: int) -> None:
    lock, readonly = request_
    expected = LOCK_TABLE[request_][state]

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            other: Admin | None = None
            if state:
                setup = (None, "free_for_all_or_readonly", "write", "exclusive")[state]
                other, reply = await h.attach(lock=setup)
                assert reply["ok"] is True
            peer, reply = await h.attach(lock=lock, readonly=readonly)
            if expected == FAIL:
                assert reply["ok"] is False and reply["error"]["code"] == "lock_failed"
                return
            assert reply["ok"] is True and reply["mode"] == lock
            assert reply["readonly"] is (expected == RO)
            console = await h.shown()
            rows = {c["id"]: c for c in console["attached"]}
            assert rows[reply["client"]]["readonly"] is (expected == RO)
            if expected == HOLDER:
                assert console["lock"] == lock and console["lock_holder"]["id"] == reply["client"]
                if other is not None:  # write granted over a free client: it went read-only
                    assert [c["readonly"] for c in console["attached"]] == [True, False]
            # The verdict is what reaches the VM.
            await peer.send(b"<typed>")
            if expected == RO:
                await h.until(lambda c: c["counters"]["input_dropped"] == len(b"<typed>"))
                assert b"<typed>" not in vm.received
            else:
                await vm.expect(b"<typed>")

    run(main)


def test_write_lock_release_lets_others_write_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            watcher = await h.admin()
            await watcher.ok("subscribe")
            free, _ = await h.attach()
            writer, grant = await h.attach(lock="write")
            changed = await watcher.event("lock_changed")
            assert changed["lock"] == "write" and changed["holder"] == grant["client"]
            await free.send(b"<dropped>")
            await writer.send(b"<kept>")
            await vm.expect(b"<kept>")
            writer.writer.write_eof()
            await writer.read_to_eof()
            assert (await watcher.event("lock_changed"))["lock"] is None
            await free.send(b"<free again>")
            await vm.expect(b"<free again>")
            assert b"<dropped>" not in vm.received

    run(main)


def test_exclusive_lock_refuses_telnet_clients(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            _, reply = await h.attach(lock="exclusive")
            assert reply["ok"] is True
            telnet = await h.telnet((await h.shown())["port"])
            assert b"locked exclusively" in await telnet.read_to_eof()

    run(main)


def test_clear_disconnects_telnet_and_attach_clients_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            await h.vm(U2, "web02", "vSPC.py?port=console2")
            port = (await h.shown())["port"]
            watcher = await h.admin()
            await watcher.ok("subscribe")
            telnet = await h.telnet(port)
            await watcher.event("client_attached")
            attached, grant = await h.attach()
            peer = await h.admin()
            reply = await peer.request("clear", id=6, vm="vm01", reason="maintenance")
            assert reply == {"ok": True, "id": 6, "key": U1, "name": "vm01", "cleared": 2}
            notice = f"\r\n[vspcd: disconnected by {ME}: maintenance]\r\n".encode()
            assert (await attached.read_to_eof()).endswith(notice)
            assert (await telnet.read_to_eof()).endswith(notice)
            detached = await watcher.event("client_detached", client=grant["client"])
            assert detached["reason"] == f"disconnected by {ME}: maintenance"
            web = (await h.shown("web02"))["port"]
            reply = await peer.ok("clear", port=web)
            assert reply["cleared"] == 0 and reply["name"] == "web02_console2"
            assert await peer.error("clear", port=1) == "vm_not_found"
            assert await peer.error("clear", vm="nosuch") == "vm_not_found"
            assert await peer.error("clear") == "bad_field"
            assert await peer.error("clear", vm="vm01", port=port) == "bad_field"
            assert await peer.error("clear", vm="vm01", reason="x" * 1025) == "bad_field"

    run(main)


def test_kick_disconnects_one_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            stays, _ = await h.attach()
            goes, grant = await h.attach()
            peer = await h.admin()
            reply = await peer.request("kick", id=9, client=grant["client"], reason="idle")
            assert reply == {
                "ok": True,
                "id": 9,
                "key": U1,
                "name": "vm01",
                "client": grant["client"],
            }
            assert (await goes.read_to_eof()).endswith(
                f"\r\n[vspcd: disconnected by {ME}: idle]\r\n".encode()
            )
            reply = await peer.request("kick", id=10, client=99)
            assert reply["error"] == {"code": "not_attached", "message": "no client with id 99"}
            assert reply["id"] == 10
            (left,) = (await h.shown())["attached"]
            await peer.ok("kick", client=left["id"])
            assert (await stays.read_to_eof()).endswith(
                f"[vspcd: disconnected by {ME}]\r\n".encode()
            )

    run(main)


def test_subscribe_pushes_every_state_change(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path, "--vm-expire-time", "0") as h:
            sub = await h.admin()
            assert (await sub.ok("subscribe", id=11))["vms"] == []
            await sub.ok("subscribe")  # twice is harmless
            src = await h.vm()
            connected = await sub.event("vm_connected", key=U1)
            # VM-NAME follows VM-VC-UUID, so a new console may be announced by UUID
            assert connected["name"] in ("vm01", "01234567-89ab-cdef-fedc-ba9800000000")
            assert connected["peer"].startswith("127.0.0.1:")
            row = ConsoleInfo.from_json(connected["console"])
            assert row.key == U1 and row.connected

            telnet = await h.telnet(row.port or 0)
            attached = await sub.event("client_attached")
            client = ClientInfo.from_json(attached["client"])
            assert client.kind == "telnet" and client.mode == "free_for_all_or_readonly"
            assert abs(client.since - time.time()) < 60

            writer, grant = await h.attach(lock="write")
            await sub.event("client_attached", key=U1)
            locked = await sub.event("lock_changed")
            assert (locked["lock"], locked["holder"]) == ("write", grant["client"])

            # a vMotion: BEGIN -> GOAHEAD, PEER -> PEER-OK, COMPLETE
            src.session.begin(b"\x01\x02\xff\x03")
            src._flush()
            goahead = await src.event(Goahead)
            assert (await sub.event("vmotion_begin"))["peer"] == connected["peer"]
            dest_session = EsxiSession(U1, "vm01")
            dest_session.connect_destination(b"\x01\x02\xff\x03" + goahead.secret)
            assert h.daemon.proxy_port is not None
            dest = await FakeVm.open(h.daemon.proxy_port, dest_session)
            await dest.event(PeerOk)
            peered = await sub.event("vmotion_peer")
            dest_session.complete(b"\x01\x02\xff\x03")
            dest._flush()
            completed = await sub.event("vmotion_complete")
            assert completed["peer"] == peered["peer"] != connected["peer"]
            await src.close()

            writer.writer.write_eof()
            await writer.read_to_eof()
            assert (await sub.event("client_detached"))["client"] == grant["client"]
            assert (await sub.event("lock_changed"))["lock"] is None
            await telnet.close()
            await sub.event("client_detached")
            await dest.close()
            assert (await sub.event("vm_disconnected"))["peer"] == peered["peer"]
            expired = await sub.event("vm_expired", key=U1)
            assert expired["port"] == row.port

            await sub.ok("unsubscribe", id=12)
            watcher = await h.admin()
            await watcher.ok("subscribe")
            await h.vm(U2, "web02")
            await watcher.event("vm_connected")
            await sub.send({"cmd": "hello", "id": 13})
            assert (await sub.message())["id"] == 13  # no vm_connected came first

    run(main)


def test_tail_and_follow(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path, "--vm-expire-time", "0") as h:
            vm = await h.vm()
            follower = await h.admin()
            first = await follower.ok("tail", id=13, vm="vm01", bytes=0, follow=True)
            assert first == {"ok": True, "id": 13, "key": U1, "name": "vm01", "data_b64": ""}
            vm.say(b"login: \xff\x00")
            output = await follower.event("output", key=U1)
            assert base64.b64decode(output["data_b64"]) == b"login: \xff\x00"
            assert output["name"] == "vm01"

            other = await h.admin()
            reply = await other.ok("tail", vm="vm01", bytes=4)
            assert base64.b64decode(reply["data_b64"]) == b": \xff\x00"  # no follow
            reply = await other.ok("tail", vm="vm01")  # default 4096: everything kept
            assert base64.b64decode(reply["data_b64"]) == b"login: \xff\x00"

            # following twice does not double the events
            again = await follower.ok("tail", vm="vm01", bytes=1, follow=True)
            assert base64.b64decode(again["data_b64"]) == b"\x00"
            vm.say(b"root")
            assert base64.b64decode((await follower.event("output"))["data_b64"]) == b"root"
            await other.ok("tail", vm="vm01", bytes=0, follow=True)
            vm.say(b"<after>")
            await other.event("output")
            assert (await follower.event("output"))["data_b64"] == b64(b"<after>")

            assert await follower.ok("untail", vm="vm01") == {"ok": True, "key": U1, "name": "vm01"}
            await follower.ok("untail", vm="vm01")  # not following: not an error
            vm.say(b"<unseen>")
            await other.event("output", data_b64=b64(b"<unseen>"))
            await follower.send({"cmd": "hello", "id": 14})
            assert (await follower.message())["id"] == 14  # no output event first

            # the followed console expires: tail_end, and following stops
            await vm.close()
            end = await other.event("tail_end", key=U1)
            assert end["name"] == "vm01" and end["reason"]
            assert await other.error("tail", vm="vm01") == "vm_not_found"

    run(main)


# ----------------------------------------------------------------------- bad input


@asynccontextmanager
async def bad_peer_setup(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[Harness, Bystanders]]:
    async with daemon_with(tmp_path, *extra) as h:
        vm = await h.vm()
        bystanders = await Bystanders.start(h, vm)
        yield h, bystanders
        await bystanders.check()


BAD_LINES = [
    (b'{"cmd":', "bad_json", None),
    (b'{"cmd":"hello","id":NaN}', "bad_json", None),
    (b"[" * 100_000 + b"]" * 100_000, "bad_json", None),
    (b'\xff\xfe{"cmd":"list"}', "not_utf8", None),
    (b"[1, 2]", "bad_request", None),
    (b'{"id": 5}', "bad_request", 5),
    (b'{"cmd":"frobnicate","id":"x"}', "unknown_cmd", "x"),
    (b'{"cmd":5,"id":6}', "bad_field", 6),
    (b'{"cmd":"show","id":7,"vm":5}', "bad_field", 7),
    (b'{"cmd":"show","id":8}', "bad_field", 8),
    (b'{"cmd":"attach","id":9,"vm":"vm01","replay":"10"}', "bad_field", 9),
    (b'{"cmd":"attach","id":10,"vm":"vm01","replay":1048577}', "bad_field", 10),
    (b'{"cmd":"attach","id":11,"vm":"vm01","lok":"write"}', "bad_field", 11),
    (b'{"cmd":"attach","id":12,"vm":"vm01","lock":"mine"}', "bad_field", 12),
    (b'{"cmd":"attach","id":13,"vm":"vm01","readonly":1}', "bad_field", 13),
    (b'{"cmd":"kick","id":14,"client":true}', "bad_field", 14),
    (b'{"cmd":"kick","id":15,"client":0}', "bad_field", 15),
    (b'{"cmd":"clear","id":16,"port":70000}', "bad_field", 16),
    (b'{"cmd":"tail","id":17,"vm":"vm01","follow":"yes"}', "bad_field", 17),
    (b'{"cmd":"hello","id":[1]}', "bad_field", None),
    (b'{"cmd":"hello","id":true}', "bad_field", None),
]


@pytest.mark.parametrize(("line", "code", "rid"), BAD_LINES, ids=[c for _, c, _ in BAD_LINES])
def test_bad_lines_get_their_code_and_the_connection_goes_on(
    tmp_path: Path, line: bytes, code: str, rid: object
) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            peer = await h.admin()
            await peer.send(line + b"\n")
            reply = await peer.reply()
            assert reply["ok"] is False and reply["error"]["code"] == code, reply
            assert reply.get("id") == rid
            await bystanders.check()
            await peer.send(b"\r\n\n   \n")  # blank lines are ignored
            assert (await peer.request("hello", id="next"))["id"] == "next"

    run(main)


def test_line_over_1_mib_is_refused_before_its_newline(tmp_path: Path) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            peer = await h.admin()
            await peer.send(b'{"cmd":"hello","client":"' + b"x" * (1 << 20))
            reply = await peer.reply()  # no newline sent yet
            assert reply["error"]["code"] == "line_too_long" and "id" not in reply
            await bystanders.check()
            await peer.send(b"y" * (1 << 20) + b'"}\n')  # the rest is dropped unread
            assert (await peer.request("hello", id=1))["id"] == 1
            exactly = b'{"cmd":"hello","id":2,"client":"' + b"z" * ((1 << 20) - 34) + b'"}'
            assert len(exactly) == 1 << 20
            assert (await peer.request("hello", id=3))["ok"]
            await peer.send(exactly + b"\n")  # 1 MiB exactly is fine
            assert (await peer.reply())["id"] == 2

    run(main)


def test_unfinished_line_times_out_idle_connection_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "DEFAULT_LIMITS", replace(limits.DEFAULT_LIMITS, line_timeout=0.3))

    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            idle = await h.admin()
            await idle.ok("subscribe")
            slow = await h.admin()
            started = time.monotonic()
            await slow.send(b'{"cmd":"hel')
            reply = await slow.message()
            assert reply == {
                "ok": False,
                "error": {"code": "timeout", "message": reply["error"]["message"]},
            }
            # uvloop times from the loop's cached clock, which may lag by a millisecond.
            assert time.monotonic() - started >= 0.3 - 0.005
            assert await slow.read_to_eof() == b""
            await bystanders.check()
            assert (await idle.request("hello", id=1))["id"] == 1  # idle longer, still open

    run(main)


def test_request_flood_gets_busy_then_flood_close(tmp_path: Path) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            peer = await h.admin()
            await peer.send(b"".join(encode_message({"cmd": "hello", "id": i}) for i in range(200)))
            replies = [json.loads(line) for line in (await peer.read_to_eof()).splitlines()]
            *answered, last = replies
            assert [r["id"] for r in answered] == list(range(len(answered)))
            served = [r for r in answered if r["ok"]]
            busy = [r for r in answered if not r["ok"]]
            assert 100 <= len(served) <= 110  # the bucket, plus refill while we were busy
            assert answered[: len(served)] == served  # then only busy
            assert {r["error"]["code"] for r in busy} == {"busy"}
            assert len(busy) == 50
            assert last["error"]["code"] == "flood" and "id" not in last
            await bystanders.check()

    run(main)


def test_fifty_errors_in_a_row_close_a_success_resets_the_count(tmp_path: Path) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            peer = await h.admin()
            await peer.send(b"nope\n" * 49 + b'{"cmd":"hello"}\n' + b"nope\n" * 49)
            for _ in range(49):
                assert (await peer.reply())["error"]["code"] == "bad_json"
            assert (await peer.reply())["ok"] is True
            for _ in range(49):
                assert (await peer.reply())["error"]["code"] == "bad_json"
            await peer.send(b"nope\n")
            assert (await peer.reply())["error"]["code"] == "bad_json"
            assert (await peer.reply())["error"]["code"] == "flood"
            assert await peer.read_to_eof() == b""
            await bystanders.check()

    run(main)


def test_unread_replies_stop_reading_until_they_are_read(tmp_path: Path) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            bystanders.vm.say(bytes(range(256)) * 256)  # 64 KiB: a full scrollback
            await bystanders.viewer.read_exactly(1 << 16)
            peer = await h.admin()
            requests = b"".join(
                encode_message({"cmd": "tail", "id": i, "vm": "vm01", "bytes": 1 << 16})
                for i in range(100)
            )
            await peer.send(requests)
            for _ in range(500):  # round trips until the daemon has read the requests
                paused = [c for c in h.server.connections if not c.reading]
                if paused:
                    break
                await bystanders.other.ok("hello")
            (link,) = paused
            # Bounded: 100 replies are 8.7 MiB; at most one reply passes the 1 MiB mark.
            assert link.write_backlog < (1 << 20) + 100_000
            await bystanders.check()
            assert not link.reading and link.write_backlog < (1 << 20) + 100_000
            for i in range(100):
                reply = await peer.reply()
                assert reply["id"] == i and len(base64.b64decode(reply["data_b64"])) == 1 << 16
            assert link.reading
            assert (await peer.request("hello", id="after"))["id"] == "after"

    run(main)


def test_unread_events_overrun_and_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = replace(limits.DEFAULT_LIMITS, event_backlog=256 * 1024)
    monkeypatch.setattr(limits, "DEFAULT_LIMITS", small)

    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            follower = await h.admin()
            await follower.ok("tail", vm="vm01", bytes=0, follow=True)
            chunk = bytes(range(256)) * 64
            for _ in range(64):  # 1 MiB of output, never read by the follower
                bystanders.vm.say(chunk)
            bystanders.vm.say(b"<end>")
            # The viewer got everything, so the hub has fed the follower's tap too.
            await bystanders.viewer.read_until(b"<end>")
            received = b""
            while True:
                message = await follower.message()
                if message.get("event") != "output":
                    break
                received += base64.b64decode(message["data_b64"])
            assert message == {
                "ok": False,
                "error": {"code": "overrun", "message": message["error"]["message"]},
            }
            assert 0 < len(received) < 1 << 20 and (chunk * 64).startswith(received)
            assert await follower.read_to_eof() == b""

    run(main)


def test_connection_limit_is_64(tmp_path: Path) -> None:
    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            peers = [await h.admin() for _ in range(64 - 2)]  # the bystanders hold two
            for peer in peers:
                await peer.ok("hello")
            extra = await h.admin()
            reply = await extra.message()
            assert reply["ok"] is False and reply["error"]["code"] == "busy"
            assert "id" not in reply
            assert await extra.read_to_eof() == b""
            assert len(h.server.connections) == 64
            await bystanders.check()

    run(main)


def test_internal_errors_are_replied_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(link: AdminLink, request: Any) -> dict[str, Any]:
        raise RuntimeError("bug")

    monkeypatch.setitem(handlers.HANDLERS, "list", broken)

    async def main() -> None:
        async with bad_peer_setup(tmp_path) as (h, bystanders):
            bystanders.other = await h.admin()  # `list` is broken: check with show
            peer = await h.admin()
            reply = await peer.request("list", id=3)
            assert reply["error"]["code"] == "internal" and reply["id"] == 3
            assert (await peer.request("hello", id=4))["ok"]
            monkeypatch.undo()

    with caplog.at_level(logging.ERROR, logger="vspc.vspcd.faces.admin"):
        run(main)
    assert any(r.exc_info and "bug" in str(r.exc_info[1]) for r in caplog.records)


# ----------------------------------------------------------------------- access


@pytest.mark.parametrize(
    ("uid", "gid", "groups", "readonly_gid", "expected"),
    [
        (1000, 1000, (), None, Level.CONTROL),  # no --readonly-group
        (0, 0, (77,), 77, Level.CONTROL),  # root
        (4242, 100, (77,), 77, Level.CONTROL),  # the daemon's own uid
        (1000, 77, (), 77, Level.WATCH),  # primary group
        (1000, 1000, (5, 77), 77, Level.WATCH),  # supplementary group (SO_PEERGROUPS)
        (1000, 1000, (5,), 77, Level.CONTROL),  # not a member
    ],
)
def test_readonly_group_level(
    uid: int, gid: int, groups: tuple[int, ...], readonly_gid: int | None, expected: Level
) -> None:
    # Membership comes from the peer's own credentials only (never /etc/group).
    gate = Gate(own_uid=4242, readonly_gid=readonly_gid)
    me = Identity("unix", uid, gid, "someone", frozenset(groups), Source.UNIX)
    assert gate.level(me, None) is expected
    assert gate.access(me) is (Access.READONLY if expected is Level.WATCH else Access.FULL)


def test_readonly_group_peers_watch_but_do_not_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readonly = {"next": False}
    real_identify = link_module.identify

    def identify(transport: Any, *, unix: bool) -> Identity:
        # A member of the read-only group "root" (gid 0) that is not root itself.
        me = real_identify(transport, unix=unix)
        if not readonly["next"]:
            return me
        return Identity("unix", 12345, 12345, "watcher", frozenset({0}), Source.UNIX)

    monkeypatch.setattr(link_module, "identify", identify)

    async def main() -> None:
        async with daemon_with(tmp_path, "--readonly-group", "root") as h:
            vm = await h.vm()
            readonly["next"] = True
            watcher = await h.admin()
            readonly["next"] = False
            hello = await watcher.ok("hello")
            assert hello["access"] == "readonly" and hello["uid"] == 12345
            assert hello["level"] == "watch"
            await watcher.ok("list")
            await watcher.ok("show", vm="vm01")
            await watcher.ok("subscribe")
            await watcher.ok("unsubscribe")
            await watcher.ok("tail", vm="vm01", follow=True)
            await watcher.ok("untail", vm="vm01")
            for fields in (
                {"lock": "exclusive"},
                {"lock": "write"},
                {"lock": "free_for_all"},
            ):
                assert await watcher.error("attach", vm="vm01", **fields) == "permission_denied"
            assert await watcher.error("clear", vm="vm01") == "permission_denied"
            # kick is judged on the kicked client's console: there is no client 1 yet
            assert await watcher.error("kick", client=1) == "not_attached"

            # free_for_all + readonly is allowed; the default mode is downgraded
            reply = await watcher.ok("attach", vm="vm01", lock="free_for_all", readonly=True)
            assert reply["readonly"] is True
            readonly["next"] = True
            viewer = await h.admin()
            reply = await viewer.ok("attach", vm="vm01")
            assert (reply["mode"], reply["readonly"]) == ("free_for_all_or_readonly", True)
            vm.say(b"<seen>")
            await viewer.read_until(b"<seen>")
            await viewer.send(b"<typed>")
            console = await h.until(lambda c: c["counters"]["input_dropped"] == len(b"<typed>"))
            assert all(c["readonly"] for c in console["attached"])
            assert b"<typed>" not in vm.received

    run(main)


def test_tcp_admin_port_is_unauthenticated_full_access(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path, "--admin-port", "0") as h:
            await h.vm()
            port = h.server.tcp_port
            assert port is not None
            peer = await h.tcp(port)
            hello = await peer.ok("hello")
            assert (hello["access"], hello["uid"], hello["user"]) == ("full", None, None)
            reply = await peer.ok("attach", vm="vm01")
            (client,) = (await h.shown())["attached"]
            assert client["id"] == reply["client"] and client["peer"].startswith("127.0.0.1:")
            assert client["uid"] is None

    with caplog.at_level(logging.WARNING, logger="vspc.vspcd.faces.admin"):
        run(main)
    assert any("unauthenticated" in r.getMessage() for r in caplog.records)


def test_shutdown_tells_every_admin_connection(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            peer = await h.admin()
            await peer.ok("subscribe")
            viewer, _ = await h.attach()
            half = await h.admin()
            await half.send(b'{"cmd":')
            await h.daemon.stop()
            for conn in (peer, half):
                last = (await conn.read_to_eof()).splitlines()[-1]
                assert json.loads(last)["error"]["code"] == "shutting_down"
            assert (await viewer.read_to_eof()).endswith(b"\r\n[vspcd: vspcd is shutting down]\r\n")
            assert not h.daemon.config.admin_socket.exists()

    run(main)


def test_attach_logs_credentials_and_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            writer, grant = await h.attach(lock="write")
            peer = await h.admin()
            await peer.ok("clear", vm="vm01", reason="log me")

    with caplog.at_level(logging.INFO, logger="vspc.vspcd.faces.admin"):
        run(main)
    text = "\n".join(r.getMessage() for r in caplog.records)
    creds = f"uid={os.geteuid()} gid={os.getegid()} user={ME}"
    assert f"admin {creds} attached to vm01" in text and "mode write" in text
    assert f"admin {creds} took the write lock on vm01" in text
    assert f"admin {creds} cleared vm01: 1 client(s) disconnected (log me)" in text
