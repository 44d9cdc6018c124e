"""Who may connect, and how much a connection may cost before it says who it is.

The threat model is docs/security.md.  Two small pieces, no I/O (refusals are
logged through vspcd/hub/ratelog.py `throttled`):

* `AllowList`: the CIDR networks (IPv4 and IPv6) a listener accepts peers from.
  `parse_allow_list` is the one parser (flag, config key, reload); a listener holds
  the list by reference and `Listener.set_allow_list` swaps it while running.
* `Slots`: counted admissions with a global cap and a cap per key (source address,
  uid).  The refusal rule is **newest refused**: a connection that would exceed a cap
  is closed at once; connections already admitted keep their slot until they release
  it (identified, finished the TLS handshake, closed) or their own deadline expires.
  Refusing the newest means an attacker cannot push out a host that already got in,
  and the slots a flood takes come back within one identification timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = [
    "AllowList",
    "Slot",
    "Slots",
    "host_of",
    "parse_allow_list",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(text: str) -> AllowList:
    """Parse "CIDR,CIDR,..." (a bare address means that one host).

    Raises:
        ValueError: empty list, or an entry that is not an IPv4/IPv6 network; the
            message names the entry.  Host bits set ("10.0.0.1/8") are an error too:
            it is more likely a typo than a wish to allow the whole network.
    """
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a network in CIDR notation ({exc})") from None
    if not networks:
        raise ValueError("empty allow list (give at least one CIDR, e.g. 10.0.0.0/24)")
    return AllowList(tuple(networks))


@dataclass(frozen=True, slots=True)
class AllowList:
    """The networks a listener accepts connections from."""

    networks: tuple[Network, ...]

    def allows(self, host: str) -> bool:
        """True if `host` (a textual address, maybe IPv4-mapped IPv6) is inside."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])  # drop a zone id
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            mapped = address.ipv4_mapped
            return any(mapped in net for net in self.networks if net.version == 4)
        return any(address in net for net in self.networks if net.version == address.version)

    def __str__(self) -> str:
        return ",".join(str(net) for net in self.networks)


def host_of(address: object) -> str:
    """The host part of a socket address (the key for per-address limits)."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unix"


class Slot:
    """One admitted connection's place in a `Slots`; `release()` is idempotent."""

    __slots__ = ("_owner", "deadline", "key")

    def __init__(self, owner: Slots, key: Hashable, deadline: float) -> None:
        self._owner: Slots | None = owner
        self.key = key
        self.deadline = deadline  # clock time by which the holder must be done

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.key)


class Slots:
    """At most `total` admissions, at most `per_key` of them for any one key.

    Args:
        total: global cap (0 = no cap).
        per_key: cap per key, e.g. per source address (0 = no cap).
        lifetime: seconds a slot holder has before its deadline (informational:
            the holder enforces it with its own timer).
        clock: the loop's clock.
        on_empty: called with `admitted` whenever the last slot is released (the
            daemon trims its heap after a flood: vspcd/service/heap.py).
    """

    def __init__(
        self,
        total: int,
        per_key: int,
        *,
        lifetime: float,
        clock: Callable[[], float],
        on_empty: Callable[[int], None] | None = None,
    ) -> None:
        self.total = total
        self.per_key = per_key
        self.lifetime = lifetime
        self._clock = clock
        self._count = 0
        self.admitted = 0  # slots ever granted
        self._on_empty = on_empty
        self._by_key: dict[Hashable, int] = {}
        # `wait_acquire` callers, per key, oldest first (TLS handshakes queue here).
        self._waiters: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return self._count

    @property
    def waiting(self) -> int:
        """Callers queued in `wait_acquire` (metrics, at scrape time: O(keys))."""
        return sum(len(queue) for queue in self._waiters.values())

    def count(self, key: Hashable) -> int:
        return self._by_key.get(key, 0)

    def acquire(self, key: Hashable) -> Slot | None:
        """A slot for `key`, or None when a cap is reached (the newest is refused)."""
        held = self._by_key.get(key, 0)
        if (self.total and self._count >= self.total) or (self.per_key and held >= self.per_key):
            return None
        self._count += 1
        self.admitted += 1
        self._by_key[key] = held + 1
        return Slot(self, key, self._clock() + self.lifetime)

    async def wait_acquire(self, key: Hashable, patience: float) -> Slot | None:
        """A slot for `key`, waiting up to `patience` seconds for one to come free.

        For work that may be deferred rather than refused: a TLS handshake waits here
        with only its socket (no TLS state) until a handshake slot is free, so a
        host reconnecting hundreds of VMs at once is slowed, never turned away.
        Waiters are served oldest first per key.  None when the time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            if not self._waiters.get(key):
                slot = self.acquire(key)
                if slot is not None:
                    return slot
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            queue = self._waiters.setdefault(key, deque())
            queue.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                return None
            finally:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue and self._waiters.get(key) is queue:
                    del self._waiters[key]
            slot = self.acquire(key)  # woken for us: take it before anyone else
            if slot is not None:
                return slot

    def full_reason(self, key: Hashable) -> str:
        """Which cap refused `key` (for the log line)."""
        if self.total and self._count >= self.total:
            return f"{self._count} in progress, limit {self.total}"
        return f"{self.count(key)} from this address, limit {self.per_key}"

    def _release(self, key: Hashable) -> None:
        self._count -= 1
        left = self._by_key[key] - 1
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]  # memory comes back: no entry per address ever seen
        if self._waiters:
            self._wake(key)
        elif not self._count and self._on_empty is not None:
            self._on_empty(self.admitted)

    def _wake(self, freed: Hashable) -> None:
        # One slot came free: it satisfies a waiter of the same key for certain,
        # otherwise the oldest-queued key that is below its own cap.
        candidates = [freed] if self._waiters.get(freed) else []
        candidates += [k for k in self._waiters if k != freed]
        for key in candidates:
            if self.per_key and self._by_key.get(key, 0) >= self.per_key:
                continue
            for waiter in self._waiters[key]:
                if not waiter.done():
                    waiter.set_result(None)
                    return
