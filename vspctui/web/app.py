"""vspc-web's HTTP side: routes, WebSockets, cookies, CSRF and security headers
(docs/vspc-web.md).

Routes: `/` (the console list; `?token=` logs in on loopback), `/login`, `/logout`,
`/console/<name>`, `/api/console/<name>` (its `show` and newest alerts),
`/api/console/<name>/<action>` (clear, kick, break), `/ws/list`, `/ws/console/<name>`,
`/static/<file>`.

Every state change needs the session's CSRF token (the `X-CSRF-Token` header, the
`csrf` form field, or the WebSocket URL's `csrf`), WebSockets also an `Origin` equal
to the page's own, and every reply carries a Content-Security-Policy without inline
script or style.  Console names reach vspcd only as the `vm` field of a request, never
a path; static files are served from a fixed table read at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from vspc.common.admin import AdminError, ConsoleInfo, ErrorCode, LockMode
from vspc.vspctui.client import AdminAddress, AdminClient, AttachSession, ClientError
from vspc.vspctui.web import pages
from vspc.vspctui.web.auth import LoginLimiter, PasswordAuth, ProxyHeaderAuth, TokenAuth
from vspc.vspctui.web.backend import (
    Feed,
    Feeds,
    Viewer,
    connect_as,
    open_attach_as,
    recent_alerts,
)
from vspc.vspctui.web.listfeed import ListFeed
from vspc.vspctui.web.sessions import COOKIE, Session, SessionStore

__all__ = ["CSP", "WebSettings", "make_app"]

log = logging.getLogger("vspc.web")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
LOGIN_COOKIE = "vspc_web_login"
STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", "": "text/plain"}
ACTIONS = ("clear", "kick", "break")
ALERTS_SHOWN = 20  # a console page's newest alerts
MODES = {
    "free_for_all": LockMode.FREE_FOR_ALL,
    "write": LockMode.WRITE,
    "exclusive": LockMode.EXCLUSIVE,
}


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What `make_app` needs (built by vspctui/web/cli.py from the options)."""

    address: AdminAddress
    auth: str  # "token", "passwords", "pam" or "proxy-header"
    token: TokenAuth | None = None
    passwords: PasswordAuth | None = None
    proxy: ProxyHeaderAuth | None = None
    tls: bool = False
    idle: float = 1800.0  # seconds without a request before a session ends
    lifetime: float = 43200.0  # seconds after login a session ends whatever happens
    viewer_limit: int = 4 << 20  # unsent console bytes per browser socket
    max_message: int = 64 << 10  # largest WebSocket message from a browser


def _static_table() -> dict[str, tuple[bytes, str]]:
    table = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            name = path.relative_to(STATIC).as_posix()
            table[name] = (path.read_bytes(), _TYPES.get(path.suffix, "text/plain"))
    return table


class WebApp:
    """The routes' shared state: sessions, feeds and the login limiter."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.sessions = SessionStore(
            idle=settings.idle, lifetime=settings.lifetime, on_end=self._session_ended
        )
        self.feeds = Feeds(settings.address)
        self.limiter = LoginLimiter()
        self.static = _static_table()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- sessions -----------------------------------------------------------------------

    def _session_ended(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._close_session(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_session(self, session: Session) -> None:
        for ws in list(session.state.get("sockets", ())):
            await ws.close(code=4001, message=b"session ended")
        listing: ListFeed | None = session.state.pop("list", None)
        if listing is not None:
            await listing.close()
        admin = session.state.pop("admin", None)
        if admin is not None:
            await admin[0].close()

    def cookie(self, response: web.StreamResponse, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            secure=self.settings.tls,
            samesite="Strict",
            path="/",
        )

    def current(self, request: web.Request) -> Session | None:
        """The request's session (proxy-header mode: the proxy's user decides)."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        proxy = self.settings.proxy
        if proxy is not None:
            user = proxy.user(request.remote, request.headers)
            if user is None:
                return None
            if session is None or session.user != user:
                return None  # `ensure` makes the header's user a session
        return session

    def login(self, user: str | None, label: str) -> Session:
        session = self.sessions.create(user, label)
        log.info("vspc-web: %s logged in", label)
        return session

    async def admin(self, session: Session) -> tuple[AdminClient, dict[str, Any]]:
        """The session's admin connection (opened on first use, reopened if lost)."""
        lock = session.state.setdefault("lock", asyncio.Lock())
        async with lock:
            current = session.state.get("admin")
            if current is None or current[0].lost:
                current = await connect_as(self.settings.address, session.user)
                session.state["admin"] = current
            return current

    async def sweep(self) -> None:
        """End expired sessions (closing their sockets) while nobody asks for them.

        A session with an open WebSocket counts as active (someone is watching), so
        only `lifetime` ends it; one without ends `idle` seconds after its last request.
        """
        period = max(0.05, min(30.0, self.settings.idle / 4, self.settings.lifetime / 4))
        while True:
            await asyncio.sleep(period)
            for session in self.sessions.all():
                if session.state.get("sockets"):
                    self.sessions.get(session.id)  # touch, unless its lifetime is over
            self.sessions.sweep()

    async def close(self) -> None:
        for session in self.sessions.all():
            self.sessions.end(session)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.feeds.close()


