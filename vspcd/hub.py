"""The hub: every console, VM connection, client, lock, vMotion cookie and expiry timer.

Pure policy.  Connections reach the hub through the small `VmChannel` and
`ClientChannel` protocols (vspcd/console.py); the clock and a `call_later`-style
scheduler are injected, so every path here is unit-tested without sockets or a loop.
The asyncio adapters in vspcd/links.py only translate bytes <-> calls.

Spec: PROTOCOL.md §3.5 (port key), §4 (vMotion: §4.3 failure paths F1-F11, §4.4
buffering duties, §4.5 per-port state machine), §6.5 (TV-19, TV-24, TV-26..TV-30,
TV-32); vSPC.py's lock modes (docs/admin-protocol.md).

Theory of operation
-------------------
A *console* is keyed by `ConsoleKey(uuid, label)`.  An ESXi connection starts UNBOUND;
once it has both an accepted DO-PROXY and a VM-VC-UUID it becomes the console's ACTIVE
connection (replacing any older one: TV-27, F11).  VM output before that is held in
the connection's bounded `early` buffer and released on binding.

vMotion per console (PROTOCOL.md §4.5):

    NORMAL(active) --BEGIN, can go--> PENDING(source)   [GOAHEAD; client input held]
    NORMAL         --BEGIN, cannot--> NORMAL            [NOTNOW, nothing else changes]
    PENDING --PEER(cookie) on a new connection--> PEERED(source, dest)   [PEER-OK]
    PEERED  --COMPLETE(seq) on dest--> NORMAL(dest)     [hold -> dest, once]
    PEERED  --dest closes (F6)--> PENDING               [cookie and hold kept]
    PENDING|PEERED --ABORT on source, or source data (F2/F3)--> NORMAL(source)
    PENDING|PEERED --BEGIN on source (F9)--> implicit abort, then answer the BEGIN
    PENDING|PEERED --source closes (F7)--> abandon timer armed; COMPLETE still wins
    abandon timer (F8) --> NORMAL(no VM); hold kept for the next connection
    anything else (F10) --> logged and ignored

A cookie (sequence || secret) is looked up by its exact bytes and is single-use: it
dies on COMPLETE, ABORT, a replacing BEGIN, abandonment, or a new DO-PROXY (§4.1).

Client -> VM bytes go straight to the active connection unless the console is mid-
vMotion, has no VM, or the VM's transport is congested; then they wait in the
console's bounded hold (oldest dropped and counted past `hold_limit`) and, while the
VM is congested, clients stop being read, so input respects the VM's flow control.
VM -> client bytes are escaped once and the same objects go to every client; a slow
client is each link's own business (vspcd/links.py), never the VM's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from vspc.common import vmware as vm
from vspc.common.session import (
    Notice,
    ProxyRequested,
    SessionEvent,
    VmData,
    VmIdentified,
    VmNamed,
)
from vspc.common.telnet import escape
from vspc.vspcd.console import (
    Bounded,
    Cancellable,
    Client,
    ClientChannel,
    Console,
    ConsoleKey,
    LockMode,
    Migration,
    Role,
    Scrollback,
    VmChannel,
    VmConn,
)

log = logging.getLogger(__name__)

__all__ = ["Hub", "HubError", "HubSettings", "PortAllocator"]

Observer = Callable[[str, dict[str, Any]], None]
Tap = Callable[[bytes], None]
OutputListener = Callable[[Console, bytes], None]


class PortAllocator(Protocol):
    """Binds and releases per-VM telnet listeners (vspcd/listeners.py PortBinder)."""

    def bind(self, key: ConsoleKey) -> int | None: ...
    def release(self, port: int) -> None: ...


class HubError(Exception):
    """A request to the hub failed; `code` is an admin-protocol error code."""

    def __init__(self, code: str, message: str) -> None:
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
    # the VM within 5000 ms and queues behind them (PROTOCOL.md §4.4 duty 2, TV-32).
    vmotion_backlog_limit: int = 256 * 1024


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
        the UUID in any accepted form (PROTOCOL.md §3.4), or the telnet port number.

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
            raise HubError("vm_not_found", f"no console matches {spec!r}")
        if len(found) > 1:
            names = ", ".join(sorted(c.display_name for c in found))
            raise HubError("ambiguous_vm", f"{spec!r} matches several consoles: {names}")
        return found[0]

    def describe(self, console: Console) -> dict[str, Any]:
        """The `list` row for one console (docs/admin-protocol.md)."""
        holder = console.lock_holder()
        now = self._clock()
        return {
            "name": console.display_name,
            "vm_name": console.name,
            "uuid": vm.display_uuid(console.key.uuid),
            "key": str(console.key),
            "label": console.key.label,
            "port": console.port,
            "connected": console.connected,
            "clients": len(console.clients),
            "vmotion": console.phase.value,
            "expires_in": (
                None if console.expires_at is None else max(0.0, console.expires_at - now)
            ),
            "lock": None if holder is None else holder.mode.value,
            "lock_holder": None if holder is None else self._client_row(holder),
        }

    def client_rows(self, console: Console) -> list[dict[str, Any]]:
        return [self._client_row(c) for c in console.clients]

    def list_row(self, console: Console) -> dict[str, Any]:
        """`describe` plus `attached`: the admin protocol's `list` row."""
        return {**self.describe(console), "attached": self.client_rows(console)}

    def show(self, console: Console) -> dict[str, Any]:
        """The `show` reply's console object: a list row plus URI, VM peer and counters."""
        counters = console.counters
        return {
            **self.list_row(console),
            "service_uri": console.service_uri,
            "vm_peer": None if console.vm is None else console.vm.channel.peer,
            "counters": {
                "bytes_from_vm": counters.bytes_from_vm,
                "bytes_to_vm": counters.bytes_to_vm,
                "vmotions": counters.vmotions,
                "vmotion_aborts": counters.vmotion_aborts,
                "vmotion_refusals": counters.vmotion_refusals,
                "input_dropped": counters.input_dropped,
                "vm_connects": counters.vm_connects,
            },
        }

    def now(self) -> float:
        """The hub's clock (what `since` and expiry times are measured on)."""
        return self._clock()

    def _client_row(self, client: Client) -> dict[str, Any]:
        return {
            "id": client.ident,
            "kind": client.kind,
            "peer": client.channel.peer,
            "uid": client.uid,
            "user": client.user,
            "mode": client.mode.value,
            "readonly": not self.may_write(client),
            "since": client.since,
        }

    # ================================================================== observers

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer(event_name, fields)` on every state change; returns unsubscribe."""
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

    def _emit(self, event: str, console: Console | None = None, /, **fields: Any) -> None:
        if not self._observers:
            return
        if console is not None:
            fields = {"name": console.display_name, "key": str(console.key), **fields}
        for observer in list(self._observers):
            try:
                observer(event, fields)
            except Exception:  # an observer is a client connection; never let it stop us
                log.exception("observer failed on %s; removing it", event)
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
                    self._emit("vm_renamed", console, vm_name=name)
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
        again ("never wedge", PROTOCOL.md §4.3 F8, §4.4 duty 2).
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
        conn.role = Role.RETIRED
        if console is None:
            return
        mig = console.migration
        if role is Role.DESTINATION and mig is not None and mig.dest is conn:
            # F6: unbind the destination; the cookie and the hold stay for ABORT/PEER.
            log.info(
                "%s: vMotion destination %s closed before COMPLETE", console.key, conn.channel.peer
            )
            mig.dest = None
            mig.dest_output.clear()
            return
        if role is not Role.ACTIVE or console.vm is not conn:
            return
        console.vm = None
        self._follow_flow_control(console, conn)
        if mig is not None and mig.source is conn:
            # F7: normal during a vMotion (the source's FIN may precede COMPLETE).
            mig.source_closed = True
            if mig.abandon is None:
                mig.abandon = self._call_later(
                    self.settings.abandon_time, lambda: self._abandon(console, mig)
                )
            return
        self._emit("vm_disconnected", console, peer=conn.channel.peer)
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
                # The cookie stays authoritative (PROTOCOL.md §3.5).
                log.warning(
                    "%s: destination %s reports UUID %s", conn.console.key, conn.channel.peer, uuid
                )
            return
        self._bind_source(conn)

    def _bind_source(self, conn: VmConn) -> None:
        """Make an identified, accepted connection its console's active one."""
        if conn.role is not Role.UNBOUND or conn.uuid is None or not conn.proxy_accepted:
            return
        key = ConsoleKey(conn.uuid, conn.label or "")
        console = self._consoles.get(key) or self._create(key, conn)
        if console.migration is not None:
            # F11: a fresh DO-PROXY for this key is a new VM instance (restart, HA).
            log.info("%s: new connection %s during a vMotion; aborting it", key, conn.channel.peer)
            self._end_migration(console, "replaced")
        old = console.vm
        if old is not None and old is not conn:
            # TV-27: the newest connection wins; the old one is retired and closed.
            log.info("%s: %s replaces %s", key, conn.channel.peer, old.channel.peer)
            old.role = Role.RETIRED
            old.channel.close()
        console.vm = conn
        self._follow_flow_control(console, old)
        console.service_uri = conn.service_uri
        if conn.name:
            console.name = conn.name
        conn.role, conn.console = Role.ACTIVE, console
        console.counters.vm_connects += 1
        self._cancel_expiry(console)
        log.info(
            "%s: VM %s connected from %s, telnet port %s",
            key,
            console.display_name,
            conn.channel.peer,
            console.port,
        )
        self._emit("vm_connected", console, peer=conn.channel.peer, console=self.list_row(console))
        if len(conn.early):
            self._output(console, conn.early.take())
        self._flush_hold(console)

    def restore(
        self, key: ConsoleKey, name: str, port: int | None, service_uri: str | None
    ) -> Console:
        """Recreate a console remembered from an earlier run (vspcd/persist.py).

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
        return console

    def _new_console(self, key: ConsoleKey, name: str) -> Console:
        now = self._clock()
        console = Console(
            key=key,
            name=name,
            scrollback=Scrollback(self.settings.scrollback),
            hold=Bounded(self.settings.hold_limit),
            created=now,
            last_activity=now,
        )
        self._consoles[key] = console
        return console

    def _create(self, key: ConsoleKey, conn: VmConn) -> Console:
        console = self._new_console(key, conn.name or vm.display_uuid(key.uuid))
        if self._ports is not None:
            console.port = self._ports.bind(key)
            if console.port is None:
                log.error("%s: no free telnet port to bind", key)
            else:
                self._by_port[console.port] = console
        return console

    # -- data ------------------------------------------------------------------------------

    def _vm_data(self, conn: VmConn, payload: bytes) -> None:
        console = conn.console
        if conn.role is Role.ACTIVE and console is not None:
            mig = console.migration
            if mig is not None and mig.source is conn:
                # F2 (defensive): a source that talks again has resumed; treat as ABORT.
                log.info("%s: source data during vMotion; treating it as ABORT", console.key)
                self._abort(console, "source resumed")
            self._output(console, payload)
        elif conn.role is Role.DESTINATION and console is not None:
            mig = console.migration
            if mig is not None:
                mig.dest_output += payload  # released on COMPLETE (§4.4 VM->client 2)
                if len(mig.dest_output) > self.settings.hold_limit:
                    del mig.dest_output[: len(mig.dest_output) - self.settings.hold_limit]
        elif conn.role is Role.UNBOUND:
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
        console.counters.bytes_from_vm += len(data)
        console.scrollback.append(data)
        escaped = escape(data)  # once for every telnet client (fan-out shares objects)
        for client in console.clients:
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
        if len(console.hold):
            data = console.hold.take()
            console.counters.bytes_to_vm += len(data)
            vm_conn.channel.send_console(data)

    # -- vMotion ----------------------------------------------------------------------------

    def refuse_next_vmotion(self, console: Console) -> None:
        """Operator / test hook: answer this console's next BEGIN with NOTNOW (F1)."""
        console.refuse_next_vmotion = True

    def _begin(self, conn: VmConn, sequence: bytes) -> None:
        console = conn.console
        if conn.role is not Role.ACTIVE or console is None:
            log.info("VM %s: BEGIN on a connection that is not active; NOTNOW", conn.channel.peer)
            conn.channel.notnow(sequence)
            return
        if console.migration is not None:
            # F9: a second BEGIN implicitly aborts the first; then answer this one.
            self._abort(console, "new BEGIN")
        reason = None
        backlog = conn.channel.write_backlog() + len(console.hold)
        if console.refuse_next_vmotion:
            console.refuse_next_vmotion = False
            reason = "refused by operator"
        elif backlog > self.settings.vmotion_backlog_limit:
            reason = f"{backlog} VM-bound bytes still queued"
        if reason is not None:
            console.counters.vmotion_refusals += 1
            log.info("%s: vMotion refused (NOTNOW): %s", console.key, reason)
            conn.channel.notnow(sequence)
            self._emit("vmotion_notnow", console, reason=reason)
            return
        # Duty 1: every byte queued for the source precedes GOAHEAD on the wire.
        if len(console.hold):
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
        log.debug("%s: vMotion begins from %s", console.key, conn.channel.peer)
        self._emit("vmotion_begin", console, peer=conn.channel.peer)

    def _peer(self, conn: VmConn, cookie: bytes) -> None:
        console = self._cookies.get(cookie)
        mig = console.migration if console is not None else None
        if console is None or mig is None:
            log.warning(
                "VM %s: PEER with an unknown or stale cookie; no PEER-OK (F5)", conn.channel.peer
            )
            return
        if conn.role is not Role.UNBOUND:
            log.warning("VM %s: PEER on a connection already in use; ignored", conn.channel.peer)
            return
        if mig.dest is not None:
            log.warning(
                "%s: second PEER from %s while %s is bound; ignored (TV-19)",
                console.key,
                conn.channel.peer,
                mig.dest.channel.peer,
            )
            return
        mig.dest = conn
        conn.role, conn.console = Role.DESTINATION, console
        if len(conn.early):
            mig.dest_output += conn.early.take()
        if conn.uuid is not None and conn.uuid != console.key.uuid:
            log.warning(
                "%s: destination %s reports UUID %s", console.key, conn.channel.peer, conn.uuid
            )
        conn.channel.peer_ok(mig.sequence)
        self._emit("vmotion_peer", console, peer=conn.channel.peer)

    def _complete(self, conn: VmConn, sequence: bytes) -> None:
        console = conn.console
        mig = console.migration if console is not None else None
        if (
            console is None
            or mig is None
            or conn.role is not Role.DESTINATION
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
        log.info(
            "%s: vMotion complete, %s -> %s", console.key, source.channel.peer, conn.channel.peer
        )
        self._emit("vmotion_complete", console, peer=conn.channel.peer)
        # §4.2 steps 3-4: held client input to the destination, once, at once; then
        # the destination's own early output.
        self._flush_hold(console)
        self._output(console, bytes(mig.dest_output))

    def _abort_received(self, conn: VmConn) -> None:
        console = conn.console
        mig = console.migration if console is not None else None
        if console is None or mig is None or mig.source is not conn:
            # TV-24 / TV-30: ABORT counts only on the BEGIN connection.
            log.warning("VM %s: stray ABORT ignored (F10)", conn.channel.peer)
            return
        self._abort(console, "aborted by the source")

    def _abort(self, console: Console, reason: str) -> None:
        """F2/F3/F9: end the migration; the source keeps the port and gets the hold."""
        self._end_migration(console, reason)
        console.counters.vmotion_aborts += 1
        self._flush_hold(console)

    def _abandon(self, console: Console, mig: Migration) -> None:
        """F8: the source left and no COMPLETE came within the grace period."""
        if console.migration is not mig:
            return
        mig.abandon = None
        log.warning(
            "%s: vMotion abandoned after %.0f s; port kept, input held",
            console.key,
            self.settings.abandon_time,
        )
        self._end_migration(console, "abandoned")
        self._emit("vm_disconnected", console, peer=mig.source.channel.peer)
        self._maybe_expire(console)

    def _end_migration(self, console: Console, reason: str) -> None:
        mig = console.migration
        if mig is None:
            return
        self._forget(console, mig)
        if mig.dest is not None:
            mig.dest.role = Role.RETIRED
            mig.dest.channel.close()
        log.info("%s: vMotion ended: %s", console.key, reason)
        self._emit("vmotion_abort", console, reason=reason)

    def _forget(self, console: Console, mig: Migration) -> None:
        console.migration = None
        self._cookies.pop(mig.cookie, None)
        if mig.abandon is not None:
            mig.abandon.cancel()
            mig.abandon = None

    # ================================================================== clients

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
        kind: str,
        lock: LockMode = LockMode.FREE_FOR_ALL_OR_READONLY,
        readonly: bool = False,
        uid: int | None = None,
        user: str | None = None,
    ) -> Client:
        """Attach an operator to a console.

        Raises:
            HubError: `client_limit` when the console is full, `lock_failed` when the
                requested mode conflicts with a held lock or with attached clients.
        """
        limit = self.settings.client_limit
        if limit and len(console.clients) >= limit:
            raise HubError("client_limit", f"{console.display_name} already has {limit} client(s)")
        holder = console.lock_holder()
        if holder is not None and holder.mode is LockMode.EXCLUSIVE:
            raise HubError("lock_failed", f"{console.display_name} is locked exclusively")
        if lock is LockMode.EXCLUSIVE and console.clients:
            raise HubError(
                "lock_failed", f"{console.display_name} has other clients; exclusive refused"
            )
        # A read-only free_for_all joins read-only under a write lock, as the
        # default mode does (docs/admin-protocol.md, "Lock modes" table).
        if lock in (LockMode.WRITE, LockMode.FREE_FOR_ALL) and holder is not None and not readonly:
            raise HubError(
                "lock_failed", f"{console.display_name} is write-locked by another client"
            )
        self._next_client += 1
        client = Client(
            channel=channel,
            console=console,
            kind=kind,
            mode=lock,
            readonly=readonly,
            since=self._clock(),
            uid=uid,
            user=user,
            ident=self._next_client,
        )
        console.clients.append(client)
        self._client_count += 1
        self._cancel_expiry(console)
        log.info(
            "%s: %s client %s attached (%s%s, uid %s)",
            console.key,
            kind,
            channel.peer,
            lock.value,
            ", read-only" if readonly else "",
            uid,
        )
        self._emit("client_attached", console, client=self._client_row(client))
        if lock in (LockMode.EXCLUSIVE, LockMode.WRITE):
            self._emit("lock_changed", console, lock=lock.value, holder=client.ident)
        vm_conn = console.vm
        if vm_conn is not None and vm_conn.congested:
            channel.pause_reading()
        return client

    def client_input(self, client: Client, data: bytes) -> None:
        """Bytes an operator typed, for the VM."""
        console = client.console
        if not data or client not in console.clients:
            return
        if not self.may_write(client):
            console.counters.input_dropped += len(data)
            return
        client.bytes_in += len(data)
        vm_conn = console.vm
        if (
            vm_conn is not None
            and console.migration is None
            and not vm_conn.congested
            and not len(console.hold)
        ):
            console.counters.bytes_to_vm += len(data)
            vm_conn.channel.send_console(data)  # the common case: straight through
            return
        dropped = console.hold.append(data)
        if dropped:
            console.counters.input_dropped += dropped
            log.warning(
                "%s: held input over %d bytes; %d oldest bytes dropped",
                console.key,
                console.hold.limit,
                dropped,
            )

    def detach(self, client: Client, reason: str | None = None) -> None:
        """The operator's connection closed (or was closed by clear/kick, saying `reason`)."""
        console = client.console
        if client not in console.clients:
            return
        had_lock = client is console.lock_holder()
        console.clients.remove(client)
        self._client_count -= 1
        log.info("%s: %s client %s detached", console.key, client.kind, client.channel.peer)
        self._emit("client_detached", console, client=client.ident, reason=reason)
        if had_lock:
            self._emit("lock_changed", console, lock=None, holder=None)
        self._maybe_expire(console)
        self._check_idle()

    def clear(self, console: Console, reason: str) -> int:
        """Disconnect every client of `console`, telling each why; returns how many."""
        clients = list(console.clients)
        for client in clients:
            client.channel.notify(reason)
            client.channel.close()
            self.detach(client, reason)
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
        raise HubError("not_attached", f"no client with id {ident}")

    # ================================================================== expiry

    def _cancel_expiry(self, console: Console) -> None:
        if console.expiry is not None:
            console.expiry.cancel()
        console.expiry = console.expires_at = None

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

    def _expire(self, console: Console) -> None:
        console.expiry = None
        if console.connected or console.clients or self._consoles.get(console.key) is not console:
            console.expires_at = None
            return
        del self._consoles[console.key]
        if console.port is not None:
            self._by_port.pop(console.port, None)
            if self._ports is not None:
                self._ports.release(console.port)
        self._taps.pop(console.key, None)
        log.info("%s: console %s expired", console.key, console.display_name)
        self._emit("vm_expired", console, port=console.port)

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
            for client in list(console.clients):
                client.channel.notify("vspcd is shutting down")
                client.channel.close()
        for conn in list(self._vms):
            conn.channel.close()
