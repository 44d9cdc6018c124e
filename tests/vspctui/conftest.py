"""A fake vspcd admin server for the client tests (docs/admin-protocol.md).

It speaks protocol v1 with the real codec (`vspc.common.admin`), including the
attach channel, from its own thread and event loop, so tests can call `main()` (which
runs `asyncio.run`) or spawn `vspc` in a pty against it.  It is deliberately small:
console state is a few dicts, lock rules are vSPC.py's as the doc states them.
Later these tests switch to the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from vspc.common.admin import (
    COMMANDS,
    Access,
    AdminError,
    AttachGrant,
    ClientInfo,
    ClientKind,
    ConsoleInfo,
    ErrorCode,
    Hello,
    LineFramer,
    LockMode,
    Request,
    encode_bytes,
    encode_message,
    ok,
    validate_request,
)

DB01 = ConsoleInfo(
    key="0123456789abcdeffedcba9800000000",
    name="db01",
    uuid="01234567-89ab-cdef-fedc-ba9800000000",
    vm_name="db01",
    port=50000,
    connected=True,
)
WEB02 = ConsoleInfo(
    key="89abcdef0123456776543210fedcba98_console2",
    name="web02_console2",
    uuid="89abcdef-0123-4567-7654-3210fedcba98",
    vm_name="web02",
    label="console2",
    port=50001,
    connected=False,
    expires_in=3600.0,
)


@dataclass(eq=False)
class FakeClient:
    info: ClientInfo
    writer: asyncio.StreamWriter | None  # None: a pretend telnet client


@dataclass(eq=False)
class FakeConsole:
    info: ConsoleInfo
    scrollback: bytearray = field(default_factory=bytearray)
    clients: list[FakeClient] = field(default_factory=list)
    tailers: list[asyncio.StreamWriter] = field(default_factory=list)

    def holder(self) -> FakeClient | None:
        return next(
            (c for c in self.clients if c.info.mode in (LockMode.EXCLUSIVE, LockMode.WRITE)),
            None,
        )

    def row(self) -> dict[str, Any]:
        holder = self.holder()
        attached = tuple(c.info for c in self.clients)
        return replace(
            self.info,
            clients=len(attached),
            attached=attached,
            lock=None if holder is None else holder.info.mode,
            lock_holder=None if holder is None else holder.info,
        ).to_json()


class FakeDaemon:
    """The fake server; control it from the test thread with the thread-safe methods."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tcp_port = 0
        self.consoles = {c.key: FakeConsole(c, bytearray(b"login: ")) for c in (DB01, WEB02)}
        self.requests: list[dict[str, Any]] = []  # every request line, in order
        self.inputs: queue.Queue[tuple[str, bytes]] = queue.Queue()  # attach input, EOF=b""
        self.access = Access.FULL
        self.list_extra: dict[str, Any] = {}  # e.g. a cluster node's cluster_missing
        # Messages pushed right after the reply to a command, and a last message
        # before closing the connection, by command name.
        self.push_after: dict[str, list[dict[str, Any]]] = {}
        self.close_after: dict[str, dict[str, Any]] = {}
        self._subscribers: list[asyncio.StreamWriter] = []
        self._next_client = 10
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []

    # -- lifecycle, from the test thread -----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.call(self._listen)

    def stop(self) -> None:
        self.call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (sync or coroutine function) on the daemon's loop; return its result."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    async def _listen(self) -> None:
        self._servers.append(await asyncio.start_unix_server(self._serve, self.path))
        tcp = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._servers.append(tcp)
        self.tcp_port = tcp.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for console in self.consoles.values():
            for client in console.clients:
                if client.writer is not None:
                    client.writer.close()
        for writer in self._subscribers:
            writer.close()

    # -- test controls -----------------------------------------------------------------

    def output(self, key: str, data: bytes) -> None:
        """The VM of `key` prints `data`."""

        def run() -> None:
            console = self.consoles[key]
            console.scrollback += data
            for client in console.clients:
                if client.writer is not None:
                    client.writer.write(data)
            event = {"event": "output", "key": key, "name": console.info.name}
            for writer in console.tailers:
                writer.write(encode_message(event | {"data_b64": encode_bytes(data)}))

        self.call(run)

    def add_telnet_client(self, key: str, mode: LockMode = LockMode.FREE_FOR_ALL) -> int:
        def run() -> int:
            console = self.consoles[key]
            info = self._client_info(ClientKind.TELNET, mode, False, "10.0.0.9:51234")
            console.clients.append(FakeClient(info, None))
            return info.id

        result: int = self.call(run)
        return result

    def clear(self, key: str, reason: str) -> None:
        self.call(lambda: self._clear(self.consoles[key], reason))

    # -- protocol ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = LineFramer()
        try:
            while data := await reader.read(65536):
                framer.receive_data(data)
                while True:
                    try:
                        raw = framer.next_request()
                    except AdminError as exc:
                        writer.write(encode_message(exc.to_reply()))
                        continue
                    if raw is None:
                        break
                    self.requests.append(raw)
                    attached = await self._handle(raw, writer)
                    if attached is not None:
                        await self._attached(attached, framer.take_remaining(), reader, writer)
                        return
                    if writer.is_closing():
                        return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(writer)
            for console in self.consoles.values():
                with contextlib.suppress(ValueError):
                    console.tailers.remove(writer)
            writer.close()

    async def _handle(
        self, raw: dict[str, Any], writer: asyncio.StreamWriter
    ) -> tuple[FakeConsole, FakeClient] | None:
        try:
            request = validate_request(raw)
            reply, attached = self._dispatch(request, writer)
        except AdminError as exc:
            writer.write(encode_message(exc.to_reply()))
            return None
        writer.write(encode_message(reply))
        for event in self.push_after.get(request.cmd, []):
            writer.write(encode_message(event))
        if request.cmd in self.close_after:
            writer.write(encode_message(self.close_after[request.cmd]))
            await writer.drain()
            writer.close()
        await writer.drain()
        return attached

    def _find(self, request: Request, spec: str) -> FakeConsole:
        for console in self.consoles.values():
            info = console.info
            if spec in (info.name, info.key, info.vm_name, str(info.port)):
                return console
        raise AdminError(ErrorCode.VM_NOT_FOUND, f"no console matches {spec!r}", request.id)

    def _client_info(
        self, kind: ClientKind, mode: LockMode, readonly: bool, peer: str
    ) -> ClientInfo:
        self._next_client += 1
        if kind is ClientKind.ATTACH:
            return ClientInfo(self._next_client, kind, peer, mode, readonly, 1764061200.0,
                              1000, "alice")  # fmt: skip
        return ClientInfo(self._next_client, kind, peer, mode, readonly, 1764061200.0)

    def _dispatch(
        self, request: Request, writer: asyncio.StreamWriter
    ) -> tuple[dict[str, Any], tuple[FakeConsole, FakeClient] | None]:
        f, rid = request.fields, request.id
        match request.cmd:
            case "hello":
                hello = Hello(1, "0.0-fake", tuple(sorted(COMMANDS)), self.access, 1000, "alice")
                return ok(rid, **hello.to_json()), None
            case "list":
                rows = [c.row() for c in self.consoles.values()]
                return ok(rid, vms=rows, **self.list_extra), None
            case "show":
                console = self._find(request, f["vm"])
                row = console.row() | {
                    "service_uri": "vSPC.py",
                    "vm_peer": "10.0.0.21:41022",
                    "counters": {"bytes_from_vm": len(console.scrollback), "vmotions": 2},
                }
                return ok(rid, console=row), None
            case "attach":
                return self._attach(request, writer)
            case "clear":
                if f["port"] is not None:
                    console = self._find(request, str(f["port"]))
                else:
                    console = self._find(request, f["vm"])
                count = self._clear(console, f["reason"])
                return ok(rid, key=console.info.key, name=console.info.name, cleared=count), None
            case "kick":
                for console in self.consoles.values():
                    for client in console.clients:
                        if client.info.id == f["client"]:
                            self._disconnect(console, client, f["reason"])
                            info = console.info
                            return ok(rid, key=info.key, name=info.name, client=f["client"]), None
                raise AdminError(ErrorCode.NOT_ATTACHED, f"no client with id {f['client']}", rid)
            case "subscribe":
                self._subscribers.append(writer)
                return ok(rid, vms=[c.row() for c in self.consoles.values()]), None
            case "unsubscribe":
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(writer)
                return ok(rid), None
            case "tail":
                console = self._find(request, f["vm"])
                data = bytes(console.scrollback[-f["bytes"] :]) if f["bytes"] else b""
                if f["follow"]:
                    console.tailers.append(writer)
                info = console.info
                return ok(rid, key=info.key, name=info.name, data_b64=encode_bytes(data)), None
            case "untail":
                console = self._find(request, f["vm"])
                with contextlib.suppress(ValueError):
                    console.tailers.remove(writer)
                return ok(rid, key=console.info.key, name=console.info.name), None
        raise AdminError(ErrorCode.INTERNAL, "fake daemon lacks " + request.cmd, rid)

    def _attach(
        self, request: Request, writer: asyncio.StreamWriter
    ) -> tuple[dict[str, Any], tuple[FakeConsole, FakeClient]]:
        f, rid = request.fields, request.id
        console = self._find(request, f["vm"])
        lock: LockMode = f["lock"]
        holder = console.holder()
        if holder is not None and holder.info.mode is LockMode.EXCLUSIVE:
            raise AdminError(ErrorCode.LOCK_FAILED, f"{console.info.name} is locked exclusively",
                             rid)  # fmt: skip
        if lock is LockMode.EXCLUSIVE and console.clients:
            raise AdminError(ErrorCode.LOCK_FAILED, "others are attached", rid)
        if lock in (LockMode.WRITE, LockMode.FREE_FOR_ALL) and holder is not None:
            raise AdminError(ErrorCode.LOCK_FAILED, f"{console.info.name} is write-locked", rid)
        readonly = f["readonly"] or holder is not None
        info = self._client_info(ClientKind.ATTACH, lock, readonly, "unix")
        client = FakeClient(info, writer)
        console.clients.append(client)
        grant = AttachGrant(console.info.key, console.info.name, info.id, lock, readonly)
        return ok(rid, **grant.to_json()), (console, client)

    async def _attached(
        self,
        attached: tuple[FakeConsole, FakeClient],
        early: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        console, client = attached
        replay = self.requests[-1].get("replay") or 0
        if replay:
            writer.write(bytes(console.scrollback[-replay:]))
        key = console.info.key
        if early:
            self.inputs.put((key, early))
        try:
            while data := await reader.read(65536):
                if not client.info.readonly:
                    self.inputs.put((key, data))
        finally:
            self.inputs.put((key, b""))  # detach marker
            if client in console.clients:
                console.clients.remove(client)
            writer.close()

    def _disconnect(self, console: FakeConsole, client: FakeClient, reason: str | None) -> None:
        text = "disconnected by alice" + (f": {reason}" if reason else "")
        if client.writer is not None:
            client.writer.write(f"\r\n[vspcd: {text}]\r\n".encode())
            client.writer.close()
        console.clients.remove(client)

    def _clear(self, console: FakeConsole, reason: str | None) -> int:
        clients = list(console.clients)
        for client in clients:
            self._disconnect(console, client, reason)
        return len(clients)


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    # A short directory: Unix socket paths are limited to 107 bytes, tmp_path is long.
    directory = tempfile.mkdtemp(prefix="vspc-")
    fake = FakeDaemon(f"{directory}/admin.sock")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
        shutil.rmtree(directory, ignore_errors=True)


# The real-daemon fixtures, for every test module here.
from tests.vspctui.realdaemon import real, spawn  # noqa: E402, F401
