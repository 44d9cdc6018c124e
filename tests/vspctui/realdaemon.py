"""A real vspcd with one fake ESXi VM (db01) for the `vspc` end-to-end tests.

The daemon (`vspc.vspcd.service.server.Daemon`, through tests/vspcd/harness.py) and the fake
ESXi host run on their own event loop in a background thread, so the test thread is
free to spawn `python -m vspc.vspctui.shell.cli` on a pty, to call `main()` (which runs
`asyncio.run`) or to drive the shell.  Fixtures `real` and `spawn` (registered in
conftest.py).  Synchronisation is on bytes arriving and on hub events, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    free_port,
    identified,
    running,
)
from tests.vspctui.ptyclient import PtyClient
from vspc.vspctui.shell.cli import main

__all__ = ["ME", "TIMEOUT", "RealDaemon", "attached_id", "protocol", "real", "spawn"]

TIMEOUT = 10.0
ME = pwd.getpwuid(os.geteuid()).pw_name  # who `clear`/`kick` name in their notice


class RealDaemon:
    """vspcd plus one fake VM (db01, printing "login: ") on a background event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = str(directory / "admin.sock")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.port = 0

    # -- lifecycle, from the test thread -----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.call(self._start)

    async def _start(self) -> None:
        self.daemon, self.events = await self._stack.enter_async_context(
            running(self.directory, "-r", str(free_port()))
        )
        assert self.daemon.proxy_port is not None
        self.vm = await FakeEsxi.connect(self.daemon.proxy_port, UUID_A, "db01")
        await identified(self.events, UUID_A)
        self.port = console_port(self.daemon, UUID_A)
        # Bytes after VM-NAME on the same connection: once they are in the scrollback
        # the console is called db01.
        await self._vm_prints(b"login: ")

    def restart(self) -> None:
        """Stop vspcd (every connection closes, admin ones with `shutting_down`) and
        start a new one on the same admin socket, with db01 connected again."""

        async def again() -> None:
            await self._stack.aclose()
            self._stack = contextlib.AsyncExitStack()
            await self._start()

        self.call(again)

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._stack.aclose()  # Daemon.stop(): closes every connection
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # pumps of the fake VM and operators
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.call(shutdown)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (sync, or returning an awaitable) on the daemon's loop; its result."""

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(TIMEOUT + 5)

    # -- test controls -----------------------------------------------------------------

    def vm_prints(self, data: bytes) -> None:
        """The VM prints `data`; returns once the hub has it (scrollback and clients)."""
        self.call(lambda: self._vm_prints(data))

    async def _vm_prints(self, data: bytes) -> None:
        hub = self.daemon.hub
        assert hub is not None
        key = next(c.key for c in hub.consoles() if str(c.key) == UUID_A)
        got = bytearray()
        seen = asyncio.Event()

        def tap(chunk: bytes) -> None:  # runs after the scrollback append and fan-out
            got.extend(chunk)
            if data in got:
                seen.set()

        untap = hub.tap(key, tap)
        try:
            self.vm.send(data)
            async with asyncio.timeout(TIMEOUT):
                await seen.wait()
        finally:
            untap()

    def vm_received(self, data: bytes) -> bytes:
        """Wait until the VM got `data` as input; everything it got so far."""
        self.call(lambda: self.vm.input.expect(data))
        return bytes(self.vm.input.data)

    def vm_input_settled(self) -> bytes:
        """Everything the VM got from clients that are gone by now.

        The hub forwards input to the VM in order, so a marker typed now by a new
        telnet client arrives after anything an earlier (detached) client sent.
        """
        op = self.telnet()
        op.type(b"<MARK>")
        data = self.vm_received(b"<MARK>")
        self.call(op.close)
        assert data.endswith(b"<MARK>")
        return data[: -len(b"<MARK>")]

    def event(self, name: str, where: Callable[[dict[str, Any]], bool] = lambda f: True,
              count: int = 1) -> dict[str, Any]:  # fmt: skip
        result: dict[str, Any] = self.call(lambda: self.events.wait(name, where, count))
        return result

    def telnet(self) -> Operator:
        """A telnet operator on db01's port, once the hub has attached it."""

        async def connect() -> Operator:
            before = sum(1 for name, _ in self.events.seen if name == "client_attached")
            op = await Operator.connect(self.port)
            await self.events.wait("client_attached", count=before + 1)
            return op

        op: Operator = self.call(connect)
        return op

    def cli(self, *argv: str) -> int:
        """`vspc --socket PATH ARGV` in this process (no terminal needed)."""
        return main(["--socket", self.path, *argv])


@pytest.fixture
def real() -> Iterator[RealDaemon]:
    # A short directory: Unix socket paths are limited to 107 bytes, tmp_path is long.
    directory = Path(tempfile.mkdtemp(prefix="vspc-"))
    daemon = RealDaemon(directory)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def protocol(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request on a raw admin connection; the reply line, decoded."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


@pytest.fixture
def spawn(real: RealDaemon) -> Iterator[Callable[..., PtyClient]]:
    started: list[PtyClient] = []

    def start(*args: str) -> PtyClient:
        pty = PtyClient(real.path, *args)
        started.append(pty)
        return pty

    yield start
    for pty in started:
        pty.close()


def attached_id(real: RealDaemon, kind: str, count: int = 1) -> int:
    fields = real.event("client_attached", lambda f: f["client"]["kind"] == kind, count)
    ident: int = fields["client"]["id"]
    return ident
