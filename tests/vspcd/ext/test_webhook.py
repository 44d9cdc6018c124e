"""The alert webhook (vspcd/ext/webhook.py) through the real daemon, against a real
local HTTP server the test starts: delivery, retry after a 500, giving up, the queue
bound, https with a private CA, and a slow server never slowing a console."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.harness import UUID_A, FakeEsxi, Operator, console_port, running
from vspc.vspcd.ext.webhook import WebhookSender, WebhookSettings, parse_url
from vspc.vspcd.service.server import Daemon

PANIC = b"[    2.861301] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"


@dataclasses.dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class HttpServer:
    """A small HTTP/1.1 server: records each request, answers with `status(n)` for
    the n-th (from 0), after `delay(n)` seconds (None: never answers)."""

    def __init__(
        self,
        status: Callable[[int], int] = lambda n: 200,
        delay: Callable[[int], float | None] = lambda n: 0.0,
    ) -> None:
        self.status = status
        self.delay = delay
        self.requests: list[Request] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self.release = asyncio.Event()  # lets requests with delay None answer

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()  # open requests end: `release` is set before this

    async def count(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.requests) < n:
                self.arrived.clear()
                await self.arrived.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode()
            method, target, _ = line.split(" ", 2)
            headers: dict[str, str] = {}
            while (header := (await reader.readline()).decode().strip()) != "":
                name, _, value = header.partition(":")
                headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            number = len(self.requests)
            self.requests.append(Request(method, target, headers, body))
            self.arrived.set()
            delay = self.delay(number)
            if delay is None:
                await self.release.wait()
            else:
                await asyncio.sleep(delay)
            status = self.status(number)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def http_server(
    status: Callable[[int], int] = lambda n: 200,
    delay: Callable[[int], float | None] = lambda n: 0.0,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[HttpServer]:
    server = HttpServer(status, delay)
    await server.start(tls)
    try:
        yield server
    finally:
        server.release.set()
        await server.stop()


def fast(daemon: Daemon, **changes: Any) -> WebhookSender:
    """The daemon's sender with test-sized back-off (and other changes)."""
    sender = daemon.webhook
    assert sender is not None
    sender.reconfigure(dataclasses.replace(sender.settings, backoff=0.01, **changes))
    return sender


