"""The hub: every console, VM connection, client, lock, vMotion cookie and expiry timer.

Pure policy.  Connections reach the hub through the small `VmChannel` and
`ClientChannel` protocols (vspcd/hub/console.py); the clock and a `call_later`-style
scheduler are injected, so every path here is unit-tested without sockets or a loop.
The asyncio adapters in vspcd/net/links.py only translate bytes <-> calls.

Spec: docs/protocol.md §3.5 (port key), §4 (vMotion: §4.3 failure paths F1-F11, §4.4
buffering duties, §4.5 per-port state machine), §6.5 (TV-19, TV-24, TV-26..TV-30,
TV-32); vSPC.py's lock modes (docs/admin-protocol.md).

Theory of operation
-------------------
A *console* is keyed by `ConsoleKey(uuid, label)`.  An ESXi connection starts UNBOUND;
once it has both an accepted DO-PROXY and a VM-VC-UUID it becomes the console's ACTIVE
connection (replacing an older one from the same host: TV-27, F11).  VM output before
that is held in the connection's bounded `early` buffer and released on binding.

vMotion per console (docs/protocol.md §4.5) is the table in vspcd/hub/vmotion.py: each
vMotion entry point here (`_begin`, `_peer`, `_complete`, `_abort_received`, data
and close of a VM connection, the F8 timer, a fresh DO-PROXY) looks up
`(console.phase, trigger, conn.role)` and carries out the action; a missing entry is
F10 (log and ignore).  The checks that depend on data (cookie, sequence, the F1
NOTNOW grounds) stay here.

Takeover (docs/security.md, "Console takeover"): a VM connection from another
address than the console's current one is refused mid-vMotion and otherwise waits
while the current one is probed (`VmChannel.probe`); an answer (`vm_heard`) refuses
it, silence for `takeover_timeout` lets it replace the current one.

Every state change is reported to observers as a typed event (vspcd/hub/events.py).

A cookie (sequence || secret) is looked up by its exact bytes and is single-use: it
dies on COMPLETE, ABORT, a replacing BEGIN, abandonment, or a new DO-PROXY (§4.1).

Client -> VM bytes go straight to the active connection unless the console is mid-
vMotion, has no VM, or the VM's transport is congested; then they wait in the
console's bounded hold (oldest dropped and counted past `hold_limit`) and, while the
VM is congested, clients stop being read, so input respects the VM's flow control.
VM -> client bytes are escaped once and the same objects go to every client; a slow
client is each link's own business (vspcd/net/links.py), never the VM's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo, ClientKind, ConsoleInfo, ErrorCode
from vspc.common.display import safe
from vspc.common.session import (
    Notice,
    ProxyRequested,
    SessionEvent,
    VmData,
    VmIdentified,
    VmNamed,
)
from vspc.common.telnet import escape
from vspc.vspcd.hub.console import (
    Cancellable,
    Challenge,
    Client,
    ClientChannel,
    Console,
    ConsoleKey,
    LockMode,
    Migration,
    Phase,
    Role,
    Scrollback,
    VmChannel,
    VmConn,
)
from vspc.vspcd.hub.events import (
    AbortReason,
    ClientAttached,
    ClientDetached,
    ConsoleCleared,
    ConsoleExpired,
    ConsoleRestored,
    DropReason,
    HubEvent,
    InputDropped,
    LockChanged,
    Observer,
    RefusalReason,
    TakeoverRefused,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VMotionPeered,
    VMotionRefused,
    VmRenamed,
    VmReplaced,
)
from vspc.vspcd.hub.quota import ConsoleQuota
from vspc.vspcd.hub.ratelog import BurstLog
from vspc.vspcd.hub.vmotion import Action, Trigger, next_action

log = logging.getLogger(__name__)

__all__ = ["Hub", "HubError", "HubSettings", "Observer", "PortAllocator"]

Tap = Callable[[bytes], None]
OutputListener = Callable[[Console, bytes], None]


class PortAllocator(Protocol):
    """Binds and releases per-VM telnet listeners (vspcd/net/listeners.py PortBinder)."""

    def bind(self, key: ConsoleKey) -> int | None: ...
    def release(self, port: int) -> None: ...


class HubError(Exception):
    """A request to the hub failed; `code` is the admin-protocol error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class HubSettings:
    """The hub's share of the daemon Config."""

    vm_expire_time: float = 86400.0
    client_limit: int = 0  # 0: unlimited
    multi_console: bool = False
    abandon_time: float = 60.0
    hold_limit: int = 1 << 20
    scrollback: int = 64 * 1024
    # VM-bound bytes still queued above which a BEGIN gets NOTNOW: GOAHEAD must reach
    # the VM within 5000 ms and queues behind them (docs/protocol.md §4.4 duty 2, TV-32).
    vmotion_backlog_limit: int = 256 * 1024
    # How long a VM connection has to answer the liveness probe when a connection from
    # another host claims its console (docs/security.md, "Console takeover"): a VM
    # restarted elsewhere by vSphere HA gets its console back within this.
    takeover_timeout: float = 5.0
    # Tell console clients what happens in `[vspcd: ...]` lines (issue #9 item 2).
    notices: bool = True
    # Console caps (vspcd/hub/quota.py; docs/security.md, "Resource bounds"): per
    # source address and in all; 0 = no cap.  The service sizes `console_limit`
    # from the fd limit.
    consoles_per_host: int = 2048
    console_limit: int = 0


def _tag(console: Console) -> str:
    return console.tag


