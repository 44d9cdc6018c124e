"""Per-console records owned by the hub: identity, buffers, vMotion state, clients.

Pure data plus small bounded-buffer helpers; no I/O, no clock.  The hub (vspcd/hub/hub.py)
is the only writer.  Spec: docs/protocol.md §3.5 (port key), §4.1 (cookie), §4.4 (holds).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from vspc.common.admin import ClientKind, LockMode, VMotionPhase
from vspc.common.display import safe
from vspc.common.session import SessionEvent
from vspc.vspcd.hub.audit import SendGate

log = logging.getLogger(__name__)

__all__ = [
    "Announcement",
    "Bounded",
    "Cancellable",
    "Challenge",
    "Client",
    "ClientChannel",
    "Console",
    "ConsoleKey",
    "LockMode",  # the admin protocol's enum, re-exported for the hub's users
    "Migration",
    "Phase",
    "Role",
    "Scrollback",
    "VmChannel",
    "VmConn",
    "VmSink",
]


class Cancellable(Protocol):
    """What `call_later` returns (asyncio.TimerHandle satisfies it)."""

    def cancel(self) -> None: ...


class VmChannel(Protocol):
    """The hub's view of one ESXi connection (vspcd/net/links.py VmLink)."""

    @property
    def peer(self) -> str:
        """`host:port` of the VM's host (for log lines and events)."""

    def send_console(self, data: bytes) -> None: ...
    def goahead(self, sequence: bytes, secret: bytes) -> None: ...
    def notnow(self, sequence: bytes) -> None: ...
    def peer_ok(self, sequence: bytes) -> None: ...
    def write_backlog(self) -> int: ...
    def close(self) -> None: ...

    def send_break(self) -> bool:
        """Send telnet `IAC BRK` (RFC 854) after everything queued before it; False
        if this channel cannot carry one (a console relayed from another node)."""

    def probe(self) -> None:
        """Send a liveness probe the peer must answer (IAC DO TIMING-MARK); the link
        calls `Hub.vm_heard` when it next reads anything from the peer."""


class VmSink(Protocol):
    """Where a VM link reports: the hub itself, or in cluster mode the gate that
    decides whether this node's hub or another node's serves the connection
    (vspcd/cluster/placement.py)."""

    def vm_connected(self, channel: VmChannel) -> VmConn: ...
    def vm_event(self, conn: VmConn, event: SessionEvent) -> None: ...
    def vm_heard(self, conn: VmConn) -> None: ...
    def vm_congested(self, conn: VmConn, congested: bool) -> None: ...
    def vm_closed(self, conn: VmConn) -> None: ...