# -- helpers ----------------------------------------------------------------------------


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _json(obj: object, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


_ERROR_STATUS = {
    ErrorCode.VM_NOT_FOUND: 404,
    ErrorCode.AMBIGUOUS_VM: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_ATTACHED: 404,
    ErrorCode.BUSY: 429,
}


def _admin_error(exc: AdminError) -> web.Response:
    return _json(
        {"ok": False, "error": exc.code.value, "message": exc.message},
        _ERROR_STATUS.get(exc.code, 400),
    )


def origin_ok(request: web.Request) -> bool:
    """The WebSocket's Origin is this page's own (scheme and host:port)."""
    origin = request.headers.get("Origin")
    host = request.headers.get("Host")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    scheme = "https" if request.app[APP].settings.tls else "http"
    if request.headers.get("X-Forwarded-Proto") == "https" and request.app[APP].settings.proxy:
        scheme = "https"
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


APP: web.AppKey[WebApp] = web.AppKey("vspc_web", WebApp)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")  # the token in the URL
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if request.app[APP].settings.tls:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if isinstance(response, web.HTTPException):
        raise response
    return response


def _session_or_login(request: web.Request) -> Session:
    """The session, or an HTTP exception that leads to one."""
    app = request.app[APP]
    session = app.current(request)
    if session is not None:
        return session
    if app.settings.proxy is not None:
        user = app.settings.proxy.user(request.remote, request.headers)
        if user is not None:
            session = app.login(user, user)
            raise _with_cookie(app, web.HTTPSeeOther(request.path_qs), session)
        raise web.HTTPForbidden(
            text=pages.message_page("Forbidden", "no user from the proxy"), content_type="text/html"
        )
    if app.settings.auth == "token":
        raise web.HTTPForbidden(
            text=pages.message_page("Log in", "open the URL vspc-web printed (with ?token=)"),
            content_type="text/html",
        )
    raise web.HTTPSeeOther("/login")


def _with_cookie(app: WebApp, response: web.HTTPException, session: Session) -> web.HTTPException:
    app.cookie(response, session)
    return response


def _api_session(request: web.Request, *, csrf: bool) -> Session:
    session = request.app[APP].current(request)
    if session is None:
        raise web.HTTPUnauthorized(
            text='{"ok":false,"error":"not logged in"}', content_type="application/json"
        )
    if csrf and not session.csrf_ok(request.headers.get("X-CSRF-Token")):
        raise web.HTTPForbidden(
            text='{"ok":false,"error":"bad CSRF token"}', content_type="application/json"
        )
    return session


# -- pages ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    token = request.query.get("token")
    if token is not None and app.settings.token is not None:
        remote = request.remote or "?"
        if not app.limiter.allowed(remote):
            return _html(pages.message_page("Slow down", "too many failed logins"), 429)
        if not app.settings.token.check(token):
            app.limiter.failed(remote)
            log.warning("vspc-web: wrong token from %s", remote)
            return _html(pages.message_page("Forbidden", "wrong token"), 403)
        session = app.login(None, "token")
        raise _with_cookie(app, web.HTTPSeeOther("/"), session)  # drops the token from the URL
    session = _session_or_login(request)
    return _html(pages.list_page(session.label, session.csrf))


async def console_page(request: web.Request) -> web.StreamResponse:
    session = _session_or_login(request)
    return _html(pages.console_page(request.match_info["name"], session.label, session.csrf))


async def login_form(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    if app.settings.passwords is None:
        raise web.HTTPNotFound()
    token = secrets.token_urlsafe(24)
    response = _html(pages.login_page(token))
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        secure=app.settings.tls,
        samesite="Strict",
        path="/login",
    )
    return response


async def login_post(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    if app.settings.passwords is None:
        raise web.HTTPNotFound()
    form = await request.post()
    expected = request.cookies.get(LOGIN_COOKIE)
    given = form.get("csrf")
    if not expected or not isinstance(given, str) or not secrets.compare_digest(given, expected):
        return _html(pages.message_page("Forbidden", "bad CSRF token; reload the page"), 403)
    remote = request.remote or "?"
    if not app.limiter.allowed(remote):
        return _html(pages.login_page(expected, "too many failed logins; wait a minute"), 429)
    user, password = form.get("user"), form.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        return _html(pages.login_page(expected, "user and password needed"), 400)
    from vspc.vspctui.web.auth import valid_user_name

    if not valid_user_name(user) or not await app.settings.passwords.verify(user, password):
        app.limiter.failed(remote)
        log.warning("vspc-web: failed login for %r from %s", user[:64], remote)
        return _html(pages.login_page(expected, "wrong user or password"), 403)
    session = app.login(user, user)
    raise _with_cookie(app, web.HTTPSeeOther("/"), session)


async def logout(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    session = app.current(request)
    form = await request.post()
    csrf = form.get("csrf")
    if session is None or not session.csrf_ok(csrf if isinstance(csrf, str) else None):
        return _html(pages.message_page("Forbidden", "bad CSRF token"), 403)
    app.sessions.end(session)
    response = web.HTTPSeeOther("/login" if app.settings.passwords is not None else "/")
    response.del_cookie(COOKIE, path="/")
    raise response


# -- API --------------------------------------------------------------------------------


def _client_json(info: ConsoleInfo) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "kind": c.kind.value,
            "peer": c.peer,
            "user": c.user,
            "mode": c.mode.value,
            "readonly": c.readonly,
        }
        for c in info.attached
    ]


async def show(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    session = _api_session(request, csrf=False)
    try:
        client, hello = await app.admin(session)
        reply = await client.request("show", vm=request.match_info["name"])
    except AdminError as exc:
        return _admin_error(exc)
    except ClientError as exc:
        return _json({"ok": False, "error": "unavailable", "message": str(exc)}, 503)
    row = reply.get("console", {})
    info = ConsoleInfo.from_json(row)
    console = {
        "name": info.name,
        "key": info.key,
        "connected": info.connected,
        "lock": info.lock.value if info.lock else None,
        "level": row.get("level", "watch"),
        "attached": _client_json(info),
    }
    caps = [c for c in hello.get("capabilities", []) if isinstance(c, str)]
    alerts = await recent_alerts(client, info.key, ALERTS_SHOWN) if "alerts" in caps else []
    return _json({"ok": True, "console": console, "capabilities": caps, "alerts": alerts})


async def action(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    session = _api_session(request, csrf=True)
    name, verb = request.match_info["name"], request.match_info["action"]
    if verb not in ACTIONS:
        raise web.HTTPNotFound()
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return _json({"ok": False, "error": "bad JSON"}, 400)
    if not isinstance(body, dict):
        return _json({"ok": False, "error": "bad JSON"}, 400)
    try:
        client, hello = await app.admin(session)
        if verb not in hello.get("capabilities", ()):
            return _json({"ok": False, "error": f"this vspcd has no {verb}"}, 404)
        if verb == "kick":
            ident = body.get("client")
            if not isinstance(ident, int) or isinstance(ident, bool):
                return _json({"ok": False, "error": "client id needed"}, 400)
            shown = await client.show(name)  # kick only a client of *this* console
            if all(c.id != ident for c in shown.attached):
                return _json({"ok": False, "error": "not_attached"}, 404)
            await client.request("kick", client=ident, reason="from vspc-web")
        else:
            await client.request(verb, vm=name)
    except AdminError as exc:
        return _admin_error(exc)
    except ClientError as exc:
        return _json({"ok": False, "error": "unavailable", "message": str(exc)}, 503)
    return _json({"ok": True})


# -- WebSockets -------------------------------------------------------------------------


async def _open_ws(
    request: web.Request, *, compress: bool = True
) -> tuple[Session, web.WebSocketResponse]:
    app = request.app[APP]
    session = app.current(request)
    if session is None:
        raise web.HTTPUnauthorized()
    if not session.csrf_ok(request.query.get("csrf")):
        raise web.HTTPForbidden(text="bad CSRF token")
    if not origin_ok(request):
        log.warning("vspc-web: WebSocket from foreign origin %r", request.headers.get("Origin"))
        raise web.HTTPForbidden(text="foreign origin")
    ws = web.WebSocketResponse(
        max_msg_size=app.settings.max_message, heartbeat=30.0, compress=compress
    )
    await ws.prepare(request)
    session.state.setdefault("sockets", set()).add(ws)
    return session, ws


async def list_socket(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    session, ws = await _open_ws(request)
    try:
        feed: ListFeed | None = session.state.get("list")
        if feed is None or feed.ended:
            client, hello = await app.admin(session)
            feed = ListFeed(client, alerts="alerts" in hello.get("capabilities", ()))
            await feed.start()
            session.state["list"] = feed
        sink = feed.add()
        reader = asyncio.get_running_loop().create_task(_drain(ws))
        try:
            while (message := await sink.get()) is not None:
                await ws.send_str(message)
        finally:
            feed.remove(sink)
            reader.cancel()
    except (AdminError, ClientError) as exc:
        with contextlib.suppress(ConnectionError):
            await ws.send_str(json.dumps({"error": str(exc)}))
    except ConnectionError:
        pass  # the browser went away
    finally:
        session.state["sockets"].discard(ws)
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:  # the list socket only receives: read to see pings and close
        pass


class _ConsoleSocket:
    """One browser's console socket: read-only on the shared feed, or typing on a
    private attach (docs/vspc-web.md "The console page")."""

    def __init__(self, app: WebApp, session: Session, ws: web.WebSocketResponse, vm: str) -> None:
        self.app, self.session, self.ws, self.vm = app, session, ws, vm
        self.viewer = Viewer(app.settings.viewer_limit)
        self.feed: Feed | None = None
        self.private: AttachSession | None = None
        self._pump: asyncio.Task[None] | None = None
        self._told_readonly = False

    async def status(self, **fields: Any) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(fields))

    async def watch(self) -> bool:
        try:
            self.feed = await self.app.feeds.watch(self.session.user, self.vm, self.viewer)
        except AdminError as exc:
            await self.status(type="error", code=exc.code.value, message=exc.message)
            return False
        except ClientError as exc:
            await self.status(type="error", code="unavailable", message=str(exc))
            return False
        grant = self.feed.grant
        await self.status(type="grant", mode=grant.mode.value, readonly=True, client=grant.client)
        return True

    async def send_loop(self) -> None:
        try:
            while (data := await self.viewer.get()) is not None:
                await self.ws.send_bytes(data)
        except ConnectionError:
            return  # the browser went away
        if self.viewer.dropped:
            log.info("vspc-web: %s: a browser too slow for %s dropped", self.session.label, self.vm)
            await self.ws.close(code=4008, message=b"too slow: output dropped")
        else:
            await self.status(type="closed", reason=self.viewer.ended or "ended")
            await self.ws.close(code=1000, message=b"session ended")

    async def take(self, lock: str) -> None:
        if lock == "readonly":
            if self.private is None:
                return
            await self._drop_private()
            await self.status(type="reset")  # the feed replays its scrollback
            await self.watch()
            return
        mode = MODES.get(lock)
        if mode is None:
            await self.status(type="error", code="bad_field", message="unknown lock mode")
            return
        try:
            private = await open_attach_as(
                self.app.settings.address, self.session.user, self.vm, lock=mode
            )
        except AdminError as exc:
            await self.status(type="error", code=exc.code.value, message=exc.message)
            return
        except ClientError as exc:
            await self.status(type="error", code="unavailable", message=str(exc))
            return
        await self._drop_private()
        if self.feed is not None:
            self.feed.leave(self.viewer)
            self.feed = None
        self.private = private
        self._pump = asyncio.get_running_loop().create_task(self._pump_private(private))
        grant = private.grant
        await self.status(
            type="grant", mode=grant.mode.value, readonly=grant.readonly, client=grant.client
        )

    async def _pump_private(self, private: AttachSession) -> None:
        reason = "vspcd closed the session"
        try:
            while data := await private.reader.read(65536):
                self.viewer.push(data)
        except OSError as exc:
            reason = f"connection to vspcd failed: {exc}"
        if self.private is private:
            self.viewer.end(reason)

    async def _drop_private(self) -> None:
        private, self.private = self.private, None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if private is not None:
            await private.close()

    async def typed(self, data: bytes) -> None:
        private = self.private
        if private is None:
            if not self._told_readonly:
                self._told_readonly = True
                await self.status(
                    type="error", code="readonly", message="read-only: take write to type"
                )
            return
        private.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await private.writer.drain()

    async def close(self) -> None:
        await self._drop_private()
        if self.feed is not None:
            self.feed.leave(self.viewer)
            self.feed = None


async def console_socket(request: web.Request) -> web.StreamResponse:
    app = request.app[APP]
    # No permessage-deflate on console output: browsers offer it, and it would cost
    # one zlib stream per viewer for bytes that are shared by all of them.
    session, ws = await _open_ws(request, compress=False)
    sock = _ConsoleSocket(app, session, ws, request.match_info["name"])
    sender: asyncio.Task[None] | None = None
    try:
        if not await sock.watch():
            await ws.close(code=4004, message=b"refused")
            return ws
        sender = asyncio.get_running_loop().create_task(sock.send_loop())
        async for msg in ws:
            app.sessions.get(session.id)  # activity keeps the session alive
            if msg.type is WSMsgType.BINARY:
                await sock.typed(msg.data)
            elif msg.type is WSMsgType.TEXT:
                try:
                    request_obj = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(request_obj, dict) and request_obj.get("type") == "mode":
                    lock = request_obj.get("lock")
                    if isinstance(lock, str):
                        await sock.take(lock)
    finally:
        if sender is not None:
            sender.cancel()
        await sock.close()
        session.state.get("sockets", set()).discard(ws)
        await ws.close()
    return ws


async def static(request: web.Request) -> web.StreamResponse:
    found = request.app[APP].static.get(request.match_info["path"])
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(
        body=body, content_type=content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


def make_app(settings: WebSettings) -> web.Application:
    """The aiohttp application (run it with `aiohttp.web.run_app` or an AppRunner)."""
    application = web.Application(middlewares=[_headers], client_max_size=64 << 10)
    state = WebApp(settings)
    application[APP] = state
    application.router.add_get("/", index)
    application.router.add_get("/login", login_form)
    application.router.add_post("/login", login_post)
    application.router.add_post("/logout", logout)
    application.router.add_get("/console/{name}", console_page)
    application.router.add_get("/api/console/{name}", show)
    application.router.add_post("/api/console/{name}/{action}", action)
    application.router.add_get("/ws/list", list_socket)
    application.router.add_get("/ws/console/{name}", console_socket)
    application.router.add_get("/static/{path:.+}", static)

    sweeper: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        sweeper.append(asyncio.get_running_loop().create_task(state.sweep()))

    async def on_cleanup(app: web.Application) -> None:
        for task in sweeper:
            task.cancel()
        await state.close()

    application.on_startup.append(on_startup)

    application.on_cleanup.append(on_cleanup)
    return application
