"""Browser sessions (docs/vspc-web.md, "Sessions and CSRF").

A session is a random id in a `Secure` (with TLS), `HttpOnly`, `SameSite=Strict`
cookie, with its own CSRF token that every state-changing request must echo in the
`X-CSRF-Token` header (POSTs and the WebSocket URL), expiring after `idle` seconds
without a request and `lifetime` seconds after login whatever happens.  Ids are
compared as dictionary keys of 256-bit random values (guessing one is hopeless).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COOKIE", "Session", "SessionStore"]

COOKIE = "vspc_web_session"


@dataclass(slots=True)
class Session:
    """One logged-in browser.  `user` None: vspc-web's own user (loopback token)."""

    id: str
    user: str | None
    label: str  # who, for pages and logs
    csrf: str
    created: float
    seen: float
    state: dict[str, Any] = field(default_factory=dict)  # the app's per-session objects

    def csrf_ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate, self.csrf)


class SessionStore:
    """The live sessions; expiry is checked on every lookup and by `sweep`."""

    def __init__(
        self,
        *,
        idle: float,
        lifetime: float,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_end: Callable[[Session], None] | None = None,
    ) -> None:
        self.idle, self.lifetime, self.limit = idle, lifetime, limit
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._on_end = on_end

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str | None, label: str) -> Session:
        self.sweep()
        if len(self._sessions) >= self.limit:  # the oldest goes
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            self.end(oldest)
        now = self._clock()
        session = Session(
            secrets.token_urlsafe(32), user, label, secrets.token_urlsafe(32), now, now
        )
        self._sessions[session.id] = session
        return session

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen > self.idle or now - session.created > self.lifetime

    def get(self, sid: str | None, *, touch: bool = True) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            self.end(session)
            return None
        if touch:
            session.seen = now
        return session

    def end(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None and self._on_end is not None:
            self._on_end(session)

    def sweep(self) -> None:
        now = self._clock()
        for session in [s for s in self._sessions.values() if self._expired(s, now)]:
            self.end(session)

    def all(self) -> list[Session]:
        return list(self._sessions.values())
