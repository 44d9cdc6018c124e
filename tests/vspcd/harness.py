"""End-to-end harness: a real in-process vspcd, fake ESXi hosts and telnet operators.

Everything runs over loopback sockets (127.0.0.1, ports chosen by the kernel).  The
fake ESXi host is `common.esxi.EsxiSession` driven over an asyncio stream; operators
speak telnet with `common.telnet.TelnetCodec`.  Waits are on causes (bytes arriving,
hub events) with timeouts, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.daemonproc import free_port
from vspc.common import esxi
from vspc.common.telnet import Data, Opt, TelnetCodec, escape
from vspc.vspcd.faces.render import event_fields
from vspc.vspcd.hub.events import HubEvent
from vspc.vspcd.service.config import Config, parse_args
from vspc.vspcd.service.server import Daemon

TIMEOUT = 5.0
UUID_A = "0123456789abcdeffedcba9800000000"
UUID_B = "89abcdef0123456776543210fedcba98"


def make_config(tmp_path: Path, *args: str) -> Config:
    return parse_args(
        [
            "--proxy-iface", "127.0.0.1",
            "--proxy-port", "0",
            "-i", "127.0.0.1",
            "-r", str(free_port()),
            "--admin-socket", str(tmp_path / "admin.sock"),
            *args,
        ],
        {},
    )  # fmt: skip


class Events:
    """Records the hub's observer events and lets a test await one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: HubEvent) -> None:
        found = event_fields(event)  # as the admin event line has it (hub clock)
        if found is not None:
            self.seen.append((found[0].value, found[1]))
            self._changed.set()

    async def wait(
        self, name: str, where: Callable[[dict[str, Any]], bool] = lambda f: True, count: int = 1
    ) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                hits = [f for n, f in self.seen if n == name and where(f)]
                if len(hits) >= count:
                    return hits[count - 1]
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, *args: str, secret: bytes | None = None
) -> AsyncIterator[tuple[Daemon, Events]]:
    daemon = Daemon(
        make_config(tmp_path, *args),
        secret_factory=(lambda: secret) if secret is not None else None,
    )
    await daemon.start()
    assert daemon.hub is not None
    events = Events()
    daemon.hub.subscribe(events)
    try:
        yield daemon, events
    finally:
        await daemon.stop(grace=2.0)


class Stream:
    """Bytes received on a connection, awaitable by content."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._grew = asyncio.Event()
        self.closed = asyncio.Event()

    def add(self, data: bytes) -> None:
        self.data += data
        self._grew.set()

    async def expect(self, wanted: bytes, *, start: int = 0) -> int:
        """Wait until `wanted` appears at or after `start`; return its end offset."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                found = self.data.find(wanted, start)
                if found >= 0:
                    return found + len(wanted)
                if self.closed.is_set():
                    raise AssertionError(f"closed before {wanted!r}; got {bytes(self.data)!r}")
                self._grew.clear()
                waiter = asyncio.ensure_future(self._grew.wait())
                closer = asyncio.ensure_future(self.closed.wait())
                await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                closer.cancel()

    async def length(self, n: int) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            while len(self.data) < n:
                self._grew.clear()
                await self._grew.wait()
        return bytes(self.data)


