"""Who may connect, and how much a connection may cost before it says who it is.

The threat model is docs/security.md.  Two small pieces, no I/O (refusals are
logged through vspcd/hub/ratelog.py `throttled`):

* `AllowList`: the CIDR networks (IPv4 and IPv6) a listener accepts peers from.
  `parse_allow_list` is the one parser (flag, config key, reload); a listener holds
  the list by reference and `Listener.set_allow_list` swaps it while running.
* `Slots`: counted admissions with a global cap shared fairly between keys (source
  addresses).  Admission is by harm, not by count: any number of connections from
  one address is fine while they make progress.  At the cap a newcomer takes the
  place of the longest-idle slot of the address holding the most (a peer silent for
  `IDLE_GRACE` seconds is not an ESXi host in the middle of identifying: ESXi sends
  its telnet negotiation at once, docs/protocol.md §3.1); with nothing idle, the
  newcomer waits (the listener leaves connections in the kernel's accept queue).
  Nobody is refused for arriving in a crowd, and idle holders cannot keep a busy
  address out.  An optional hard cap per key refuses the newest.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from vspc.common import convert

__all__ = [
    "IDLE_GRACE",
    "MUTE_GRACE",
    "STALL_GRACE",
    "AllowList",
    "Slot",
    "Slots",
    "host_of",
    "parse_allow_list",
]

# Seconds an unidentified peer may stay silent before a newcomer may take its slot
# when every slot is taken.  Generous against a busy loop (a connection waiting for
# us to read it looks silent too), short against the identification timeout.
IDLE_GRACE = 5.0
# Seconds after admission by which a peer must have sent its first byte, or its
# address's newcomers are refused while every slot is busy (`Slots.mute`).
MUTE_GRACE = 2.0
# Seconds a TLS handshake slot may be held, while a quieter address waits for one,
# before it is taken back.  A handshake only gets a slot once its whole ClientHello
# has arrived (vspcd/net/tls.py `client_hello`), so what is left is one flight each
# way: a real host is done in milliseconds.
STALL_GRACE = 3.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(text: str) -> AllowList:
    """Parse "CIDR,CIDR,..." (a bare address means that one host).

    Raises:
        ValueError: empty list, or an entry that is not an IPv4/IPv6 network; the
            message names the entry.  Host bits set ("10.0.0.1/8") are an error too:
            it is more likely a typo than a wish to allow the whole network.
    """
    return AllowList(convert.cidr_list(text))  # ConversionError is a ValueError


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
    """One admitted connection's place in a `Slots`; `release()` is idempotent.

    The holder keeps `active` current (`touch()` on each sign of life from the peer)
    and sets `evict` to how it drops its connection, which makes the slot a candidate
    for fair eviction (`Slots.acquire`).  `pinned` marks a holder waiting on us
    rather than on its peer (queued for a TLS handshake slot): never evicted.
    """

    __slots__ = ("_owner", "active", "deadline", "evict", "key", "pinned", "since", "spoke")

    def __init__(self, owner: Slots, key: Hashable, deadline: float, now: float) -> None:
        self._owner: Slots | None = owner
        self.key = key
        self.deadline = deadline  # clock time by which the holder must be done
        self.active = now  # clock time of the peer's last sign of life
        self.since = now  # admitted
        self.spoke = False  # the peer has sent anything at all
        self.evict: Callable[[], object] | None = None
        self.pinned = False

    @property
    def held(self) -> bool:
        return self._owner is not None

    def touch(self) -> None:
        """The peer sent something: not idle now."""
        self.spoke = True
        if self._owner is not None:
            self._owner._touch(self)

    def release(self) -> None:
        owner, self._owner = self._owner, None
        self.evict = None  # the holder's bound method: no cycle left behind
        if owner is not None:
            owner._release(self)


class Slots:
    """At most `total` admissions at once, shared fairly between keys (addresses).

    When all `total` are taken, a newcomer takes the place of the **longest-idle
    evictable slot of the key holding the most** (then the next-heaviest key, and so
    on), provided that slot's peer has been silent for `idle_grace` seconds; its
    holder's `evict` drops the connection.  With nothing idle enough `acquire`
    returns None and the caller waits (the listener stops accepting and leaves the
    connections in the kernel's accept queue); `on_free` callbacks are told when a
    slot comes back.  `per_key` is an optional hard cap per key (0 = none) whose
    newcomers are refused.

    Args:
        total: global cap (0 = no cap).
        per_key: cap per key, e.g. per source address (0 = no cap).
        lifetime: seconds a slot holder has before its deadline (the holder enforces
            it with its own timer).
        clock: the loop's clock.
        on_empty: called with `admitted` whenever the last slot is released (the
            daemon trims its heap after a flood: vspcd/service/heap.py).
        idle_grace: seconds of silence after which a slot may be evicted (default
            `IDLE_GRACE`).
        stall_grace: seconds a slot may be held while others `wait_acquire` before it
            counts as stalled and may go to a waiter of a quieter key (default
            `STALL_GRACE`).
    """

    def __init__(
        self,
        total: int,
        per_key: int,
        *,
        lifetime: float,
        clock: Callable[[], float],
        on_empty: Callable[[int], None] | None = None,
        idle_grace: float | None = None,
        stall_grace: float | None = None,
    ) -> None:
        self.total = total
        self.per_key = per_key
        self.lifetime = lifetime
        # Read at construction, not import, so tests can shorten it (monkeypatch).
        self.idle_grace = IDLE_GRACE if idle_grace is None else idle_grace
        self._clock = clock
        self._count = 0
        self.admitted = 0  # slots ever granted
        self.evicted = 0  # slots taken back from idle holders
        self._on_empty = on_empty
        # Per key, least recently active first (dicts keep insertion order; `touch`
        # moves a slot to the end), so each key's best eviction candidate is first.
        self._held: dict[Hashable, dict[Slot, None]] = {}
        # `wait_acquire` callers, per key, oldest first (TLS handshakes queue here).
        self._waiters: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self.on_free: list[Callable[[], None]] = []  # told when a slot comes back
        # Slots freed for a woken waiter that has not run yet: not for newcomers.
        self._promised = 0
        self.stall_grace = STALL_GRACE if stall_grace is None else stall_grace
        self.stalled = 0  # slots taken back from stalled holders for quieter keys
        self._reclaim_timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return bool(self.total) and self._count >= self.total

    @property
    def waiting(self) -> int:
        """Callers queued in `wait_acquire` (metrics, at scrape time: O(keys))."""
        return sum(len(queue) for queue in self._waiters.values())

    def count(self, key: Hashable) -> int:
        held = self._held.get(key)
        return 0 if held is None else len(held)

    def acquire(self, key: Hashable) -> Slot | None:
        """A slot for `key`; at the global cap, an idle holder's (see the class).

        None when `key` is at `per_key`, or every slot is taken and none is idle.
        """
        held = self.count(key)
        if self.per_key and held >= self.per_key:
            return None
        if self.full:
            victim = self.victim()
            if victim is None:
                return None
            self.evicted += 1
            evict = victim.evict
            victim.release()  # now: the newcomer takes its place in this call
            if evict is not None:
                evict()
        now = self._clock()
        slot = Slot(self, key, now + self.lifetime, now)
        self._count += 1
        self.admitted += 1
        self._held.setdefault(key, {})[slot] = None
        return slot

    def victim(self, grace: float | None = None, busier_than: int = -1) -> Slot | None:
        """The slot a newcomer would take at the cap: None if nothing is idle enough.

        Idle means silent (or, for a handshake slot, held) `grace` seconds (default
        `idle_grace`); only keys holding more than `busier_than` slots are looked at,
        the busiest first.  O(keys log keys + slots) in the worst case, only at the cap.
        """
        cutoff = self._clock() - (self.idle_grace if grace is None else grace)
        for key in sorted(self._held, key=lambda k: len(self._held[k]), reverse=True):
            if len(self._held[key]) <= busier_than:
                break
            for slot in self._held[key]:
                if slot.active > cutoff:
                    break  # the rest of this key's slots were active more recently
                if slot.evict is not None and not slot.pinned:
                    return slot
        return None

    def mute(self, key: Hashable) -> bool:
        """Does `key` hold a slot whose peer has said nothing for `MUTE_GRACE` seconds?

        ESXi speaks first and at once; an address with such a connection is not
        reconnecting VMs, so while every slot is busy its newcomers are refused
        rather than queued ahead of everyone else's (`Listener`)."""
        cutoff = self._clock() - MUTE_GRACE
        held = self._held.get(key)
        return held is not None and any(not slot.spoke and slot.since <= cutoff for slot in held)

    def next_idle(self, grace: float | None = None) -> float | None:
        """Clock time at which the least recently active evictable slot turns idle
        (silent `grace` seconds, default `idle_grace`)."""
        times = [
            slot.active
            for held in self._held.values()
            for slot in held
            if slot.evict is not None and not slot.pinned
        ]
        grace = self.idle_grace if grace is None else grace
        return min(times) + grace if times else None

    async def wait_acquire(self, key: Hashable, patience: float) -> Slot | None:
        """A slot for `key`, waiting up to `patience` seconds for one to come free.

        For work that may be deferred rather than refused: a TLS handshake waits here
        with only its socket (no TLS state) until a handshake slot is free, so a
        host reconnecting hundreds of VMs at once is slowed, never turned away.

        Fair between keys: a freed slot goes to the waiting key holding the fewest
        (round-robin among equals, oldest waiter first within a key), never to a
        newcomer ahead of a waiter it was promised to; and while anyone waits, a slot
        held `stall_grace` seconds by a key holding more than the waiter's is taken
        back (its holder's `evict` drops it: `_reclaim`).  None when the time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            if not self._waiters.get(key) and self._room():
                slot = self.acquire(key)
                if slot is not None:
                    return slot
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            queue = self._waiters.setdefault(key, deque())
            queue.append(waiter)
            self._arm_reclaim(loop)
            woken = False
            try:
                async with asyncio.timeout(remaining):
                    await waiter
                woken = True
            except TimeoutError:
                return None
            finally:
                if waiter in queue:
                    queue.remove(waiter)
                if not queue and self._waiters.get(key) is queue:
                    del self._waiters[key]
                if waiter.done() and not waiter.cancelled():
                    self._promised -= 1  # the slot promised to us is ours or passed on
                    if not woken:
                        self._wake()
            slot = self.acquire(key)  # promised to us: nobody took it meanwhile
            if slot is not None:
                return slot
            self._wake()  # our key reached its own cap meanwhile: pass the slot on

    def _arm_reclaim(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per Slots, at the next moment a held slot could count as stalled.
        if self._reclaim_timer is not None or self._room():
            return
        when = self.next_idle(self.stall_grace)
        if when is not None:
            # Never sooner than a tick: holders stalled already but of a key no busier
            # than any waiter's stay put, and must not make this a busy loop.
            when = max(when, loop.time() + 0.25)
            self._reclaim_timer = loop.call_at(when, self._reclaim, loop)

    def _reclaim(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take back stalled slots for waiters of quieter keys, busiest key first."""
        self._reclaim_timer = None
        while self._waiters and not self._room():
            waiter_key = self._next_key()
            if waiter_key is None:
                break
            victim = self.victim(self.stall_grace, busier_than=self.count(waiter_key))
            if victim is None:
                break
            self.evicted += 1
            self.stalled += 1
            evict = victim.evict
            victim.release()  # wakes the waiter (`_release`) before the holder goes
            if evict is not None:
                evict()
        if self._waiters:
            self._arm_reclaim(loop)

    def full_reason(self, key: Hashable) -> str:
        """Which cap refused `key` (for the log line)."""
        if self.per_key and self.count(key) >= self.per_key:
            return f"{self.count(key)} from this address, limit {self.per_key}"
        return f"{self._count} in progress, limit {self.total}"

    def _touch(self, slot: Slot) -> None:
        slot.active = self._clock()
        held = self._held[slot.key]
        del held[slot]
        held[slot] = None

    def _release(self, slot: Slot) -> None:
        self._count -= 1
        held = self._held[slot.key]
        del held[slot]
        if not held:
            del self._held[slot.key]  # memory comes back: no entry per address ever seen
        if self._waiters:
            self._wake()
        elif not self._count and self._on_empty is not None:
            self._on_empty(self.admitted)
        if self.on_free:
            for callback in list(self.on_free):
                callback()

    def _next_key(self) -> Hashable | None:
        # The waiting key below its own cap holding the fewest slots; among equals the
        # one served longest ago (`_wake` moves a served key to the end).
        best: Hashable | None = None
        fewest = 0
        for key, queue in self._waiters.items():
            held = self.count(key)
            if (self.per_key and held >= self.per_key) or not any(not w.done() for w in queue):
                continue
            if best is None or held < fewest:
                best, fewest = key, held
        return best

    def _room(self) -> bool:
        # A slot free and not promised to a woken waiter that has yet to run.
        return not self.total or self._count + self._promised < self.total

    def _wake(self) -> None:
        # A slot came free: promise it to the oldest waiter of `_next_key`.
        if not self._room():
            return
        key = self._next_key()
        if key is None:
            return
        queue = self._waiters.pop(key)
        self._waiters[key] = queue  # round-robin: served last now
        for waiter in queue:
            if not waiter.done():
                waiter.set_result(None)
                self._promised += 1
                return