def _host(peer: str) -> str:
    """The address part of a `host:port` / `[v6]:port` peer name."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    return peer.rpartition(":")[0] or peer


class Hub:
    """Owner of all console state.  One instance per daemon; not thread-safe by design."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        ports: PortAllocator | None = None,
        secret_factory: Callable[[], bytes] = lambda: secrets.token_bytes(8),
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._call_later = call_later
        self._ports = ports
        self._secret = secret_factory
        self._consoles: dict[ConsoleKey, Console] = {}
        self._by_port: dict[int, Console] = {}
        self._cookies: dict[bytes, Console] = {}
        self._vms: set[VmConn] = set()
        self._observers: list[Observer] = []
        self._taps: dict[ConsoleKey, list[Tap]] = {}
        self._output_listeners: list[OutputListener] = []
        self._next_client = 0
        # Clients attached to any console, kept as a count because the server asks for
        # `connection_count()` on every accept: summing over every console there made
        # accepting N VMs O(N^2) (bench/daemon_bench.py, 5,000 VMs: 40% of CPU).
        self._client_count = 0
        self._idle_waiters: list[Callable[[], None]] = []
        # One INFO line per vMotion up to a burst, then a count (issue #12 item 3).
        self._vmotion_log = BurstLog(log, "vMotions completed", clock=clock, call_later=call_later)
        self.quota = ConsoleQuota(clock=clock, call_later=call_later)

    # ================================================================== queries

    def consoles(self) -> Iterator[Console]:
        """Every console, in key order."""
        return iter(sorted(self._consoles.values(), key=lambda c: c.key))

    def console(self, key: ConsoleKey) -> Console | None:
        return self._consoles.get(key)

    def console_by_port(self, port: int) -> Console | None:
        return self._by_port.get(port)

    def find(self, spec: str) -> Console:
        """Resolve an operator's name for a console.

        Accepts the display name (NAME or NAME_LABEL), the VM name, the key string,
        the UUID in any accepted form (docs/protocol.md §3.4), or the telnet port number.

        Raises:
            HubError: `vm_not_found` or `ambiguous_vm`.
        """
        found = [c for c in self._consoles.values() if spec in (c.display_name, str(c.key))]
        if not found:
            try:
                uuid = vm.canonical_uuid(spec)
            except ValueError:
                uuid = None
            if uuid is not None:
                found = [c for c in self._consoles.values() if c.key.uuid == uuid]
                plain = [c for c in found if not c.key.label]
                found = plain or found
        if not found:
            found = [c for c in self._consoles.values() if c.name == spec]
        if not found and spec.isdigit() and (by_port := self._by_port.get(int(spec))):
            found = [by_port]
        if not found:
            raise HubError(ErrorCode.VM_NOT_FOUND, f"no console matches {spec!r}")
        if len(found) > 1:
            names = ", ".join(sorted(c.display_name for c in found))
            raise HubError(ErrorCode.AMBIGUOUS_VM, f"{spec!r} matches several consoles: {names}")
        return found[0]

    def has_cookie(self, cookie: bytes) -> bool:
        """A vMotion of this hub's waits for a PEER with exactly `cookie` (cluster mode:
        a destination landing here needs no registry lookup)."""
        return cookie in self._cookies

    def cookie_of(self, key: ConsoleKey) -> bytes | None:
        """The cookie of `key`'s vMotion in flight, if any (cluster mode publishes it)."""
        console = self._consoles.get(key)
        mig = None if console is None else console.migration
        return None if mig is None else mig.cookie

    def key_for(self, request: ProxyRequested, uuid: str) -> ConsoleKey:
        """The console a source connection with this DO-PROXY and UUID will bind to."""
        return ConsoleKey(uuid, self._label(request))

    def now(self) -> float:
        """The hub's clock (what `since` and expiry times are measured on)."""
        return self._clock()

    def client_info(self, client: Client) -> ClientInfo:
        """One client as the admin protocol describes it (`since` on the hub's clock)."""
        return ClientInfo(
            id=client.ident,
            kind=client.kind,
            peer=client.channel.peer,
            mode=client.mode,
            readonly=not self.may_write(client),
            since=client.since,
            uid=client.uid,
            user=client.user,
            bytes_in=client.bytes_in,
            bytes_out=client.bytes_out,
        )

    def console_info(self, console: Console, *, detail: bool = False) -> ConsoleInfo:
        """One console as a `list` row, or with `detail` the `show` object.

        Rendered to JSON by vspcd/faces/render.py (docs/admin-protocol.md, "Console objects").
        """
        holder = console.lock_holder()
        expires_at = console.expires_at
        counters = console.counters
        return ConsoleInfo(
            key=str(console.key),
            name=console.display_name,
            uuid=vm.display_uuid(console.key.uuid),
            vm_name=console.name,
            label=console.key.label,
            port=console.port,
            connected=console.connected,
            clients=len(console.clients),
            vmotion=console.phase,
            expires_in=None if expires_at is None else max(0.0, expires_at - self._clock()),
            lock=None if holder is None else holder.mode,
            lock_holder=None if holder is None else self.client_info(holder),
            attached=tuple(self.client_info(c) for c in console.clients),
            created=console.created,
            last_output=console.last_output,
            service_uri=console.service_uri if detail else None,
            vm_peer=(None if console.vm is None else console.vm.channel.peer) if detail else None,
            counters={**asdict(counters), "hold_dropped": console.hold_dropped} if detail else None,
        )

    # ================================================================== observers

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer(event)` with a typed event (vspcd/hub/events.py) after every state
        change; returns a function that unsubscribes it.  An observer that raises is
        logged and removed."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def tap(self, key: ConsoleKey, tap: Tap) -> Callable[[], None]:
        """Call `tap(bytes)` with every output chunk of one console; returns untap."""
        taps = self._taps.setdefault(key, [])
        taps.append(tap)

        def untap() -> None:
            if tap in taps:
                taps.remove(tap)
            if not taps and self._taps.get(key) is taps:
                del self._taps[key]

        return untap

    def add_output_listener(self, listener: OutputListener) -> Callable[[], None]:
        """Call `listener(console, bytes)` with every output chunk of every console
        (console logs); returns a function that removes it.  Errors are the
        listener's own business: it runs in the VM's data path."""
        self._output_listeners.append(listener)

        def remove() -> None:
            if listener in self._output_listeners:
                self._output_listeners.remove(listener)

        return remove

    def _emit(self, event: HubEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer is a client connection; never let it stop us
                log.exception("observer failed on %s; removing it", type(event).__name__)
                if observer in self._observers:  # it may have unsubscribed itself
                    self._observers.remove(observer)

    # ================================================================== VM side

    def vm_connected(self, channel: VmChannel) -> VmConn:
        """A new ESXi connection; returns the record the link passes back later."""
        conn = VmConn(channel, since=self._clock())
        self._vms.add(conn)
        return conn

    def vm_event(self, conn: VmConn, event: SessionEvent) -> None:
        """One hub-level event from a VM connection's ProxySession."""
        console = conn.console
        challenge = None if console is None else console.challenge
        if challenge is not None and challenge.target is conn:
            self.vm_heard(conn)  # anything it says proves it alive (the link tells too)
        match event:
            case VmData(payload):
                self._vm_data(conn, payload)
            case ProxyRequested() as request:
                self._proxy_requested(conn, request)
            case VmIdentified(uuid):
                self._identified(conn, uuid)
            case VmNamed(name):
                conn.name = name
                console = conn.console
                if conn.role is Role.ACTIVE and console is not None and console.name != name:
                    # ESXi names the VM just after identifying it, so a new console is
                    # first announced under its UUID; tell subscribers the real name.
                    console.name = name
                    self._emit(VmRenamed(console.key, console.display_name, name))
                if conn.unannounced and console is not None:
                    self._announce(console, conn)
            case vm.VMotionBegin(sequence):
                self._begin(conn, sequence)
            case vm.VMotionPeer(cookie):
                self._peer(conn, cookie)
            case vm.VMotionComplete(sequence):
                self._complete(conn, sequence)
            case vm.VMotionAbort():
                self._abort_received(conn)
            case Notice(message):
                log.info("VM %s: %s", conn.channel.peer, message)

    def vm_congested(self, conn: VmConn, congested: bool) -> None:
        """The VM link's transport crossed its high (True) or low (False) water mark."""
        conn.congested = congested
        console = conn.console
        if console is None or console.vm is not conn:
            return
        for client in console.clients:
            if congested:
                client.channel.pause_reading()
            else:
                client.channel.resume_reading()
        if not congested:
            self._flush_hold(console)

    def _follow_flow_control(self, console: Console, old: VmConn | None) -> None:
        """The active connection changed from `old`: clients follow the new one's state.

        Bug fix: clients paused for a congested connection stayed paused after it was
        replaced (TV-27, F11), closed, or superseded by COMPLETE, since a transport that
        goes away never calls resume_writing; the console then never read its clients
        again ("never wedge", docs/protocol.md §4.3 F8, §4.4 duty 2).
        """
        was = old is not None and old.congested
        now = console.vm is not None and console.vm.congested
        if was == now:
            return
        for client in console.clients:
            if now:
                client.channel.pause_reading()
            else:
                client.channel.resume_reading()

    def vm_closed(self, conn: VmConn) -> None:
        """The ESXi connection is gone (FIN, reset, or we closed it)."""
        try:
            self._vm_closed(conn)
        finally:
            self._check_idle()

    def _vm_closed(self, conn: VmConn) -> None:
        self._vms.discard(conn)
        console, role = conn.console, conn.role
        if conn.unannounced and console is not None:
            self._announce(console, conn)
        conn.role = Role.RETIRED
        if console is None:
            return
        mig = console.migration
        action = next_action(console.phase, Trigger.CLOSED, role)
        if action is Action.UNBIND_DESTINATION and mig is not None and mig.dest is conn:
            # F6: unbind the destination; the cookie and the hold stay for ABORT/PEER.
            log.info(
                "%s: vMotion destination %s closed before COMPLETE",
                _tag(console),
                conn.channel.peer,
            )
            mig.dest = None
            mig.dest_output.clear()
            return
        challenge = console.challenge
        if role is Role.CHALLENGER:
            if challenge is not None and challenge.newcomer is conn:
                challenge.timer.cancel()
                console.challenge = None
            return
        if role is not Role.ACTIVE or console.vm is not conn:
            return
        console.vm = None
        self._follow_flow_control(console, conn)
        if challenge is not None and challenge.target is conn:
            # The probed connection closed: the claim was right; take over at once.
            self._emit(VmDisconnected(console.key, console.display_name, conn.channel.peer))
            self._end_challenge(console, challenge, probed=False)
            return
        if action is Action.SOURCE_LEFT and mig is not None:
            # F7: normal during a vMotion (the source's FIN may precede COMPLETE).
            mig.source_closed = True
            if mig.abandon is None:
                mig.abandon = self._call_later(
                    self.settings.abandon_time, lambda: self._abandon(console, mig)
                )
            return
        self._emit(VmDisconnected(console.key, console.display_name, conn.channel.peer))
        self._tell(console, f"VM {safe(console.display_name)} disconnected; input is held")
        self._maybe_expire(console)

    # -- identification ----------------------------------------------------------------

    def _label(self, request: ProxyRequested) -> str:
        if request.label:
            return request.label
        return request.service_uri if self.settings.multi_console else ""

    def _proxy_requested(self, conn: VmConn, request: ProxyRequested) -> None:
        conn.service_uri = request.service_uri
        conn.label = self._label(request)
        conn.proxy_accepted = request.accepted
        if not request.accepted:
            log.warning(
                "VM %s asked for direction %r, serviceURI %r: refused with WONT-PROXY. "
                "vspcd serves only direction Server: in the VM's serial port settings "
                "choose 'Server' and 'Use Virtual Serial Port Concentrator'.",
                conn.channel.peer,
                request.direction,
                request.service_uri,
            )
            conn.channel.close()
            return
        self._bind_source(conn)

    def _identified(self, conn: VmConn, uuid: str) -> None:
        conn.uuid = uuid
        if conn.role is Role.DESTINATION and conn.console is not None:
            if conn.console.key.uuid != uuid:
                # The cookie stays authoritative (docs/protocol.md §3.5).
                log.warning(
                    "%s: destination %s reports UUID %s",
                    _tag(conn.console),
                    conn.channel.peer,
                    uuid,
                )
            return
        self._bind_source(conn)

    def _bind_source(self, conn: VmConn, *, probed: bool = False) -> None:
        """Make an identified, accepted connection its console's active one, unless the
        takeover policy refuses it or must first probe the current one (`probed`: it
        did not answer)."""
        if conn.role is not Role.UNBOUND or conn.uuid is None or not conn.proxy_accepted:
            return
        key = ConsoleKey(conn.uuid, conn.label or "")
        existing = self._consoles.get(key)
        if existing is not None and not probed and not self._may_take_over(existing, conn):
            return
        if existing is None and not self._admit(key, conn):
            return
        console = existing or self._create(key, conn)
        if next_action(console.phase, Trigger.PROXY, conn.role) is Action.REPLACE:
            # F11: a fresh DO-PROXY for this key from the source's own host is a new VM
            # instance (restart); `_may_take_over` refused one from anywhere else.
            log.info(
                "%s: new connection %s during a vMotion; aborting it",
                _tag(console),
                conn.channel.peer,
            )
            self._end_migration(console, AbortReason.REPLACED)
        old = console.vm
        if old is not None and old is not conn:
            # TV-27: the newest connection wins (same host, or the old one is dead).
            log.warning(
                "%s: VM connection %s replaced by %s (%s)",
                _tag(console),
                old.channel.peer,
                conn.channel.peer,
                "no answer to the liveness probe" if probed else "same host",
            )
            old.role = Role.RETIRED
            old.channel.close()
            self._tell(console, f"VM connection {old.channel.peer} replaced by {conn.channel.peer}")
            self._emit(
                VmReplaced(key, console.display_name, old.channel.peer, conn.channel.peer, probed)
            )
        console.vm = conn
        self._follow_flow_control(console, old)
        console.service_uri = conn.service_uri
        if conn.name:
            console.name = conn.name
        conn.role, conn.console = Role.ACTIVE, console
        console.counters.vm_connects += 1
        self._cancel_expiry(console)
        if old is None:  # a replacement said so already
            self._tell(console, f"VM {safe(console.display_name)} connected")
        if conn.name is None and existing is None:
            # ESXi names a VM just after identifying it: log the first connection
            # once the name is known, so that `grep NAME` finds it (issue #9 item 4).
            conn.unannounced = True
        else:
            self._announce(console, conn)
        if self._observers:
            info = self.console_info(console)
            first = existing is None
            self._emit(VmConnected(key, console.display_name, conn.channel.peer, info, first))
        early = conn.take_early()
        if early:
            self._output(console, early)
        self._flush_hold(console)

    def _announce(self, console: Console, conn: VmConn) -> None:
        conn.unannounced = False
        log.info(
            "%s: VM connected from %s, telnet port %s",
            _tag(console),
            conn.channel.peer,
            console.port,
        )

    # -- takeover (docs/security.md, "Console takeover"; issue #7 item 1) --------------

    def _may_take_over(self, console: Console, conn: VmConn) -> bool:
        """May `conn` become `console`'s VM connection now?  If not, it is refused
        (closed) or becomes the challenger while the current connection is probed."""
        mig = console.migration
        if mig is not None:
            if _host(mig.source.channel.peer) == _host(conn.channel.peer):
                return True  # F11: the VM restarted on the source's host
            self._refuse(console, conn, mig.source.channel.peer, "a vMotion is in progress")
            return False
        old = console.vm
        if old is None or old is conn or _host(old.channel.peer) == _host(conn.channel.peer):
            return True
        if console.challenge is not None:
            self._refuse(console, conn, old.channel.peer, "another claim is being checked")
            return False
        conn.role, conn.console = Role.CHALLENGER, console
        console.challenge = challenge = Challenge(
            conn,
            old,
            self._call_later(
                self.settings.takeover_timeout, lambda: self._probe_expired(console, challenge)
            ),
        )
        log.warning(
            "%s: %s claims it from another host than %s; probing %s for %.0f s",
            _tag(console),
            conn.channel.peer,
            old.channel.peer,
            old.channel.peer,
            self.settings.takeover_timeout,
        )
        old.channel.probe()
        return False

    def _refuse(self, console: Console, conn: VmConn, holder: str, why: str) -> None:
        log.warning(
            "%s: refused VM connection %s claiming it from %s (%s)",
            _tag(console),
            conn.channel.peer,
            holder,
            why,
        )
        conn.role, conn.console = Role.RETIRED, None
        conn.channel.close()
        self._tell(console, f"refused a VM connection from {conn.channel.peer} ({why})")
        self._emit(TakeoverRefused(console.key, console.display_name, conn.channel.peer, holder))

    def vm_heard(self, conn: VmConn) -> None:
        """The link read something from `conn` after `probe()`: it is alive.  A
        pending claim on its console is refused."""
        console = conn.console
        challenge = None if console is None else console.challenge
        if console is None or challenge is None or challenge.target is not conn:
            return
        challenge.timer.cancel()
        console.challenge = None
        self._refuse(
            console, challenge.newcomer, conn.channel.peer, "the VM connection answered the probe"
        )

    def _probe_expired(self, console: Console, challenge: Challenge) -> None:
        if console.challenge is not challenge:
            return
        self._end_challenge(console, challenge, probed=True)

    def _end_challenge(self, console: Console, challenge: Challenge, *, probed: bool) -> None:
        """The probed connection is dead or gone: the challenger takes the console."""
        challenge.timer.cancel()
        console.challenge = None
        newcomer = challenge.newcomer
        if newcomer.role is Role.CHALLENGER:
            newcomer.role, newcomer.console = Role.UNBOUND, None
            self._bind_source(newcomer, probed=probed)

    def restore(
        self, key: ConsoleKey, name: str, port: int | None, service_uri: str | None
    ) -> Console:
        """Recreate a console remembered from an earlier run (vspcd/history/persist.py).

        It starts disconnected, with its expiry timer armed as if its last VM had just
        left; a VM that connects with the same key takes it over, port and all.

        Args:
            key: the console's key.
            name: its last known VM name.
            port: a telnet port the caller has already bound for it (released through
                the PortAllocator on expiry), or None.
            service_uri: its last serviceURI, for `show`.

        Returns:
            The new console, or the existing one if `key` is already known (then
            nothing changes).
        """
        console = self._consoles.get(key)
        if console is not None:
            return console
        console = self._new_console(key, name)
        console.service_uri = service_uri
        if port is not None:
            console.port = port
            self._by_port[port] = console
        self._maybe_expire(console)
        self._emit(ConsoleRestored(key, console.display_name, port))
        return console

    def _admit(self, key: ConsoleKey, conn: VmConn) -> bool:
        """The console caps (vspcd/hub/quota.py): make room by forgetting the oldest
        idle console, or refuse (close) `conn`."""
        host = _host(conn.channel.peer)
        settings = self.settings
        verdict = self.quota.admit(
            host, per_host=settings.consoles_per_host, total=settings.console_limit
        )
        if verdict.evict is not None:
            self._make_room(verdict.evict, f"a new console from {host}")
        elif verdict.refused is not None:
            self.quota.refusals.log(
                "new console %s from %s refused: %s", key, conn.channel.peer, verdict.refused
            )
            conn.role = Role.RETIRED
            conn.channel.close()
            return False
        return True

    def _make_room(self, key: ConsoleKey, why: str) -> bool:
        """Forget the idle console `key` now (a cap or the telnet ports ran out)."""
        console = self._consoles.get(key)
        if console is None or console.connected or console.clients:
            return False
        self.quota.evictions.log("%s: forgotten early to make room for %s", _tag(console), why)
        self._cancel_expiry(console)
        self._expire(console)
        return True

    def _new_console(self, key: ConsoleKey, name: str, host: str = "") -> Console:
        now = self._clock()
        console = Console(
            key=key,
            name=name,
            scrollback=Scrollback(self.settings.scrollback),
            hold_limit=self.settings.hold_limit,
            created=now,
        )
        self._consoles[key] = console
        self.quota.added(key, host)
        return console

    def _create(self, key: ConsoleKey, conn: VmConn) -> Console:
        host = _host(conn.channel.peer)
        console = self._new_console(key, conn.name or vm.display_uuid(key.uuid), host)
        if self._ports is not None:
            console.port = self._ports.bind(key)
            # Out of telnet ports (or fds): forgotten consoles give theirs back,
            # oldest first, before a live VM goes without (docs/security.md).
            while console.port is None and (oldest := self.quota.oldest_idle()) is not None:
                if not self._make_room(oldest, f"{_tag(console)} (no free telnet port)"):
                    break
                console.port = self._ports.bind(key)
            if console.port is None:
                log.error("%s: no free telnet port to bind", _tag(console))
            else:
                self._by_port[console.port] = console
        return console

    # -- data ------------------------------------------------------------------------------

    def _vm_data(self, conn: VmConn, payload: bytes) -> None:
        console = conn.console
        if conn.unannounced and console is not None:
            self._announce(console, conn)  # it talks before naming itself
        if conn.role is Role.ACTIVE and console is not None:
            # The table is consulted only mid-vMotion: plain output is the hot path.
            if (
                console.migration is not None
                and next_action(console.phase, Trigger.DATA, conn.role) is Action.RESUMED
            ):
                # F2 (defensive): a source that talks again has resumed: ABORT.
                log.info("%s: source data during vMotion; treating it as ABORT", _tag(console))
                self._abort(console, AbortReason.SOURCE_RESUMED)
            self._output(console, payload)
        elif conn.role is Role.DESTINATION and console is not None:
            mig = console.migration
            action = next_action(console.phase, Trigger.DATA, conn.role)
            if mig is not None and action is Action.HOLD_DESTINATION_OUTPUT:
                mig.dest_output += payload  # released on COMPLETE (§4.4 VM->client 2)
                if len(mig.dest_output) > self.settings.hold_limit:
                    del mig.dest_output[: len(mig.dest_output) - self.settings.hold_limit]
        elif conn.role in (Role.UNBOUND, Role.CHALLENGER):
            over = conn.early.append(payload)
            if over and conn.early.dropped == over:  # once per connection (issue #7, 6)
                log.warning(
                    "VM %s: output before identification overflowed; oldest dropped",
                    conn.channel.peer,
                )
        else:
            log.debug(
                "VM %s: %d bytes from a retired connection dropped", conn.channel.peer, len(payload)
            )

    def _output(self, console: Console, data: bytes) -> None:
        if not data:
            return
        size = len(data)
        console.counters.bytes_from_vm += size
        console.last_output = self._clock()
        console.scrollback.append(data)
        escaped = escape(data)  # once for every telnet client (fan-out shares objects)
        for client in console.clients:
            client.bytes_out += size
            client.channel.console_output(data, escaped)
        taps = self._taps.get(console.key)
        if taps:
            for tap in list(taps):
                tap(data)
        if self._output_listeners:
            for listener in self._output_listeners:
                listener(console, data)

    def _flush_hold(self, console: Console) -> None:
        vm_conn = console.vm
        if vm_conn is None or console.migration is not None or vm_conn.congested:
            return
        if console.held:
            data = console.hold.take()
            console.counters.bytes_to_vm += len(data)
            vm_conn.channel.send_console(data)

    # -- vMotion ----------------------------------------------------------------------------

    def refuse_next_vmotion(self, console: Console) -> None:
        """Operator / test hook: answer this console's next BEGIN with NOTNOW (F1)."""
        console.refuse_next_vmotion = True

    def _begin(self, conn: VmConn, sequence: bytes) -> None:
        console = conn.console
        phase = Phase.NORMAL if console is None else console.phase
        action = next_action(phase, Trigger.BEGIN, conn.role)
        if action is Action.NOTNOW or console is None:
            log.info("VM %s: BEGIN on a connection that is not active; NOTNOW", conn.channel.peer)
            conn.channel.notnow(sequence)
            return
        if action is Action.REBEGIN:
            # F9: a second BEGIN implicitly aborts the first; then answer this one.
            self._abort(console, AbortReason.NEW_BEGIN)
        refusal = None
        backlog = conn.channel.write_backlog() + console.held
        if console.refuse_next_vmotion:
            console.refuse_next_vmotion = False
            refusal = VMotionRefused(console.key, console.display_name, RefusalReason.OPERATOR)
        elif backlog > self.settings.vmotion_backlog_limit:
            refusal = VMotionRefused(
                console.key, console.display_name, RefusalReason.BACKLOG, backlog
            )
        if refusal is not None:
            console.counters.vmotion_refusals += 1
            log.info("%s: vMotion refused (NOTNOW): %s", _tag(console), refusal.text)
            conn.channel.notnow(sequence)
            self._emit(refusal)
            return
        # Duty 1: every byte queued for the source precedes GOAHEAD on the wire.
        if console.held:
            data = console.hold.take()
            console.counters.bytes_to_vm += len(data)
            conn.channel.send_console(data)
        secret = self._secret()
        mig = Migration(
            source=conn, sequence=sequence, cookie=sequence + secret, since=self._clock()
        )
        console.migration = mig
        self._cookies[mig.cookie] = console
        conn.channel.goahead(sequence, secret)
        # DEBUG: the outcome (complete, abort, abandoned) gets the INFO line, so a
        # datacenter-wide evacuation logs one line per vMotion, not two.
        log.debug("%s: vMotion begins from %s", _tag(console), conn.channel.peer)
        self._emit(VMotionBegun(console.key, console.display_name, conn.channel.peer))

    def _peer(self, conn: VmConn, cookie: bytes) -> None:
        console = self._cookies.get(cookie)
        mig = console.migration if console is not None else None
        if console is None or mig is None:
            log.warning(
                "VM %s: PEER with an unknown or stale cookie; no PEER-OK (F5)", conn.channel.peer
            )
            return
        action = next_action(console.phase, Trigger.PEER, conn.role)
        if action is Action.IGNORE:
            log.warning("VM %s: PEER on a connection already in use; ignored", conn.channel.peer)
            return
        if action is Action.SECOND_PEER and mig.dest is not None:
            log.warning(
                "%s: second PEER from %s while %s is bound; ignored (TV-19)",
                _tag(console),
                conn.channel.peer,
                mig.dest.channel.peer,
            )
            return
        mig.dest = conn
        conn.role, conn.console = Role.DESTINATION, console
        mig.dest_output += conn.take_early()
        if conn.uuid is not None and conn.uuid != console.key.uuid:
            log.warning(
                "%s: destination %s reports UUID %s", _tag(console), conn.channel.peer, conn.uuid
            )
        conn.channel.peer_ok(mig.sequence)
        self._emit(VMotionPeered(console.key, console.display_name, conn.channel.peer))

    def _complete(self, conn: VmConn, sequence: bytes) -> None:
        console = conn.console
        mig = console.migration if console is not None else None
        if (
            console is None
            or mig is None
            or next_action(console.phase, Trigger.COMPLETE, conn.role) is not Action.COMPLETE
            or mig.dest is not conn
            or mig.sequence != sequence
        ):
            log.warning("VM %s: stray COMPLETE ignored (F10)", conn.channel.peer)
            return
        self._forget(console, mig)
        source = mig.source
        if source.role is Role.ACTIVE:
            source.role = Role.RETIRED
            if not mig.source_closed:
                source.channel.close()  # ESXi closes it anyway; anything more is stale
        conn.role = Role.ACTIVE
        conn.service_uri, conn.label = source.service_uri, source.label
        old, console.vm = console.vm, conn
        self._follow_flow_control(console, old)
        if conn.name:
            console.name = conn.name
        console.counters.vmotions += 1
        self._vmotion_log.log(  # INFO, aggregated in a storm (vspcd/hub/ratelog.py)
            "%s: vMotion complete, %s -> %s", _tag(console), source.channel.peer, conn.channel.peer
        )
        self._emit(
            VMotionCompleted(
                console.key, console.display_name, conn.channel.peer, source.channel.peer
            )
        )
        self._tell(console, f"vMotion done: VM now connected from {conn.channel.peer}")
        # §4.2 steps 3-4: held client input to the destination, once, at once; then
        # the destination's own early output.
        self._flush_hold(console)
        self._output(console, bytes(mig.dest_output))

    def _abort_received(self, conn: VmConn) -> None:
        console = conn.console
        mig = console.migration if console is not None else None
        if (
            console is None
            or mig is None
            or next_action(console.phase, Trigger.ABORT, conn.role) is not Action.ABORT
            or mig.source is not conn
        ):
            # TV-24 / TV-30: ABORT counts only on the BEGIN connection.
            log.warning("VM %s: stray ABORT ignored (F10)", conn.channel.peer)
            return
        self._abort(console, AbortReason.SOURCE_ABORTED)

    def _abort(self, console: Console, reason: AbortReason) -> None:
        """F2/F3/F9: end the migration; the source keeps the port and gets the hold."""
        self._end_migration(console, reason)
        console.counters.vmotion_aborts += 1
        self._flush_hold(console)

    def _abandon(self, console: Console, mig: Migration) -> None:
        """F8: the source left and no COMPLETE came within the grace period."""
        if console.migration is not mig:
            return
        if next_action(console.phase, Trigger.ABANDON, mig.source.role) is not Action.ABANDON:
            return  # cannot happen: the timer is armed only once the source has left
        mig.abandon = None
        log.warning(
            "%s: vMotion abandoned after %.0f s; port kept, input held",
            _tag(console),
            self.settings.abandon_time,
        )
        self._end_migration(console, AbortReason.ABANDONED)
        self._emit(VmDisconnected(console.key, console.display_name, mig.source.channel.peer))
        self._tell(console, f"VM {safe(console.display_name)} disconnected (vMotion abandoned)")
        self._maybe_expire(console)

    def _end_migration(self, console: Console, reason: AbortReason) -> None:
        mig = console.migration
        if mig is None:
            return
        self._forget(console, mig)
        if mig.dest is not None:
            mig.dest.role = Role.RETIRED
            mig.dest.channel.close()
        log.info("%s: vMotion ended: %s", _tag(console), reason.value)
        self._emit(VMotionAborted(console.key, console.display_name, reason))

    def _forget(self, console: Console, mig: Migration) -> None:
        console.migration = None
        self._cookies.pop(mig.cookie, None)
        if mig.abandon is not None:
            mig.abandon.cancel()
            mig.abandon = None

    # ================================================================== clients

    def _tell(self, console: Console, text: str, *, only: Client | None = None) -> None:
        """One `[vspcd: ...]` line (the channel frames it) for every client of
        `console`, or `only` one, unless notices are off (issue #9 item 2)."""
        if not self.settings.notices:
            return
        for client in console.clients if only is None else (only,):
            if client.notices:
                client.channel.notify(text)

    def _who(self, client: Client) -> str:
        return f"client {client.ident} ({safe(client.user or client.channel.peer)})"

    def may_write(self, client: Client) -> bool:
        """Input from `client` reaches the VM (vSPC.py lock semantics)."""
        if client.readonly:
            return False
        holder = client.console.lock_holder()
        return holder is None or holder is client

    def attach(
        self,
        console: Console,
        channel: ClientChannel,
        *,
        kind: ClientKind | str,
        lock: LockMode = LockMode.FREE_FOR_ALL_OR_READONLY,
        readonly: bool = False,
        uid: int | None = None,
        user: str | None = None,
        notices: bool = True,
    ) -> Client:
        """Attach an operator to a console (`notices=False`: no status lines for it).

        Raises:
            HubError: `client_limit` when the console is full, `lock_failed` when the
                requested mode conflicts with a held lock or with attached clients.
        """
        limit = self.settings.client_limit
        if limit and len(console.clients) >= limit:
            raise HubError(
                ErrorCode.CLIENT_LIMIT, f"{console.display_name} already has {limit} client(s)"
            )
        holder = console.lock_holder()
        if holder is not None and holder.mode is LockMode.EXCLUSIVE:
            raise HubError(ErrorCode.LOCK_FAILED, f"{console.display_name} is locked exclusively")
        if lock is LockMode.EXCLUSIVE and console.clients:
            raise HubError(
                ErrorCode.LOCK_FAILED,
                f"{console.display_name} has other clients; exclusive refused",
            )
        # A read-only free_for_all joins read-only under a write lock, as the
        # default mode does (docs/admin-protocol.md, "Lock modes" table).
        if lock in (LockMode.WRITE, LockMode.FREE_FOR_ALL) and holder is not None and not readonly:
            raise HubError(
                ErrorCode.LOCK_FAILED, f"{console.display_name} is write-locked by another client"
            )
        self._next_client += 1
        client = Client(
            channel=channel,
            console=console,
            kind=ClientKind(kind),
            mode=lock,
            readonly=readonly,
            since=self._clock(),
            uid=uid,
            user=user,
            ident=self._next_client,
            notices=notices,
        )
        console.clients.append(client)
        self._client_count += 1
        self._cancel_expiry(console)
        log.info(
            "%s: %s client %s attached (%s%s, uid %s)",
            _tag(console),
            kind,
            channel.peer,
            lock.value,
            ", read-only" if readonly else "",
            uid,
        )
        if self._observers:
            name = console.display_name
            self._emit(ClientAttached(console.key, name, self.client_info(client)))
            if lock in (LockMode.EXCLUSIVE, LockMode.WRITE):
                self._emit(LockChanged(console.key, name, lock, client.ident))
        vm_conn = console.vm
        if vm_conn is not None and vm_conn.congested:
            channel.pause_reading()
        if not console.connected:
            self._tell(console, "VM not connected; input is held until it is", only=client)
        return client

    def client_input(self, client: Client, data: bytes) -> None:
        """Bytes an operator typed, for the VM."""
        console = client.console
        if not data or client not in console.clients:
            return
        if not self.may_write(client):
            console.counters.input_dropped += len(data)
            holder = None if client.readonly else console.lock_holder()
            lock_id = 0 if holder is None else holder.ident
            if client.told_dropped != lock_id:
                client.told_dropped = lock_id
                if holder is None:
                    self._tell(console, "input dropped: you attached read-only", only=client)
                else:
                    self._tell(
                        console,
                        f"input dropped: {holder.mode.value} lock held by {self._who(holder)}",
                        only=client,
                    )
            if self._observers:
                reason = DropReason.READONLY if holder is None else DropReason.LOCKED
                self._emit(
                    InputDropped(console.key, console.display_name, client.ident, len(data), reason)
                )
            return
        client.bytes_in += len(data)
        vm_conn = console.vm
        if (
            vm_conn is not None
            and console.migration is None
            and not vm_conn.congested
            and not console.held
        ):
            console.counters.bytes_to_vm += len(data)
            vm_conn.channel.send_console(data)  # the common case: straight through
            return
        dropped = console.hold.append(data)
        if dropped:
            console.counters.input_dropped += dropped
            log.warning(
                "%s: held input over %d bytes; %d oldest bytes dropped",
                _tag(console),
                console.hold.limit,
                dropped,
            )
            self._emit(
                InputDropped(console.key, console.display_name, None, dropped, DropReason.HOLD_FULL)
            )

    def detach(self, client: Client, reason: str | None = None) -> None:
        """The operator's connection closed (or was closed by clear/kick, saying `reason`)."""
        console = client.console
        if client not in console.clients:
            return
        had_lock = client is console.lock_holder()
        info = self.client_info(client) if self._observers else None
        console.clients.remove(client)
        self._client_count -= 1
        log.info("%s: %s client %s detached", _tag(console), client.kind, client.channel.peer)
        if info is not None:
            self._emit(ClientDetached(console.key, console.display_name, info, reason))
            if had_lock:
                self._emit(LockChanged(console.key, console.display_name, None, None))
        if had_lock:
            self._tell(console, f"{client.mode.value} lock released by {self._who(client)}")
        self._maybe_expire(console)
        self._check_idle()

    def clear(self, console: Console, reason: str) -> int:
        """Disconnect every client of `console`, telling each why; returns how many."""
        clients = list(console.clients)
        for client in clients:
            client.channel.notify(reason)
            client.channel.close()
            self.detach(client, reason)
        self._emit(ConsoleCleared(console.key, console.display_name, len(clients), reason))
        return len(clients)

    def kick(self, ident: int, reason: str) -> Client:
        """Disconnect one client by its id.

        Raises:
            HubError: `not_attached` if no client has that id.
        """
        for console in self._consoles.values():
            for client in console.clients:
                if client.ident == ident:
                    client.channel.notify(reason)
                    client.channel.close()
                    self.detach(client, reason)
                    return client
        raise HubError(ErrorCode.NOT_ATTACHED, f"no client with id {ident}")

    # ================================================================== expiry

    def _cancel_expiry(self, console: Console) -> None:
        if console.expiry is not None:
            console.expiry.cancel()
        console.expiry = console.expires_at = None
        self.quota.busy(console.key)

    def _maybe_expire(self, console: Console) -> None:
        """Arm the expiry timer once neither a VM nor a client is left (sticky ports)."""
        if console.connected or console.clients:
            self._cancel_expiry(console)
            return
        if console.expiry is not None:
            return
        delay = self.settings.vm_expire_time
        console.expires_at = self._clock() + delay
        console.expiry = self._call_later(delay, lambda: self._expire(console))
        self.quota.idle(console.key)

    def _expire(self, console: Console) -> None:
        console.expiry = None
        if console.connected or console.clients or self._consoles.get(console.key) is not console:
            console.expires_at = None
            return
        del self._consoles[console.key]
        self.quota.removed(console.key)
        if console.port is not None:
            self._by_port.pop(console.port, None)
            if self._ports is not None:
                self._ports.release(console.port)
        self._taps.pop(console.key, None)
        log.info("%s: console expired", _tag(console))
        self._emit(ConsoleExpired(console.key, console.display_name, console.port))

    def drop(self, console: Console, reason: str) -> None:
        """Forget `console` now, whatever it holds (cluster mode: another node serves
        it).  Its clients are told `reason` and disconnected, its VM connection and
        any vMotion end, its telnet port is released; observers see ConsoleExpired."""
        if self._consoles.get(console.key) is not console:
            return
        if console.migration is not None:
            self._end_migration(console, AbortReason.REPLACED)
        if console.challenge is not None:
            console.challenge.timer.cancel()
            console.challenge = None
        for client in list(console.clients):
            client.channel.notify(reason)
            client.channel.close()
            self.detach(client, reason)
        vm_conn = console.vm
        if vm_conn is not None:
            console.vm = None
            vm_conn.role = Role.RETIRED
            vm_conn.channel.close()
        self._cancel_expiry(console)
        self._expire(console)

    def reclaim(self, count: int) -> int:
        """Expire up to `count` idle consoles now, soonest-to-expire first (fd pressure)."""
        idle = sorted(
            (c for c in self._consoles.values() if c.expiry is not None),
            key=lambda c: c.expires_at or 0.0,
        )[:count]
        for console in idle:
            self._cancel_expiry(console)
            self._expire(console)
        return len(idle)

    # ================================================================== shutdown

    def busy(self) -> bool:
        """Any VM or client connection still open (shutdown waits for none)."""
        return bool(self._vms) or any(c.clients for c in self._consoles.values())

    def connection_count(self) -> int:
        """Open VM and client connections (for the fd-pressure estimate)."""
        return len(self._vms) + self._client_count

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no connection is left (at once if none is)."""
        if self.busy():
            self._idle_waiters.append(callback)
        else:
            callback()

    def _check_idle(self) -> None:
        if self._idle_waiters and not self.busy():
            waiters, self._idle_waiters = self._idle_waiters, []
            for callback in waiters:
                callback()

    def close_all(self) -> None:
        """Close every connection (daemon shutdown); timers are cancelled."""
        for console in list(self._consoles.values()):
            mig = console.migration
            if mig is not None:
                self._forget(console, mig)
            self._cancel_expiry(console)
            if console.challenge is not None:
                console.challenge.timer.cancel()
                console.challenge = None
            for client in list(console.clients):
                client.channel.notify("vspcd is shutting down")
                client.channel.close()
        for conn in list(self._vms):
            conn.channel.close()
