"""The alert webhook: POST each console alert as JSON to `--alert-webhook URL`.

Spec: docs/operations.md "Console alerts" (the webhook).  Boundary: a hub observer
(`hub.subscribe(sender.observe)`, docs/architecture.md "Hub events") that queues each
`ConsoleAlert` in O(1) and returns; one task delivers the queue, oldest first, over
stdlib asyncio streams (vspcd is stdlib-only: HTTP/1.1 by hand, TLS by `ssl`).

Theory of operation:

- The body is the `console_alert` admin event object (docs/admin-protocol.md
  "Events"): `event`, `name`, `key`, `alert`, `severity`, `line`, `context`, `time`,
  taken from vspcd/hub/fields.py like the admin line, the event log and the hooks.
- One request at a time, `Connection: close`; each attempt (connect, TLS handshake,
  request, status line) has `timeout` seconds.  A 2xx status is delivered; a 4xx
  other than 408 and 429 is refused for good (retrying cannot help: logged, dropped);
  anything else (5xx, 408, 429, a refused connection, a timeout, a TLS failure) is
  retried up to `attempts` tries in all, waiting `backoff` * 2**n seconds (at most
  `backoff_max`) with full jitter between tries, then given up with a warning.
- At most `queue` alerts wait (besides the one being delivered); when full, the
  oldest is dropped for the new one.  Drops are logged in aggregate: one warning
  when dropping starts and one with the count once the queue has room again (an
  alert storm must not flood the log).
- `https://` verifies the server's certificate and name against the system's CAs,
  or `ca_file` (`--alert-webhook-ca`).  `user:password@` in the URL becomes HTTP
  basic authorisation; the URL is never logged with it.
- `reconfigure` (SIGHUP) applies to the next attempt; `close` stops the task and
  reports what was still queued.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from vspc.vspcd.hub.events import ConsoleAlert, HubEvent
from vspc.vspcd.hub.fields import event_fields

log = logging.getLogger(__name__)

__all__ = [
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_QUEUE",
    "WEBHOOK_TIMEOUT",
    "WebhookSender",
    "WebhookSettings",
    "WebhookTarget",
    "alert_body",
    "parse_url",
]

WEBHOOK_QUEUE = 256  # alerts waiting for delivery
WEBHOOK_ATTEMPTS = 5  # tries per alert, the first included
WEBHOOK_TIMEOUT = 10.0  # seconds per try
WEBHOOK_BACKOFF = 1.0  # seconds before the first retry (doubling, with jitter)
WEBHOOK_BACKOFF_MAX = 60.0
_HEAD_LIMIT = 8192  # bytes of the status line read


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A parsed `--alert-webhook` URL."""

    tls: bool
    host: str
    port: int
    target: str  # path and query
    authorization: str | None = None  # "Basic ..." from user:password@

    @property
    def shown(self) -> str:
        """The URL for log lines: without the password."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.target}"


def parse_url(text: str) -> WebhookTarget:
    """`http://` or `https://` `[user:password@]host[:port][/path][?query]`.

    Raises:
        ValueError: not such a URL (the message says why).
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host")
    if parts.fragment:
        raise ValueError(f"{text!r}: a webhook URL has no #fragment")
    tls = parts.scheme == "https"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise ValueError(f"{text!r}: blanks in the path (write them as %20)")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return WebhookTarget(tls, parts.hostname, port or (443 if tls else 80), target, authorization)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where alerts go and within which bounds; `url` None: webhook off."""

    url: WebhookTarget | None = None
    ca_file: Path | None = None
    queue: int = WEBHOOK_QUEUE
    attempts: int = WEBHOOK_ATTEMPTS
    timeout: float = WEBHOOK_TIMEOUT
    backoff: float = WEBHOOK_BACKOFF
    backoff_max: float = WEBHOOK_BACKOFF_MAX


def alert_body(event: ConsoleAlert) -> bytes:
    """The JSON body: the `console_alert` admin event object."""
    found = event_fields(event)
    assert found is not None and found.admin is not None
    message = {"event": found.admin.value, "name": event.name, "key": str(event.key)}
    message.update(found.fields)
    return json.dumps(message, ensure_ascii=False).encode("utf-8")


class _Refused(Exception):
    """The server answered with a status that retrying cannot change."""


class WebhookSender:
    """Queues alerts and POSTs them (see the module docstring).

    Args:
        settings: the target and bounds.
        sleep: waits between tries (tests pass a fast one).
        jitter: a number in [0, 1) per back-off (tests pass a fixed one).
    """

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._ssl_for: Path | None = None
        self._dropping = 0  # alerts dropped since the queue was last not full
        self.delivered = 0
        self.failed = 0  # given up after every try, or refused
        self.dropped = 0

    @property
    def settings(self) -> WebhookSettings:
        return self._settings

    def reconfigure(self, settings: WebhookSettings) -> None:
        """A reload: the next attempt uses `settings` (no URL: queued alerts stay
        until one is configured again or the daemon stops)."""
        if settings.ca_file != self._settings.ca_file:
            self._ssl = None
        self._settings = settings
        while len(self._queue) > settings.queue:
            self._queue.popleft()
            self._drop()
        self._wake.set()

    def observe(self, event: HubEvent) -> None:
        """Hub observer: queue each `ConsoleAlert` (O(1); never waits)."""
        if not isinstance(event, ConsoleAlert) or self._settings.url is None:
            return
        if len(self._queue) >= self._settings.queue:
            self._queue.popleft()
            self._drop()
        self._queue.append(alert_body(event))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alert-webhook")
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Stop delivering; what is queued is dropped (logged)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            log.warning("alert webhook: %d alerts not delivered at shutdown", len(self._queue))
            self._queue.clear()

    def _drop(self) -> None:
        self.dropped += 1
        if not self._dropping:
            log.warning(
                "alert webhook: queue of %d full, dropping the oldest alerts",
                self._settings.queue,
            )
        self._dropping += 1

    async def _run(self) -> None:
        while True:
            while not self._queue or self._settings.url is None:
                self._wake.clear()
                await self._wake.wait()
            await self._deliver(self._queue.popleft())
            if self._dropping and len(self._queue) < self._settings.queue:
                log.warning("alert webhook: %d alerts dropped (queue was full)", self._dropping)
                self._dropping = 0

    async def _deliver(self, body: bytes) -> None:
        """Try `body` until delivered, refused or out of tries."""
        attempt = 0
        while True:
            settings = self._settings
            target = settings.url
            if target is None:
                return
            attempt += 1
            try:
                async with asyncio.timeout(settings.timeout):
                    status = await self._post(target, settings, body)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                if 400 <= status < 500 and status not in (408, 429):
                    raise _Refused(f"HTTP {status}")
                why = f"HTTP {status}"
            except _Refused as exc:
                self.failed += 1
                log.warning("alert webhook %s refused an alert (%s)", target.shown, exc)
                return
            except TimeoutError:
                why = f"no answer within {settings.timeout:g} s"
            except (OSError, ssl.SSLError, ValueError) as exc:
                why = str(exc) or type(exc).__name__
            if attempt >= settings.attempts:
                self.failed += 1
                log.warning(
                    "alert webhook %s: alert not delivered after %d tries (%s)",
                    target.shown,
                    attempt,
                    why,
                )
                return
            delay = min(settings.backoff_max, settings.backoff * 2 ** (attempt - 1))
            log.debug("alert webhook %s: %s; retrying in up to %.1f s", target.shown, why, delay)
            await self._sleep(delay * self._jitter())

    def _context(self, settings: WebhookSettings) -> ssl.SSLContext:
        if self._ssl is None or self._ssl_for != settings.ca_file:
            cafile = None if settings.ca_file is None else str(settings.ca_file)
            self._ssl = ssl.create_default_context(cafile=cafile)
            self._ssl_for = settings.ca_file
        return self._ssl

    async def _post(self, target: WebhookTarget, settings: WebhookSettings, body: bytes) -> int:
        """One POST; the response's status code."""
        context = self._context(settings) if target.tls else None
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=context,
            server_hostname=target.host if context is not None else None,
            limit=_HEAD_LIMIT,
        )
        try:
            host = f"[{target.host}]" if ":" in target.host else target.host
            head = [
                f"POST {target.target} HTTP/1.1",
                f"Host: {host}:{target.port}",
                "User-Agent: vspcd",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            if target.authorization is not None:
                head.append(f"Authorization: {target.authorization}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            return _status(await reader.readline())
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        shown: Any = line[:80]
        raise ValueError(f"not an HTTP response: {shown!r}")
    return int(parts[1])
