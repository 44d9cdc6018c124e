"""vspcd's optional HTTP listener: GET routes from one table.

Boundary: a thin asyncio adapter (docs/development.md, uvicorn) around the sans-IO parser in
vspcd/faces/http/parse.py.  `data_received` feeds the parser; when a request head is
complete the `Router` picks a handler from its route table, the response is written
and the connection closed (`Connection: close`: one request per connection, no
keep-alive state to defend).  Off unless `--http [ADDR:]PORT` is given, loopback when
only a port is.

Adding an endpoint is one `Route` in the table the daemon builds (vspcd/service/server.py,
`http_routes`): e.g. `Route("/healthz", healthz)`.  A pattern segment `{name}`
captures that path segment into the handler's `params`.

Limits: a request head of at most 8 KiB and 64 fields (431/414), 10 s to send it
(then the connection is closed: a slow-loris costs a descriptor for 10 s), at most
64 connections at once and 8 from one address (docs/security.md).  At the global
limit a newcomer takes the place of the oldest unanswered connection of the address
holding the most, if that address holds more than the newcomer's; otherwise, and
over the per-address limit, it gets 503.  So neither one address nor a handful can
keep the others out.  GET and HEAD only (405 with `Allow`), no request bodies (413),
unknown paths 404.  A handler that raises gives a
500 and a log line, never a dead listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

from vspc.common.display import safe
from vspc.vspcd.faces.http.parse import HttpError, Request, RequestParser
from vspc.vspcd.hub.ratelog import BurstLog, throttled

log = logging.getLogger(__name__)

__all__ = ["MAX_CONNECTIONS", "MAX_PER_ADDRESS", "HttpServer", "Response", "Route", "Router"]

REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    def encode(self, *, head_only: bool = False) -> bytes:
        """The whole HTTP/1.1 response (headers only for HEAD)."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def error_response(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, f"{status} {reason}\n".encode(), headers=headers)


Handler = Callable[[Request, Mapping[str, str]], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: a path pattern (`/console_log/{uuid}`) and its GET handler."""

    pattern: str
    handler: Handler

    def match(self, path: str) -> dict[str, str] | None:
        want = self.pattern.strip("/").split("/")
        got = path.strip("/").split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for pat, seg in zip(want, got, strict=True):
            if pat.startswith("{") and pat.endswith("}"):
                if not seg:
                    return None
                params[pat[1:-1]] = seg
            elif pat != seg:
                return None
        return params


class Router:
    """Dispatches a request to the first route whose pattern matches its path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)

    def dispatch(self, request: Request) -> Response:
        for route in self.routes:
            params = route.match(request.path)
            if params is None:
                continue
            if request.method not in ("GET", "HEAD"):
                return error_response(405, "only GET and HEAD", (("Allow", "GET, HEAD"),))
            try:
                return route.handler(request, params)
            except Exception:  # a handler bug must not take the listener down
                log.exception("HTTP %s: handler failed", safe(request.path))
                return error_response(500, "internal error")
        return error_response(404, "no such resource")


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        # Shared state, then per-connection state (docs/development.md, uvicorn).
        self._server = server
        self._parser = RequestParser()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False
        self.host = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's transports have the whole `asyncio.Transport` API
        # without deriving from it, so an isinstance check fails there.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refusal = self._server.admit(self)
        if refusal is not None:
            self._answered = True
            self._server.refused.log("HTTP %s: 503: %s", self.host, refusal)
            self._transport.write(error_response(503, refusal).encode())
            self._transport.close()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.request_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # the reply is written; whatever follows is ignored until close
        try:
            request = self._parser.feed(data)
        except HttpError as exc:
            self._reply(error_response(exc.status, exc.reason))
            return
        if request is not None:
            response = self._server.router.dispatch(request)
            self._reply(response, head_only=request.method == "HEAD")

    def eof_received(self) -> bool | None:
        if not self._answered:
            self._reply(error_response(400, "incomplete request"))
        return None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._answered:
            self._reply(error_response(408, "request not received in time"))

    def _reply(self, response: Response, *, head_only: bool = False) -> None:
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response.encode(head_only=head_only))
            self._transport.close()  # after the buffered reply is sent

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.forget(self)

    @property
    def answered(self) -> bool:
        return self._answered

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """The listener: `await start(host, port)`, then `close()`."""

    def __init__(
        self,
        router: Router,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.router = router
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.connections: set[_HttpProtocol] = set()
        # Open connections per address, oldest first (fair eviction, `admit`).
        self._by_host: dict[str, dict[_HttpProtocol, None]] = {}
        self._refused: BurstLog | None = None
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    @property
    def refused(self) -> BurstLog:
        """503s and evictions, logged at most once per 10 s plus a count."""
        if self._refused is None:
            loop = asyncio.get_running_loop()
            self._refused = throttled(
                log, "HTTP connections refused", clock=loop.time, call_later=loop.call_later
            )
        return self._refused

    def admit(self, conn: _HttpProtocol) -> str | None:
        """Count `conn` in, evicting an idle one if fair; or say why not."""
        mine = self._by_host.get(conn.host, {})
        if len(mine) >= self.max_per_address:
            return f"too many connections from this address ({len(mine)} open)"
        if len(self.connections) >= self.max_connections and not self._evict_for(len(mine)):
            return f"too many connections ({len(self.connections)} open)"
        self.connections.add(conn)
        self._by_host.setdefault(conn.host, {})[conn] = None
        return None

    def _evict_for(self, mine: int) -> bool:
        heaviest = max(self._by_host.values(), key=len, default={})
        if len(heaviest) <= mine + 1:
            return False  # nobody holds more than the newcomer's address would
        for victim in heaviest:
            if not victim.answered:
                self.refused.log(
                    "HTTP %s: oldest unanswered connection dropped for a newcomer", victim.host
                )
                self.forget(victim)
                victim.abort()
                return True
        return False

    def forget(self, conn: _HttpProtocol) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        held = self._by_host[conn.host]
        del held[conn]
        if not held:
            del self._by_host[conn.host]

    async def start(self, host: str, port: int) -> None:
        """Bind and listen; raises OSError when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HttpProtocol(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP listener on %s port %d", host, self.port)

    async def close(self) -> None:
        """Stop listening and drop open connections (they hold nothing worth waiting for)."""
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.abort()
            await self._server.wait_closed()
            self._server = None