async def until(condition: Callable[[], bool]) -> None:
    """Poll the sender's counters (they change inside the daemon, with no event)."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def alert_rules(tmp_path: Path) -> Path:
    """A configuration file with a rule that alerts on every `ALERT n` line."""
    path = tmp_path / "vspcd.toml"
    path.write_text("[[alert]]\nname = 'numbered'\nregex = 'ALERT \\d+'\nhold_off = 0\n")
    return path


def test_parse_url() -> None:
    target = parse_url("https://bot:s%3Acret@alerts.example:8443/hook?x=1")
    assert (target.tls, target.host, target.port, target.target) == (
        True,
        "alerts.example",
        8443,
        "/hook?x=1",
    )
    assert target.authorization == "Basic Ym90OnM6Y3JldA=="  # bot:s:cret
    assert "cret" not in target.shown
    assert parse_url("http://[::1]/").port == 80 and parse_url("http://h").target == "/"
    for bad in ("ftp://h/", "http:///x", "http://h:99999/", "http://h/#frag", "http://h/a b"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_an_alert_is_posted_as_the_admin_event(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server() as server:
            url = f"http://127.0.0.1:{server.port}/vspc/alerts?team=ops"
            async with running(tmp_path, "--alert-webhook", url) as (daemon, events):
                vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
                await events.wait("vm_connected")
                vm.send(b"booting\r\n" + PANIC)
                admin = await events.wait("console_alert")
                await server.count(1)
                request = server.requests[0]
                assert (request.method, request.target) == ("POST", "/vspc/alerts?team=ops")
                assert request.headers["content-type"] == "application/json"
                body = json.loads(request.body)
                assert body == {"event": "console_alert", **admin}
                assert body["alert"] == "kernel_panic" and body["name"] == "db01"
                assert body["context"] == ["booting"]
                assert daemon.webhook is not None
                await until(lambda: daemon.webhook is not None and daemon.webhook.delivered == 1)

    asyncio.run(main())


def test_a_500_is_retried_and_n_failures_give_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vspc.vspcd.ext.webhook")

    async def main() -> None:
        # The first alert meets 500, 500, then 200; the second only 503s.
        answers = [500, 500, 200, 503, 503, 503]
        async with http_server(status=lambda n: answers[n]) as server:
            url = f"http://127.0.0.1:{server.port}/"
            flags = ("--alert-webhook", url, "--config", str(alert_rules(tmp_path)))
            async with running(tmp_path, *flags) as (daemon, events):
                sender = fast(daemon, attempts=3)
                vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
                await events.wait("vm_connected")
                vm.send(b"ALERT 1\r\n")
                await server.count(3)
                vm.send(b"ALERT 2\r\n")
                await server.count(6)
                await until(lambda: sender.failed >= 1)
                assert (sender.delivered, sender.failed) == (1, 1)
                lines = [json.loads(r.body)["line"] for r in server.requests]
                assert lines == ["ALERT 1"] * 3 + ["ALERT 2"] * 3
        assert "not delivered after 3 tries (HTTP 503)" in caplog.text

    asyncio.run(main())


def test_a_404_is_not_retried_and_a_dead_server_is(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(status=lambda n: 404) as server:
            sender = WebhookSender(
                WebhookSettings(parse_url(f"http://127.0.0.1:{server.port}/"), backoff=0.01)
            )
            await _one_alert(sender)
            await server.count(1)
            await until(lambda: sender.failed >= 1)
            await asyncio.sleep(0.05)
            assert len(server.requests) == 1
            port = server.port
        # Nothing listens any more: connection refused, retried, then given up.
        tries: list[float] = []

        async def sleep(delay: float) -> None:
            tries.append(delay)

        sender = WebhookSender(
            WebhookSettings(parse_url(f"http://127.0.0.1:{port}/"), attempts=4, backoff=1.0),
            sleep=sleep,
            jitter=lambda: 0.5,
        )
        await _one_alert(sender)
        await until(lambda: sender.failed >= 1)
        assert tries == [0.5, 1.0, 2.0]  # exponential, times the jitter
        await sender.close()

    asyncio.run(main())


async def _one_alert(sender: WebhookSender) -> None:
    from vspc.vspcd.hub.console import ConsoleKey
    from vspc.vspcd.hub.events import ConsoleAlert, Severity

    key = ConsoleKey("01234567-89ab-cdef-fedc-ba9800000000")
    sender.observe(
        ConsoleAlert(key, "vm", "kernel_panic", Severity.CRITICAL, "Kernel panic", (), time.time())
    )


def test_the_queue_drops_the_oldest_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vspc.vspcd.ext.webhook")

    async def main() -> None:
        # The first request hangs until released: the rest queue behind it.
        async with http_server(delay=lambda n: None if n == 0 else 0.0) as server:
            url = f"http://127.0.0.1:{server.port}/"
            flags = ("--alert-webhook", url, "--config", str(alert_rules(tmp_path)))
            async with running(tmp_path, *flags) as (daemon, events):
                sender = fast(daemon, queue=2)
                vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
                await events.wait("vm_connected")
                vm.send(b"ALERT 0\r\n")
                await server.count(1)
                vm.send(b"".join(b"ALERT %d\r\n" % n for n in range(1, 7)))
                await events.wait("console_alert", count=7)
                assert sender.queued == 2 and sender.dropped == 4
                server.release.set()
                await server.count(3)
                await until(lambda: sender.delivered >= 3)
                lines = [json.loads(r.body)["line"] for r in server.requests]
                assert lines == ["ALERT 0", "ALERT 5", "ALERT 6"]  # the newest kept
        warnings = [r.getMessage() for r in caplog.records]
        assert sum("dropping the oldest" in w for w in warnings) == 1
        assert sum("4 alerts dropped" in w for w in warnings) == 1

    asyncio.run(main())


def test_a_server_that_never_answers_does_not_slow_the_console(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(delay=lambda n: None) as server:
            url = f"http://127.0.0.1:{server.port}/"
            flags = ("--alert-webhook", url, "--config", str(alert_rules(tmp_path)))
            async with running(tmp_path, *flags) as (daemon, events):
                sender = fast(daemon, timeout=0.3, attempts=2)
                vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
                await events.wait("vm_connected")
                op = await Operator.connect(console_port(daemon, UUID_A))
                await events.wait("client_attached")
                vm.send(b"ALERT 1\r\n")
                await server.count(1)  # the webhook now waits on a silent server
                chunk = b"x" * 1000 + b"\r\n"
                started = time.perf_counter()
                for n in range(200):
                    vm.send(b"ALERT %d\r\n" % n + chunk)
                total = sum(len(b"ALERT %d\r\n" % n + chunk) for n in range(200))
                await op.output.length(len(b"ALERT 1\r\n") + total)
                assert time.perf_counter() - started < 0.3  # before the first try's timeout
                # The timeout ends the try; the retry meets the same silence; given up.
                await server.count(2)
                await until(lambda: sender.failed >= 1)

    asyncio.run(main())


def test_https_verifies_against_the_given_ca(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with http_server(tls=tls) as server:
            url = f"https://localhost:{server.port}/"
            # Without the CA the certificate is not trusted: never delivered.
            untrusted = WebhookSender(WebhookSettings(parse_url(url), attempts=1))
            await _one_alert(untrusted)
            await until(lambda: untrusted.failed >= 1)
            assert server.requests == []
            flags = ("--alert-webhook", url, "--alert-webhook-ca", str(cert))
            async with running(tmp_path, *flags) as (daemon, events):
                vm = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
                await events.wait("vm_connected")
                vm.send(PANIC)
                await server.count(1)
                assert json.loads(server.requests[0].body)["alert"] == "kernel_panic"

    asyncio.run(main())