class ClientChannel(Protocol):
    """The hub's view of one operator connection (telnet port or admin attach)."""

    peer: str

    def console_output(self, raw: bytes, escaped: bytes) -> None:
        """Deliver VM output; `escaped` has 0xff doubled (the same object for every
        telnet client, so fan-out builds it once)."""

    def notify(self, text: str) -> None:
        """Show the operator one line from vspcd (not console data)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, order=True)
class ConsoleKey:
    """A console's identity: canonical VC UUID + discriminator (docs/protocol.md §3.5).

    `label` is the `?port=` label, or the whole serviceURI in multi-console mode, or ""
    for a VM's only console.  Never the VM name.
    """

    uuid: str
    label: str = ""

    def __str__(self) -> str:
        return f"{self.uuid}_{self.label}" if self.label else self.uuid


# A console's vMotion phase (docs/protocol.md §4.5) is the admin protocol's own enum:
# one type from the state machine to the wire.
Phase = VMotionPhase


@functools.lru_cache(maxsize=1024)
def _tag(display_name: str, uuid: str) -> str:
    # Cached: rendering a name safe is per character, and INFO lines name a console
    # on every vMotion (bench/vmotion_micro.py).  Bounded, since every entry is
    # memory an idle console pays for (docs/benchmarks.md, "Memory per idle console").
    return f"{safe(display_name)} ({uuid[:8]})"


class Role(Enum):
    """What a VM connection is to its console."""

    UNBOUND = "unbound"  # not identified yet, refused, or replaced
    ACTIVE = "active"
    DESTINATION = "destination"  # PEERed, not yet COMPLETE
    CHALLENGER = "challenger"  # claims a console whose VM connection is being probed

    # Members are singletons: identity hashing is exact, and C-fast where Enum's own
    # __hash__ is a Python call (the vMotion table is looked up on every VM message
    # of a migrating console).
    __hash__ = object.__hash__
    RETIRED = "retired"  # a former source or replaced connection


class Bounded:
    """A byte FIFO with a ceiling; overflow drops the oldest bytes and counts them.

    The buffer exists only while it holds bytes: a console's hold
    queue and a connection's `early` buffer are empty nearly always, and an empty
    bytearray still costs 56 bytes per console.
    """

    __slots__ = ("_buf", "limit", "dropped")

    def __init__(self, limit: int) -> None:
        self._buf: bytearray | None = None  # allocated on the first append
        self.limit = limit
        self.dropped = 0

    def __len__(self) -> int:
        return 0 if self._buf is None else len(self._buf)

    @property
    def allocated(self) -> bool:
        """True while a buffer is held (tests of the lazy allocation)."""
        return self._buf is not None

    def append(self, data: bytes) -> int:
        """Append; return how many old bytes were dropped to stay within `limit`."""
        if self._buf is None:
            self._buf = bytearray(data)
        else:
            self._buf += data
        over = len(self._buf) - self.limit
        if over > 0:
            del self._buf[:over]
            self.dropped += over
            return over
        return 0

    def take(self) -> bytes:
        """Remove and return everything; the buffer goes with it."""
        buf, self._buf = self._buf, None
        return b"" if buf is None else bytes(buf)


class Scrollback:
    """The last `limit` bytes of console output (for replay and tail).

    Trims in amortised O(1): the buffer may grow to twice the limit before the front
    is cut, so a stream of small writes does not memmove on every write.
    """

    __slots__ = ("_buf", "limit", "total")

    def __init__(self, limit: int) -> None:
        # Allocated on the first output: a console that never
        # printed costs no buffer.
        self._buf: bytearray | None = None
        self.limit = limit
        self.total = 0  # bytes ever written (a position for tail cursors)

    @property
    def allocated(self) -> bool:
        """True once output has been kept (tests of the lazy allocation)."""
        return self._buf is not None

    def append(self, data: bytes) -> None:
        self.total += len(data)
        if self.limit <= 0 or not data:
            return
        if self._buf is None:
            self._buf = bytearray()
        if len(data) >= self.limit:
            # The chunk alone fills the scrollback: keep its tail, copied once.  Adding
            # all of it and then cutting the front resized the buffer twice per chunk
            # (fresh pages each time); with 256 KiB reads that was the largest cost of
            # streaming a VM's output (docs/benchmarks.md, "Daemon").
            self._buf[:] = memoryview(data)[len(data) - self.limit :]
            return
        self._buf += data
        if len(self._buf) > 2 * self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def last(self, n: int) -> bytes:
        """The last `n` bytes kept (fewer if not that many were kept)."""
        if self._buf is None:
            return b""
        n = min(n, self.limit, len(self._buf))
        return bytes(self._buf[len(self._buf) - n :]) if n > 0 else b""


EARLY_LIMIT = 64 * 1024  # bytes of pre-identification output kept per connection


@dataclass(eq=False, slots=True)
class VmConn:
    """Hub-side record of one ESXi connection."""

    channel: VmChannel
    since: float
    role: Role = Role.UNBOUND
    uuid: str | None = None
    name: str | None = None
    service_uri: str | None = None
    label: str | None = None
    proxy_accepted: bool | None = None  # None: no DO-PROXY (yet), e.g. a destination
    console: Console | None = None
    # Output before identification (`early`), built on the first such byte: nearly
    # every connection has none, and an empty `Bounded` is 56 bytes.
    _early: Bounded | None = None
    congested: bool = False
    # Bound, its announcement waiting for VM-NAME (vspcd/hub/announce.py).
    announcing: Announcement | None = None

    @property
    def early(self) -> Bounded:
        """The pre-identification output buffer (built on first use)."""
        if self._early is None:
            self._early = Bounded(EARLY_LIMIT)
        return self._early

    def take_early(self) -> bytes:
        """Remove and return the pre-identification output (b"" if there was none)."""
        return b"" if self._early is None else self._early.take()


@dataclass(eq=False, slots=True)
class Announcement:
    """A bound connection's `vm_connected`, waiting briefly for VM-NAME
    (vspcd/hub/announce.py)."""

    first: bool  # the console is new with this connection
    notify: bool  # clients get the "connected" notice
    remembered: str | None  # a known console's name before: another name is a rename
    timer: Cancellable | None = None  # the wait's deadline


@dataclass(eq=False, slots=True)
class Client:
    """Hub-side record of one operator connection."""

    channel: ClientChannel
    console: Console
    kind: ClientKind
    mode: LockMode
    readonly: bool
    since: float
    uid: int | None = None
    user: str | None = None
    bytes_in: int = 0  # typed and accepted for the VM
    bytes_out: int = 0  # console output handed to the channel
    ident: int = 0
    # The lock (its holder's id; 0: read-only attachment) this client was last told
    # drops its input, so it is told once per lock, not per keystroke.
    told_dropped: int | None = None
    # False: no status lines during the session (attach `quiet`, e.g. `vspc proxy`);
    # the reason a session is ended (clear, kick) is still said.
    notices: bool = True
    # One `send` audit record per second and result (vspcd/hub/audit.py).
    audit: SendGate = field(default_factory=SendGate)


@dataclass(eq=False, slots=True)
class Migration:
    """One vMotion in flight on a console (docs/protocol.md §4.1, §4.5)."""

    source: VmConn
    sequence: bytes
    cookie: bytes
    since: float
    dest: VmConn | None = None
    source_closed: bool = False
    abandon: Cancellable | None = None
    dest_output: bytearray = field(default_factory=bytearray)  # dest data before COMPLETE

    @property
    def phase(self) -> Phase:
        return Phase.PEERED if self.dest is not None else Phase.PENDING


@dataclass(eq=False, slots=True)
class Challenge:
    """A connection from another host claims a console whose VM connection is live as
    far as TCP knows: the old one is probed (docs/security.md, "Console takeover")."""

    newcomer: VmConn
    target: VmConn  # the console's VM connection, probed
    timer: Cancellable  # the probe's deadline: no answer -> the newcomer takes over


@dataclass(eq=False, slots=True)
class Counters:
    """Per-console statistics reported by `show`."""

    bytes_from_vm: int = 0
    bytes_to_vm: int = 0
    vmotions: int = 0
    vmotion_aborts: int = 0
    vmotion_refusals: int = 0
    input_dropped: int = 0
    vm_connects: int = 0


@dataclass(eq=False, slots=True)
class Console:
    """One VM serial port as operators see it."""

    key: ConsoleKey
    name: str
    scrollback: Scrollback
    hold_limit: int  # ceiling of `hold`
    created: float  # hub clock
    port: int | None = None
    # Access rules keep the telnet port closed (`telnet = false`), and the port it had
    # then, reopened if they stop (vspcd/hub/telnetport.py).
    telnet_off: bool = False
    closed_port: int | None = None
    vm: VmConn | None = None
    service_uri: str | None = None
    migration: Migration | None = None
    challenge: Challenge | None = None
    clients: list[Client] = field(default_factory=list)
    expiry: Cancellable | None = None
    expires_at: float | None = None
    refuse_next_vmotion: bool = False
    last_output: float | None = None  # hub clock of the VM's latest output
    counters: Counters = field(default_factory=Counters)
    # Client -> VM bytes held (vMotion, congestion, or no VM): see `hold`.
    _hold: Bounded | None = None

    @property
    def hold(self) -> Bounded:
        """The held keystrokes' queue, built on first use: most consoles never hold
        anything, and an empty `Bounded` is 56 bytes each.  Use
        `held` and `hold_dropped` to read without building it."""
        if self._hold is None:
            self._hold = Bounded(self.hold_limit)
        return self._hold

    @property
    def held(self) -> int:
        """Bytes in the hold queue."""
        return 0 if self._hold is None else len(self._hold)

    @property
    def hold_dropped(self) -> int:
        """Held bytes dropped at the ceiling so far."""
        return 0 if self._hold is None else self._hold.dropped

    @property
    def display_name(self) -> str:
        """vSPC.py's NAME_LABEL form (NAME_URI in multi-console mode)."""
        return f"{self.name}_{self.key.label}" if self.key.label else self.name

    @property
    def tag(self) -> str:
        """How log lines name the console: `NAME (shortkey)`, the name safe-rendered
        and the key cut to the UUID's first 8 hex digits (docs/operations.md)."""
        return _tag(self.display_name, self.key.uuid)

    @property
    def phase(self) -> Phase:
        return Phase.NORMAL if self.migration is None else self.migration.phase

    @property
    def connected(self) -> bool:
        """A VM connection is bound (including a source mid-vMotion)."""
        return self.vm is not None or self.migration is not None

    def lock_holder(self) -> Client | None:
        """The client holding an exclusive or write lock, if any."""
        for client in self.clients:
            if client.mode in (LockMode.EXCLUSIVE, LockMode.WRITE):
                return client
        return None
