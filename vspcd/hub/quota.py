"""Console caps: how many consoles one source address, and all of them together, may make.

A console outlives its VM connection (`--vm-expire-time`, a day by default), holds a
telnet port (a listening socket) and is persisted, so a peer that sends a fresh UUID,
identifies and closes, over and over, would otherwise take every port and file
descriptor (docs/security.md, "Resource bounds").  The allow list (`--proxy-allow`)
stays the first line; these caps are the second:

- `per_host`: consoles created by VM connections from one address
  (`--consoles-per-host`; a real ESXi host runs at most 1,024 VMs);
- `total`: consoles in all (`--console-limit`, sized from the fd limit by default).

At a cap, a live VM does not go without while a *forgotten* console (no VM, no
client: its expiry timer is running) exists: the one forgotten longest makes room
(the same host's own at the per-host cap, anyone's at the total cap).  Only when
every console at the cap is in use is the new one refused; refusals are logged
once per 10 s with a count (vspcd/hub/ratelog.py).  The same oldest-forgotten order
gives a telnet port back when none is left to bind (the hub asks `oldest_idle`).

Pure bookkeeping, O(1) per call: the hub reports each console's creation (with the
host that made it), each change between idle and in use, and its removal.  Idle
consoles are kept in insertion-ordered dicts, so the longest-forgotten one is the
first key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.ratelog import BurstLog, throttled

__all__ = ["ConsoleQuota", "Verdict"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `ConsoleQuota.admit` decided for a new console.

    `evict` is a forgotten console to drop first (None: nothing to drop);
    `refused` is why the new console may not be made (None: it may).
    """

    evict: ConsoleKey | None = None
    refused: str | None = None


class ConsoleQuota:
    """Per-host and total console counts, and the idle consoles oldest first.

    Args:
        clock, call_later: the hub's (for the aggregated refusal log).
    """

    __slots__ = ("_owner", "_per_host", "_idle", "_idle_by_host", "refusals", "evictions")

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
    ) -> None:
        self._owner: dict[ConsoleKey, str] = {}  # console -> host that created it ("": restored)
        self._per_host: dict[str, int] = {}
        self._idle: dict[ConsoleKey, None] = {}  # forgotten consoles, longest first
        self._idle_by_host: dict[str, dict[ConsoleKey, None]] = {}
        self.refusals: BurstLog = throttled(
            log, "new consoles refused", clock=clock, call_later=call_later
        )
        self.evictions: BurstLog = throttled(
            log,
            "forgotten consoles dropped to make room",
            clock=clock,
            call_later=call_later,
            level=logging.INFO,
        )

    def __len__(self) -> int:
        return len(self._owner)

    def count(self, host: str) -> int:
        """Consoles `host` created that still exist."""
        return self._per_host.get(host, 0)

    # -- what the hub reports ------------------------------------------------------------

    def added(self, key: ConsoleKey, host: str) -> None:
        self._owner[key] = host
        if host:
            self._per_host[host] = self._per_host.get(host, 0) + 1

    def removed(self, key: ConsoleKey) -> None:
        host = self._owner.pop(key, None)
        if host is None:
            return
        self.busy(key)
        if host:
            left = self._per_host[host] - 1
            if left:
                self._per_host[host] = left
            else:
                del self._per_host[host]

    def idle(self, key: ConsoleKey) -> None:
        """`key` has neither VM nor client now (its expiry timer runs)."""
        host = self._owner.get(key)
        if host is None or key in self._idle:
            return
        self._idle[key] = None
        self._idle_by_host.setdefault(host, {})[key] = None

    def busy(self, key: ConsoleKey) -> None:
        """`key` has a VM or a client again (or is going away)."""
        if key in self._idle:
            del self._idle[key]
            host = self._owner.get(key, "")
            mine = self._idle_by_host.get(host)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self._idle_by_host[host]

    # -- decisions ---------------------------------------------------------------------------

    def oldest_idle(self, host: str | None = None) -> ConsoleKey | None:
        """The console forgotten longest (of `host`'s, if given), or None."""
        idle = self._idle if host is None else self._idle_by_host.get(host, {})
        return next(iter(idle), None)

    def admit(self, host: str, *, per_host: int, total: int) -> Verdict:
        """May `host` make one more console?  Caps of 0 mean none."""
        if per_host and self.count(host) >= per_host:
            evict = self.oldest_idle(host)
            if evict is None:
                return Verdict(refused=f"{per_host} consoles from this address, all in use")
            return Verdict(evict=evict)
        if total and len(self._owner) >= total:
            evict = self.oldest_idle()
            if evict is None:
                return Verdict(refused=f"{total} consoles in all, all in use")
            return Verdict(evict=evict)
        return Verdict()