class FakeEsxi:
    """One ESXi serial-port connection (source or destination) over loopback."""

    def __init__(self, session: esxi.EsxiSession) -> None:
        self.session = session
        self.input = Stream()  # operator input the VM received
        self.events: list[esxi.EsxiEvent] = []
        self._event = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        # A frozen VM reads but never answers: a host that died without a FIN
        # (vSphere HA restarts the VM elsewhere).
        self.frozen = False

    @classmethod
    async def connect(
        cls,
        port: int,
        uuid: str = UUID_A,
        name: str = "vm-00000",
        uri: str = "vSPC.py",
        *,
        cookie: bytes | None = None,
        tls: bool = False,
        direction: str = "S",
        host: str = "127.0.0.1",
        local: str | None = None,
    ) -> FakeEsxi:
        """Connect to vspcd (from the address `local`, e.g. 127.0.0.2, if given)."""
        vm = cls(esxi.EsxiSession(uuid, name, uri, direction))
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        vm._reader, vm._writer = await asyncio.open_connection(
            host, port, ssl=context, local_addr=None if local is None else (local, 0)
        )
        if cookie is None:
            vm.session.connect_source()
        else:
            vm.session.connect_destination(cookie)
        vm._flush()
        vm._task = asyncio.create_task(vm._pump())
        return vm

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(out)

    async def _pump(self) -> None:
        assert self._reader is not None
        try:
            while data := await self._reader.read(65536):
                if self.frozen:
                    continue
                for event in self.session.receive_data(data):
                    if isinstance(event, esxi.ConsoleInput):
                        self.input.add(event.payload)
                    else:
                        self.events.append(event)
                        self._event.set()
                self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.input.closed.set()
            self._event.set()
            if self._writer is not None:
                self._writer.close()

    async def wait_for(self, *kinds: type[Any]) -> Any:
        """The first event of one of `kinds` not yet taken."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for i, event in enumerate(self.events):
                    if isinstance(event, kinds):
                        del self.events[i]
                        return event
                if self.input.closed.is_set():
                    raise AssertionError(f"closed while waiting for {kinds}")
                self._event.clear()
                await self._event.wait()

    def send(self, data: bytes) -> None:
        self.session.send_data(data)
        self._flush()

    async def begin(self, sequence: bytes) -> bytes:
        """BEGIN; return the cookie from GOAHEAD (fails on NOTNOW)."""
        self.session.begin(sequence)
        self._flush()
        answer = await self.wait_for(esxi.Goahead, esxi.NotNow)
        assert isinstance(answer, esxi.Goahead), answer
        assert self.session.cookie is not None
        return self.session.cookie

    def complete(self, sequence: bytes) -> None:
        self.session.complete(sequence)
        self._flush()

    def abort(self) -> None:
        self.session.abort()
        self._flush()

    async def close(self) -> None:
        """Half-close like ESXi (FIN), then wait for the proxy to close its side."""
        if self._writer is None:
            return
        if not self._writer.is_closing():
            if self._writer.can_write_eof():
                self._writer.write_eof()
            else:  # TLS cannot half-close
                self._writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TIMEOUT):
                await self.input.closed.wait()
        self._writer.close()
        if self._task is not None:
            self._task.cancel()


class Operator:
    """A telnet client on a console's port (answers negotiation like a real client)."""

    def __init__(self, raw: bool = False) -> None:
        self.output = Stream()
        self.raw = raw
        self._codec = TelnetCodec(
            local_ok=(Opt.BINARY, Opt.SGA), remote_ok=(Opt.BINARY, Opt.SGA, Opt.ECHO)
        )
        self.wire = Stream()  # raw bytes as received, before telnet decoding
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, port: int, *, raw: bool = False, rcvbuf: int | None = None, host: str = "127.0.0.1"
    ) -> Operator:
        op = cls(raw)
        if rcvbuf is None:
            reader, op._writer = await asyncio.open_connection(host, port)
        else:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, op._writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        op._task = asyncio.create_task(op._pump(reader))
        return op

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                self.wire.add(data)
                for event in self._codec.receive_data(data):
                    if isinstance(event, Data):
                        self.output.add(event.payload)
                reply = self._codec.data_to_send()
                if reply and not self.raw and self._writer is not None:
                    self._writer.write(reply)
        except (ConnectionError, OSError):
            pass
        finally:
            self.output.closed.set()
            self.wire.closed.set()
            if self._writer is not None:
                self._writer.close()

    def type(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data if self.raw else escape(data))

    async def closed(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.output.closed.wait()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TIMEOUT):
                    await self.output.closed.wait()
            self._task.cancel()


async def identified(events: Events, key: str, count: int = 1) -> dict[str, Any]:
    """Wait for the `count`-th vm_connected of console `key`."""
    return await events.wait("vm_connected", lambda f: f["key"] == key, count)


def console_port(daemon: Daemon, key: str) -> int:
    assert daemon.hub is not None
    for console in daemon.hub.consoles():
        if str(console.key) == key:
            assert console.port is not None
            return console.port
    raise AssertionError(f"no console {key}")
