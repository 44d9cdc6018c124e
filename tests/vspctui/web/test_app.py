"""vspc-web's routes and their attacks, against a real vspcd (tests/vspctui/realdaemon.py)
through aiohttp's test client (docs/vspc-web.md "Security")."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="vspc-web needs the web extra (aiohttp)")

from aiohttp import WSMsgType  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from tests.vspctui.realdaemon import RealDaemon  # noqa: E402
from vspc.vspctui.client import AdminAddress  # noqa: E402
from vspc.vspctui.web.app import CSP, WebSettings, make_app  # noqa: E402
from vspc.vspctui.web.auth import TokenAuth  # noqa: E402
from vspc.vspctui.web.sessions import COOKIE  # noqa: E402

TOKEN = "t" * 32
TIMEOUT = 10.0


def settings(real: RealDaemon, **extra: Any) -> WebSettings:
    fields: dict[str, Any] = {
        "address": AdminAddress(path=real.path),
        "auth": "token",
        "token": TokenAuth(TOKEN),
    }
    fields.update(extra)
    return WebSettings(**fields)


@asynccontextmanager
async def web(real: RealDaemon, **extra: Any) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings(real, **extra))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def login(client: TestClient[Any, Any]) -> str:
    """Log in with the token; the session's CSRF token."""
    reply = await client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/"
    cookie = reply.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    page = await client.get("/")
    assert page.status == 200
    text = await page.text()
    found = re.search(r'data-csrf="([^"]+)"', text)
    assert found
    return found.group(1)


def origin(client: TestClient[Any, Any]) -> str:
    return f"http://{client.server.host}:{client.server.port}"


def run(
    real: RealDaemon, body: Callable[[TestClient[Any, Any]], Awaitable[None]], **extra: Any
) -> None:
    async def main() -> None:
        async with asyncio.timeout(30), web(real, **extra) as client:
            await body(client)

    asyncio.run(main())


async def read_until(ws: Any, needle: bytes) -> tuple[bytes, list[dict[str, Any]]]:
    data = b""
    statuses: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while needle not in data:
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                data += msg.data
            elif msg.type is WSMsgType.TEXT:
                statuses.append(json.loads(msg.data))
            else:
                raise AssertionError(f"socket ended: {msg}")
    return data, statuses


