"""Per-connection limits of the admin server (docs/admin-protocol.md "Limits and bad
input"): the `Limits` values, the request token bucket, and the reasons a connection
is not being read.

Boundary: plain bookkeeping, no I/O but `pause_reading`/`resume_reading` on the
transport it is bound to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from vspc.common.admin import MAX_LINE

__all__ = ["DEFAULT_LIMITS", "Limits", "Reading", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits (docs/admin-protocol.md, "Limits and bad input")."""

    line: int = MAX_LINE  # bytes per request line
    line_timeout: float = 10.0  # seconds an unfinished line may wait for its b"\n"
    burst: int = 100  # token bucket size, in requests
    rate: float = 50.0  # token bucket refill, requests per second
    error_streak: int = 50  # consecutive error replies before `flood`
    reply_backlog: int = 1 << 20  # unread reply bytes above which reading stops
    event_backlog: int = 4 << 20  # unread bytes above which an event means `overrun`
    connections: int = 64  # open admin connections (Unix and TCP together)
    close_grace: float = 5.0  # seconds a closing peer has to read its last line
    # Fairness (docs/security.md): one uid (Unix) or address (TCP) may hold
    # `per_peer` connections, and everyone but root and the daemon's own uid stops at
    # `connections - reserved`, so those two can always get in.
    per_peer: int = 16
    reserved: int = 8
    # A delegate (a uid named by `delegates`, e.g. vspc-web) holds connections for many
    # people: they count apart from `connections`, up to `delegate_connections` per
    # delegate, and once `hello` names the user (`as_user`) against that user's own
    # `per_peer` (docs/security.md, docs/vspc-web.md).
    delegate_connections: int = 512
    # At the shared limit, an idle connection (not subscribed or tailing) open this
    # long may be dropped for a newcomer from a peer holding fewer (docs/security.md).
    evict_after: float = 5.0
    idle_timeout: float = 300.0  # JSON-mode peers not subscribed/tailing (0 = never)


# Read at construction time, not import time, so tests can shorten the limits of the
# AdminServer that `Daemon` builds (monkeypatch this name).
DEFAULT_LIMITS = Limits()


class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second.

    Computed from the clock when a request arrives; nothing runs in between.
    """

    def __init__(
        self, capacity: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = float(capacity)
        self._rate = rate
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) if the bucket is empty."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Reading:
    """Why a transport is not being read; it reads again once no reason is left.

    Two owners pause independently: our own reply backpressure and the hub (a
    congested VM, for an attached link).  One flag each, so neither resumes the
    other's pause.
    """

    def __init__(self) -> None:
        self._reasons: set[str] = set()
        self._transport: asyncio.Transport | None = None

    def bind(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def pause(self, reason: str) -> None:
        if not self._reasons and self._usable():
            cast(asyncio.Transport, self._transport).pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self._usable():
            cast(asyncio.Transport, self._transport).resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def _usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()
