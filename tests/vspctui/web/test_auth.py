"""vspc-web's logins end to end (docs/vspc-web.md "Security", "Behind a reverse
proxy"): password files with argon2 and bcrypt hashes, wrong passwords and the rate
limit, the proxy header honoured only from trusted proxies, TLS required off loopback,
session expiry (idle and absolute) and logout, through aiohttp's test client against
a real vspcd (tests/vspctui/realdaemon.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="vspc-web needs the web extra (aiohttp)")
pytest.importorskip("argon2", reason="password files need argon2-cffi")
bcrypt = pytest.importorskip("bcrypt", reason="password files need bcrypt")

from aiohttp import WSMsgType  # noqa: E402
from aiohttp.test_utils import TestClient  # noqa: E402

from tests.vspctui.realdaemon import RealDaemon  # noqa: E402
from tests.vspctui.web.test_app import TIMEOUT, TOKEN, login, origin, run  # noqa: E402
from vspc.vspctui.web import cli  # noqa: E402
from vspc.vspctui.web.auth import (  # noqa: E402
    PasswordFileAuth,
    ProxyHeaderAuth,
    hash_password,
)
from vspc.vspctui.web.sessions import COOKIE  # noqa: E402

Client = TestClient[Any, Any]


def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    argon = hash_password("argon-secret")
    crypt = bcrypt.hashpw(b"bcrypt-secret", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"# user:hash\nalice:{argon}\nbob:{crypt}\n")
    return path


async def form_login(client: Client, user: str, password: str) -> Any:
    """The login form: its double-submit CSRF cookie and field, then the POST."""
    page = await client.get("/login")
    assert page.status == 200
    found = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert found
    return await client.post(
        "/login",
        data={"csrf": found.group(1), "user": user, "password": password},
        allow_redirects=False,
    )


async def csrf_of(client: Client) -> str:
    page = await client.get("/")
    assert page.status == 200
    found = re.search(r'data-csrf="([^"]+)"', await page.text())
    assert found
    return found.group(1)


def test_password_file_argon2_bcrypt_wrong_and_rate_limit(real: RealDaemon, tmp_path: Path) -> None:
    passwords = PasswordFileAuth(password_file(tmp_path))

    async def body(client: Client) -> None:
        assert (await client.get("/", allow_redirects=False)).headers["Location"] == "/login"
        for user, password in (("alice", "argon-secret"), ("bob", "bcrypt-secret")):
            reply = await form_login(client, user, password)
            assert reply.status == 303 and reply.headers["Location"] == "/"
            cookie = reply.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            page = await client.get("/")
            assert page.status == 200 and user in await page.text()
            client.session.cookie_jar.clear()
        # Without the login cookie the form's token is worthless (double submit).
        bare = await client.post(
            "/login", data={"csrf": "x", "user": "alice", "password": "argon-secret"}
        )
        assert bare.status == 403
        # Wrong password, unknown user, another user's password: all "wrong", 403.
        wrong = (("alice", "nope"), ("carol", "argon-secret"), ("bob", "argon-secret"))
        for user, password in wrong:
            reply = await form_login(client, user, password)
            assert reply.status == 403 and COOKIE not in reply.cookies
            assert "wrong user or password" in await reply.text()
        # 5 failures at once per address: the 6th attempt is refused, even a right one.
        await form_login(client, "alice", "nope")
        await form_login(client, "alice", "nope")
        limited = await form_login(client, "alice", "argon-secret")
        assert limited.status == 429 and COOKIE not in limited.cookies

    run(real, body, auth="passwords", passwords=passwords)


def test_proxy_header_from_trusted_proxy(real: RealDaemon) -> None:
    proxy = ProxyHeaderAuth.build("X-Remote-User", ["127.0.0.1/32"])

    async def body(client: Client) -> None:
        assert (await client.get("/")).status == 403  # no header: nobody
        reply = await client.get("/", headers={"X-Remote-User": "alice"}, allow_redirects=False)
        assert reply.status == 303 and COOKIE in reply.cookies
        page = await client.get("/", headers={"X-Remote-User": "alice"})
        assert page.status == 200 and "alice" in await page.text()
        # The proxy decides on every request: another name is another session, and a
        # request without the header has none, whatever cookie it carries.
        assert (await client.get("/api/console/db01")).status == 401
        hijack = await client.get("/", headers={"X-Remote-User": "mallory"}, allow_redirects=False)
        assert hijack.status == 303  # a new session for mallory, not alice's
        # Repeated or implausible names are ignored.
        repeated = await client.get(
            "/", headers=[("X-Remote-User", "alice"), ("X-Remote-User", "root")]
        )
        assert repeated.status == 403
        assert (await client.get("/", headers={"X-Remote-User": "-rf"})).status == 403

    run(real, body, auth="proxy-header", proxy=proxy)


def test_proxy_header_ignored_from_untrusted_address(real: RealDaemon) -> None:
    proxy = ProxyHeaderAuth.build("X-Remote-User", ["10.9.8.0/24"])  # not the test client

    async def body(client: Client) -> None:
        reply = await client.get("/", headers={"X-Remote-User": "alice"}, allow_redirects=False)
        assert reply.status == 403 and COOKIE not in reply.cookies
        assert "no user from the proxy" in await reply.text()

    run(real, body, auth="proxy-header", proxy=proxy)
    assert proxy.user("10.9.8.7", _Headers("alice")) == "alice"
    assert proxy.user("10.9.9.7", _Headers("alice")) is None
    assert proxy.user(None, _Headers("alice")) is None
    with pytest.raises(ValueError, match="trusted-proxy"):
        ProxyHeaderAuth.build("X-Remote-User", [])


class _Headers:
    def __init__(self, *values: str) -> None:
        self.values = list(values)

    def getall(self, name: str, default: list[str]) -> list[str]:
        return self.values or default


def test_tls_required_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSPC_WEB_CONFIG", "/dev/null")
    monkeypatch.setenv("VSPC_SOCKET", str(tmp_path / "admin.sock"))
    pwfile = password_file(tmp_path)
    assert cli.is_loopback("127.0.0.2") and cli.is_loopback("::1")
    assert not cli.is_loopback("0.0.0.0") and not cli.is_loopback("192.0.2.1")
    for listen in ("0.0.0.0:8443", "192.0.2.1:8443", "[::]:8443"):
        argv = ["--listen", listen, "--auth", "passwords", "--password-file", str(pwfile)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--cert and --key are required" in err, err
    # No method at all off loopback, or the token there: refused too.
    assert cli.main(["--listen", "192.0.2.1:8443"]) == 2
    assert "--auth passwords, pam or proxy-header is required" in capsys.readouterr().err
    argv = ["--listen", "192.0.2.1:8443", "--auth", "token", "--cert", "c", "--key", "k"]
    assert cli.main(argv) == 2
    assert "loopback addresses only" in capsys.readouterr().err
    # 127.0.0.2 is loopback: the token and no TLS are fine there.
    ns = cli.parse(["--listen", "127.0.0.2:0"], {"VSPC_WEB_CONFIG": "/dev/null"})
    settings, host, _ = cli.settings_from(ns, {"VSPC_SOCKET": str(tmp_path / "s")})
    assert host == "127.0.0.2" and settings.auth == "token" and not settings.tls


def test_session_idle_expiry(real: RealDaemon) -> None:
    async def body(client: Client) -> None:
        await login(client)
        assert (await client.get("/")).status == 200
        await asyncio.sleep(0.2)
        assert (await client.get("/")).status == 200  # each request restarts the clock
        await asyncio.sleep(0.6)
        assert (await client.get("/")).status == 403  # idle too long: logged out

    run(real, body, idle=0.4)


def test_session_lifetime_closes_sockets(real: RealDaemon) -> None:
    async def body(client: Client) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(
            f"/ws/console/db01?csrf={csrf}", headers={"Origin": origin(client)}
        )
        # Activity does not extend the absolute lifetime: the sweeper ends the session
        # and closes its socket, though nobody makes a request.
        async with asyncio.timeout(TIMEOUT):
            while (await ws.receive()).type in (WSMsgType.TEXT, WSMsgType.BINARY):
                pass
        assert ws.close_code == 4001
        assert (await client.get("/")).status == 403

    run(real, body, lifetime=1.0)


def test_watching_keeps_an_idle_session(real: RealDaemon) -> None:
    async def body(client: Client) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(f"/ws/list?csrf={csrf}", headers={"Origin": origin(client)})
        await ws.receive(timeout=TIMEOUT)  # the snapshot
        await asyncio.sleep(1.0)  # > idle: an open socket is someone watching
        assert (await client.get("/")).status == 200
        await ws.close()

    run(real, body, idle=0.4)


def test_logout(real: RealDaemon) -> None:
    async def body(client: Client) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(f"/ws/list?csrf={csrf}", headers={"Origin": origin(client)})
        await ws.receive(timeout=TIMEOUT)
        sid = next(c.value for c in client.session.cookie_jar if c.key == COOKIE)
        wrong = await client.post("/logout", data={"csrf": "nope"}, allow_redirects=False)
        assert wrong.status == 403
        assert (await client.get("/")).status == 200  # still logged in
        reply = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert reply.status == 303 and reply.headers["Location"] == "/"
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 4001
        client.session.cookie_jar.clear()
        assert (await client.get("/")).status == 403
        # The old cookie is dead, not just dropped by the browser.
        stale = await client.get("/", cookies={COOKIE: sid})
        assert stale.status == 403
        again = await client.get(f"/?token={TOKEN}", allow_redirects=False)
        assert again.status == 303

    run(real, body)