async def status(ws: Any, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                obj: dict[str, Any] = json.loads(msg.data)
                if obj.get("type") == kind:
                    return obj
            elif msg.type is not WSMsgType.BINARY:
                raise AssertionError(f"socket ended: {msg}")


def test_token_login_list_and_headers(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        denied = await client.get("/")
        assert denied.status == 403
        assert denied.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        wrong = await client.get("/?token=nope")
        assert wrong.status == 403 and COOKIE not in wrong.cookies
        csrf = await login(client)
        ws = await client.ws_connect(f"/ws/list?csrf={csrf}", headers={"Origin": origin(client)})
        first = json.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert first["full"] and [r["name"] for r in first["rows"]] == ["db01"]
        await ws.close()

    run(real, body)


def test_wrong_tokens_are_rate_limited(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        codes = [(await client.get(f"/?token=bad{i}")).status for i in range(8)]
        assert codes[:5] == [403] * 5 and codes[-1] == 429
        # Even the right token waits now.
        assert (await client.get(f"/?token={TOKEN}", allow_redirects=False)).status == 429

    run(real, body)


def test_console_watch_then_type(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        page = await client.get("/console/db01")
        assert page.status == 200
        assert "vendor/xterm.js" in await page.text()
        ws = await client.ws_connect(
            f"/ws/console/db01?csrf={csrf}", headers={"Origin": origin(client)}
        )
        data, statuses = await read_until(ws, b"login: ")  # the scrollback replay
        assert statuses[0]["type"] == "grant" and statuses[0]["readonly"] is True
        await ws.send_bytes(b"ignored")
        assert (await status(ws, "error"))["code"] == "readonly"
        await asyncio.to_thread(real.vm_prints, b"live-output\r\n")
        await read_until(ws, b"live-output")
        await ws.send_str(json.dumps({"type": "mode", "lock": "write"}))
        grant = await status(ws, "grant")
        assert grant["readonly"] is False and grant["mode"] == "write"
        await ws.send_bytes(b"root\r")
        got = await asyncio.to_thread(real.vm_received, b"root\r")
        assert b"ignored" not in got
        shown = await (await client.get("/api/console/db01")).json()
        assert shown["ok"] and shown["console"]["lock"] == "write"
        assert shown["console"]["level"] == "control"
        await ws.close()

    run(real, body)


def test_csrf_on_actions(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        missing = await client.post("/api/console/db01/clear", json={})
        assert missing.status == 403
        wrong = await client.post(
            "/api/console/db01/clear", json={}, headers={"X-CSRF-Token": "x" * 43}
        )
        assert wrong.status == 403
        ok = await client.post("/api/console/db01/clear", json={}, headers={"X-CSRF-Token": csrf})
        assert (await ok.json()) == {"ok": True}
        unknown = await client.post(
            "/api/console/db01/reboot", json={}, headers={"X-CSRF-Token": csrf}
        )
        assert unknown.status == 404
        logout = await client.post("/logout", data={"csrf": "wrong"})
        assert logout.status == 403

    run(real, body)


def test_websocket_checks(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        for path, headers in (
            (f"/ws/console/db01?csrf={csrf}", {"Origin": "http://evil.example"}),
            (f"/ws/console/db01?csrf={csrf}", {}),
            ("/ws/console/db01?csrf=wrong", {"Origin": origin(client)}),
            (f"/ws/list?csrf={csrf}", {"Origin": "https://" + origin(client)[7:]}),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await client.ws_connect(path, headers=headers)
            assert caught.value.status == 403
        # No session at all.
        client.session.cookie_jar.clear()
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(f"/ws/list?csrf={csrf}", headers={"Origin": origin(client)})
        assert caught.value.status == 401

    run(real, body)


def test_huge_frame_closes_socket(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(
            f"/ws/console/db01?csrf={csrf}", headers={"Origin": origin(client)}
        )
        await read_until(ws, b"login: ")
        await ws.send_bytes(b"x" * (1 << 20))
        async with asyncio.timeout(TIMEOUT):
            while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                pass
        assert ws.close_code == 1009  # message too big

    run(real, body, max_message=64 << 10)


def test_slow_client_dropped(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(
            f"/ws/console/db01?csrf={csrf}", headers={"Origin": origin(client)}
        )
        await read_until(ws, b"login: ")
        # Do not read while the VM prints far more than the socket's queue holds and
        # the kernel buffers absorb.
        for _ in range(40):
            await asyncio.to_thread(real.vm_prints, b"y" * 200_000 + b"<end>")
        async with asyncio.timeout(TIMEOUT):
            while (await ws.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                pass
        assert ws.close_code == 4008

    run(real, body, viewer_limit=256 << 10)


def test_traversal_and_unknown(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        await login(client)
        for path in (
            "/static/../app.py",
            "/static/%2e%2e/app.py",
            "/static/vendor/../../app.py",
            "/static/..%2fapp.py",
            "/static/nope.js",
        ):
            reply = await client.get(path)
            assert reply.status == 404, path
        good = await client.get("/static/vendor/xterm.js")
        assert good.status == 200 and good.content_type == "text/javascript"
        missing = await client.get("/api/console/..%2f..%2fetc%2fpasswd")
        assert missing.status == 404
        assert (await missing.json())["error"] == "vm_not_found"
        page = await client.get("/console/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        text = await page.text()
        assert "<script>alert(1)" not in text and "&lt;script&gt;" in text

    run(real, body)


def test_unknown_console_ws_refused(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(
            f"/ws/console/nosuch?csrf={csrf}", headers={"Origin": origin(client)}
        )
        assert (await status(ws, "error"))["code"] == "vm_not_found"

    run(real, body)
