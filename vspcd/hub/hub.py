"""The hub: every console, VM connection, client, lock, vMotion cookie and expiry timer.

Pure policy.  Connections reach the hub through the small `VmChannel` and
`ClientChannel` protocols (vspcd/hub/console.py); the clock and a `call_later`-style
scheduler are injected, so every path here is unit-tested without sockets or a loop.
The asyncio adapters in vspcd/net/links.py only translate bytes <-> calls.

Spec: docs/protocol.md §3.5 (port key), §4 (vMotion: §4.3 failure paths F1-F11, §4.4
buffering duties, §4.5 per-port state machine), §6.5 (TV-19, TV-24, TV-26..TV-30,
TV-32); vSPC.py's lock modes (docs/admin-protocol.md).

The `Hub` is the one object the rest of the daemon holds; it owns a `HubState`
(vspcd/hub/state.py: the registries, injected services and shared steps such as
output fan-out and expiry) and dispatches to the policy modules:

- vspcd/hub/binding.py: identification, binding a VM connection to its console
  (TV-27, F11), and the takeover probe (docs/security.md, "Console takeover");
- vspcd/hub/announce.py: announcing a bound connection (`VmConnected`) under the
  VM's name, waiting briefly for VM-NAME;
- vspcd/hub/telnetport.py: opening and closing a console's telnet port as the
  `telnet = false` access rules say, once its name is known (`set_telnet_rule`);
- vspcd/hub/migration.py: the vMotion entry points driven by the table of
  vspcd/hub/vmotion.py (docs/protocol.md §4.5);
- vspcd/hub/clients.py: attaching, lock modes, typed input and its hold;
- vspcd/hub/info.py: console lookup by name and the admin protocol's info records.

Console caps (vspcd/hub/quota.py; docs/security.md, "Resource bounds") are applied
where a console is made (binding.py) and kept up to date by the state's expiry steps.

What stays here: the VM connection's own events (data, congestion, close), which
route to those modules, observers and taps, restored and dropped consoles, and
shutdown.

Every state change is reported to observers as a typed event (vspcd/hub/events.py).
Client -> VM bytes go straight to the active connection unless the console is mid-
vMotion, has no VM, or the VM's transport is congested; then they wait in the
console's bounded hold and, while the VM is congested, clients stop being read, so
input respects the VM's flow control.  VM -> client bytes are escaped once and the
same objects go to every client; a slow client is each link's own business
(vspcd/net/links.py), never the VM's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo, ClientKind, ConsoleInfo
from vspc.common.display import safe
from vspc.common.session import (
    Notice,
    ProxyRequested,
    SessionEvent,
    VmData,
    VmIdentified,
    VmNamed,
)
from vspc.vspcd.hub import announce, binding, clients, info, migration, telnetport
from vspc.vspcd.hub.audit import AuditObserver
from vspc.vspcd.hub.console import (
    Cancellable,
    Client,
    ClientChannel,
    Console,
    ConsoleKey,
    LockMode,
    Role,
    VmChannel,
    VmConn,
)
from vspc.vspcd.hub.events import (
    AbortReason,
    ConsoleAlert,
    ConsoleRestored,
    Observer,
    Severity,
    VmDisconnected,
)
from vspc.vspcd.hub.quota import ConsoleQuota
from vspc.vspcd.hub.selectors import ConsoleRef
from vspc.vspcd.hub.state import (
    HubError,
    HubSettings,
    HubState,
    InputListener,
    OutputListener,
    PortAllocator,
    Tap,
    log,
    tag,
)
from vspc.vspcd.hub.vmotion import Action, Trigger, next_action

__all__ = ["Hub", "HubError", "HubSettings", "Observer", "PortAllocator"]

_VMOTION = (vm.VMotionBegin, vm.VMotionPeer, vm.VMotionComplete, vm.VMotionAbort)


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
        telnet_allowed: Callable[[ConsoleRef], bool] | None = None,
    ) -> None:
        self._st = HubState(
            settings,
            clock=clock,
            call_later=call_later,
            ports=ports,
            secret_factory=secret_factory,
            telnet_allowed=telnet_allowed,
        )
        # Record an action a face judged (clear, kick, break, a denial, a reload): the
        # state's own method, so one signature (vspcd/hub/state.py `HubState.audit`).
        self.audit = self._st.audit

    @property
    def settings(self) -> HubSettings:
        """The hub's settings; assigning new ones (SIGHUP, vspcd/service/reload.py)
        takes effect for every later decision."""
        return self._st.settings

    @settings.setter
    def settings(self, settings: HubSettings) -> None:
        self._st.settings = settings

    def set_telnet_rule(self, allowed: Callable[[ConsoleRef], bool] | None) -> None:
        """Which consoles may have a telnet port (`telnet = false` rules; None: all),
        applied to every console now (SIGHUP): ports the rules now deny are closed,
        their telnet clients disconnected; ports they stopped denying are reopened
        (vspcd/hub/telnetport.py).  A console still waiting to be announced is judged
        when it is."""
        st = self._st
        st.telnet_allowed = allowed
        for console in list(st.consoles.values()):
            if console.vm is None or console.vm.announcing is None:
                telnetport.sync(st, console)

    @property
    def quota(self) -> ConsoleQuota:
        """The console caps' bookkeeping and their aggregated logs (vspcd/hub/quota.py)."""
        return self._st.quota

    @property
    def _cookies(self) -> dict[bytes, Console]:
        """The live vMotion cookies (the churn test checks none is left behind)."""
        return self._st.cookies

    # ================================================================== queries

    def consoles(self) -> Iterator[Console]:
        """Every console, in key order."""
        return iter(sorted(self._st.consoles.values(), key=lambda c: c.key))

    def console(self, key: ConsoleKey) -> Console | None:
        return self._st.consoles.get(key)

    def console_by_port(self, port: int) -> Console | None:
        return self._st.by_port.get(port)

    def find(self, spec: str) -> Console:
        """Resolve an operator's name for a console.

        Accepts the display name (NAME or NAME_LABEL), the VM name, the key string,
        the UUID in any accepted form (docs/protocol.md §3.4), or the telnet port number.

        Raises:
            HubError: `vm_not_found` or `ambiguous_vm`.
        """
        return info.find(self._st, spec)

    def has_cookie(self, cookie: bytes) -> bool:
        """A vMotion of this hub's waits for a PEER with exactly `cookie` (cluster mode:
        a destination landing here needs no registry lookup)."""
        return cookie in self._st.cookies

    def cookie_of(self, key: ConsoleKey) -> bytes | None:
        """The cookie of `key`'s vMotion in flight, if any (cluster mode publishes it)."""
        console = self._st.consoles.get(key)
        mig = None if console is None else console.migration
        return None if mig is None else mig.cookie

    def key_for(self, request: ProxyRequested, uuid: str) -> ConsoleKey:
        """The console a source connection with this DO-PROXY and UUID will bind to."""
        return ConsoleKey(uuid, binding.label(self._st, request))

    def now(self) -> float:
        """The hub's clock (what `since` and expiry times are measured on)."""
        return self._st.clock()

    def client_info(self, client: Client) -> ClientInfo:
        """One client as the admin protocol describes it (`since` on the hub's clock)."""
        return clients.client_info(client)

    def console_info(self, console: Console, *, detail: bool = False) -> ConsoleInfo:
        """One console as a `list` row, or with `detail` the `show` object.

        Rendered to JSON by vspcd/faces/render.py (docs/admin-protocol.md, "Console objects").
        """
        return info.console_info(self._st, console, detail=detail)

    # ================================================================== observers

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer(event)` with a typed event (vspcd/hub/events.py) after every state
        change; returns a function that unsubscribes it.  An observer that raises is
        logged and removed."""
        observers = self._st.observers
        observers.append(observer)
        return lambda: observers.remove(observer) if observer in observers else None

    def tap(self, key: ConsoleKey, tap: Tap) -> Callable[[], None]:
        """Call `tap(bytes)` with every output chunk of one console; returns untap."""
        all_taps = self._st.taps
        taps = all_taps.setdefault(key, [])
        taps.append(tap)

        def untap() -> None:
            if tap in taps:
                taps.remove(tap)
            if not taps and all_taps.get(key) is taps:
                del all_taps[key]

        return untap

    def add_input_listener(self, listener: InputListener) -> Callable[[], None]:
        """Call `listener(console, client, bytes)` with every chunk an operator typed
        that the hub accepted for the VM (input recording); returns a function that
        removes it.  It runs in the input path: it must not block."""
        listeners = self._st.input_listeners
        listeners.append(listener)
        return lambda: listeners.remove(listener) if listener in listeners else None

    def add_output_listener(self, listener: OutputListener) -> Callable[[], None]:
        """Call `listener(console, bytes)` with every output chunk of every console
        (console logs); returns a function that removes it.  Errors are the
        listener's own business: it runs in the VM's data path."""
        listeners = self._st.output_listeners
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def report_alert(
        self,
        console: Console,
        alert: str,
        severity: Severity,
        line: str,
        context: tuple[str, ...],
        when: float,
    ) -> None:
        """Tell every observer that `console` printed a line alert rule `alert`
        matches (vspcd/history/watch.py finds them; `when` is Unix time).  No state
        changes: this is the console-output watchers' way onto the event bus."""
        self._st.emit(
            ConsoleAlert(console.key, console.display_name, alert, severity, line, context, when)
        )

    # ================================================================== VM side

    def vm_connected(self, channel: VmChannel) -> VmConn:
        """A new ESXi connection; returns the record the link passes back later."""
        conn = VmConn(channel, since=self._st.clock())
        self._st.vms.add(conn)
        return conn

    def vm_event(self, conn: VmConn, event: SessionEvent) -> None:
        """One hub-level event from a VM connection's ProxySession."""
        console = conn.console
        challenge = None if console is None else console.challenge
        if challenge is not None and challenge.target is conn:
            self.vm_heard(conn)  # anything it says proves it alive (the link tells too)
        if conn.announcing is not None and isinstance(event, _VMOTION):
            announce.settle(self._st, conn)  # vm_connected before the vMotion's events
        # One dict lookup by exact type rather than a `match` on class patterns: the
        # vMotion commands came last in it, after an isinstance test per earlier case.
        handler = _VM_EVENTS.get(type(event))
        if handler is not None:
            handler(self, conn, event)

    def vm_heard(self, conn: VmConn) -> None:
        """The link read something from `conn` after `probe()`: it is alive.  A
        pending claim on its console is refused."""
        binding.vm_heard(self._st, conn)

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
            self._st.flush_hold(console)

    def vm_closed(self, conn: VmConn) -> None:
        """The ESXi connection is gone (FIN, reset, or we closed it)."""
        try:
            self._vm_closed(conn)
        finally:
            self._st.check_idle()

    def _vm_closed(self, conn: VmConn) -> None:
        st = self._st
        st.vms.discard(conn)
        console, role = conn.console, conn.role
        announce.settle(st, conn)  # vm_connected before vm_disconnected
        conn.role = Role.RETIRED
        if console is None:
            return
        mig = console.migration
        action = next_action(console.phase, Trigger.CLOSED, role)
        if action is Action.UNBIND_DESTINATION and mig is not None and mig.dest is conn:
            # F6: unbind the destination; the cookie and the hold stay for ABORT/PEER.
            log.info(
                "%s: vMotion destination %s closed before COMPLETE",
                tag(console),
                conn.channel.peer,
            )
            mig.dest = None
            mig.dest_output.clear()
            return
        challenge = console.challenge
        if role is Role.CHALLENGER:
            if challenge is not None and challenge.newcomer is conn:
                binding.cancel_challenge(console)
            return
        if role is not Role.ACTIVE or console.vm is not conn:
            return
        console.vm = None
        st.follow_flow_control(console, conn)
        if challenge is not None and challenge.target is conn:
            # The probed connection closed: the claim was right; take over at once.
            st.emit(VmDisconnected(console.key, console.display_name, conn.channel.peer))
            binding.end_challenge(st, console, challenge, probed=False)
            return
        if action is Action.SOURCE_LEFT and mig is not None:
            migration.source_left(st, console, mig)  # F7: normal during a vMotion
            return
        st.emit(VmDisconnected(console.key, console.display_name, conn.channel.peer))
        st.tell(console, f"VM {safe(console.display_name)} disconnected; input is held")
        st.maybe_expire(console)

    def _vm_data(self, conn: VmConn, payload: bytes) -> None:
        st = self._st
        console = conn.console
        if conn.role is Role.ACTIVE and console is not None:
            # The table is consulted only mid-vMotion: plain output is the hot path.
            if (
                console.migration is not None
                and next_action(console.phase, Trigger.DATA, conn.role) is Action.RESUMED
            ):
                # F2 (defensive): a source that talks again has resumed: ABORT.
                log.info("%s: source data during vMotion; treating it as ABORT", tag(console))
                migration.abort(st, console, AbortReason.SOURCE_RESUMED)
            st.output(console, payload)
        elif conn.role is Role.DESTINATION and console is not None:
            mig = console.migration
            action = next_action(console.phase, Trigger.DATA, conn.role)
            if mig is not None and action is Action.HOLD_DESTINATION_OUTPUT:
                mig.dest_output += payload  # released on COMPLETE (§4.4 VM->client 2)
                if len(mig.dest_output) > st.settings.hold_limit:
                    del mig.dest_output[: len(mig.dest_output) - st.settings.hold_limit]
        elif conn.role in (Role.UNBOUND, Role.CHALLENGER):
            over = conn.early.append(payload)
            if over and conn.early.dropped == over:  # once per connection
                log.warning(
                    "VM %s: output before identification overflowed; oldest dropped",
                    conn.channel.peer,
                )
        else:
            log.debug(
                "VM %s: %d bytes from a retired connection dropped", conn.channel.peer, len(payload)
            )

    def refuse_next_vmotion(self, console: Console) -> None:
        """Operator / test hook: answer this console's next BEGIN with NOTNOW (F1)."""
        console.refuse_next_vmotion = True

    # ================================================================== clients

    def may_write(self, client: Client) -> bool:
        """Input from `client` reaches the VM (vSPC.py lock semantics)."""
        return clients.may_write(client)

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
        announce.settle_console(self._st, console)  # vm_connected before client_attached
        return clients.attach(
            self._st,
            console,
            channel,
            kind=kind,
            lock=lock,
            readonly=readonly,
            uid=uid,
            user=user,
            notices=notices,
        )

    def client_input(self, client: Client, data: bytes) -> None:
        """Bytes an operator typed, for the VM."""
        clients.client_input(self._st, client, data)

    def detach(self, client: Client, reason: str | None = None) -> None:
        """The operator's connection closed (or was closed by clear/kick, saying `reason`)."""
        clients.detach(self._st, client, reason)

    def clear(self, console: Console, reason: str) -> int:
        """Disconnect every client of `console`, telling each why; returns how many."""
        return clients.clear(self._st, console, reason)

    def kick(self, ident: int, reason: str) -> Client:
        """Disconnect one client by its id.

        Raises:
            HubError: `not_attached` if no client has that id.
        """
        return clients.kick(self._st, ident, reason)

    def send_break(self, console: Console, who: str) -> None:
        """Send a serial break to the console's VM; its clients are told `who` did.

        Raises:
            HubError: `vm_not_connected`; `busy` during a vMotion (refused, not held).
        """
        clients.send_break(self._st, console, who)

    # ================================================================== audit

    def subscribe_audit(self, observer: AuditObserver) -> Callable[[], None]:
        """Call `observer(record)` for every audit record (vspcd/hub/audit.py);
        returns a function that unsubscribes it.  One that raises is removed."""
        auditors = self._st.auditors
        auditors.append(observer)
        return lambda: auditors.remove(observer) if observer in auditors else None

    @property
    def auditing(self) -> bool:
        """Someone records audit records (callers skip building them otherwise)."""
        return bool(self._st.auditors)

    # ================================================================== console lifetime

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
                the PortAllocator on expiry, or at once if `telnet = false` rules
                deny the console one), or None.
            service_uri: its last serviceURI, for `show`.

        Returns:
            The new console, or the existing one if `key` is already known (then
            nothing changes).
        """
        st = self._st
        console = st.consoles.get(key)
        if console is not None:
            return console
        console = st.new_console(key, name)
        console.service_uri = service_uri
        if port is not None:
            console.port = port
            st.by_port[port] = console
        telnetport.sync(st, console)  # a port the rules deny it is released at once
        st.maybe_expire(console)
        st.emit(ConsoleRestored(key, console.display_name, console.port))
        return console

    def drop(self, console: Console, reason: str) -> None:
        """Forget `console` now, whatever it holds (cluster mode: another node serves
        it).  Its clients are told `reason` and disconnected, its VM connection and
        any vMotion end, its telnet port is released; observers see ConsoleExpired."""
        st = self._st
        if st.consoles.get(console.key) is not console:
            return
        announce.settle_console(st, console)
        if console.migration is not None:
            migration.end_migration(st, console, AbortReason.REPLACED)
        binding.cancel_challenge(console)
        for client in list(console.clients):
            clients.disconnect(st, client, reason)
        vm_conn = console.vm
        if vm_conn is not None:
            console.vm = None
            vm_conn.role = Role.RETIRED
            vm_conn.channel.close()
        st.cancel_expiry(console)
        st.expire(console)

    def reclaim(self, count: int) -> int:
        """Expire up to `count` idle consoles now, soonest-to-expire first (fd pressure)."""
        st = self._st
        idle = sorted(
            (c for c in st.consoles.values() if c.expiry is not None),
            key=lambda c: c.expires_at or 0.0,
        )[:count]
        for console in idle:
            st.cancel_expiry(console)
            st.expire(console)
        return len(idle)

    # ================================================================== shutdown

    def busy(self) -> bool:
        """Any VM or client connection still open (shutdown waits for none)."""
        return self._st.busy()

    def connection_count(self) -> int:
        """Open VM and client connections (for the fd-pressure estimate)."""
        return len(self._st.vms) + self._st.client_count

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` once no connection is left (at once if none is)."""
        if self.busy():
            self._st.idle_waiters.append(callback)
        else:
            callback()

    def close_all(self) -> None:
        """Close every connection (daemon shutdown); timers are cancelled."""
        st = self._st
        for console in list(st.consoles.values()):
            mig = console.migration
            if mig is not None:
                migration.forget(st, console, mig)
            st.cancel_expiry(console)
            binding.cancel_challenge(console)
            for client in list(console.clients):
                client.channel.notify("vspcd is shutting down")
                client.channel.close()
        for conn in list(st.vms):
            announce.settle(st, conn)  # its timer goes with it
            conn.channel.close()


# `Hub.vm_event`'s table: a `SessionEvent`'s exact class (none has subclasses) -> what
# it does.  A class missing here (none today) is ignored, as the `match` it replaces did.
_VM_EVENTS: dict[type, Callable[[Hub, VmConn, Any], None]] = {
    VmData: lambda hub, conn, event: hub._vm_data(conn, event.payload),
    ProxyRequested: lambda hub, conn, event: binding.proxy_requested(hub._st, conn, event),
    VmIdentified: lambda hub, conn, event: binding.identified(hub._st, conn, event.uuid),
    VmNamed: lambda hub, conn, event: announce.named(hub._st, conn, event.name),
    vm.VMotionBegin: lambda hub, conn, event: migration.begin(hub._st, conn, event.sequence),
    vm.VMotionPeer: lambda hub, conn, event: migration.peer(hub._st, conn, event.cookie),
    vm.VMotionComplete: lambda hub, conn, event: migration.complete(hub._st, conn, event.sequence),
    vm.VMotionAbort: lambda hub, conn, event: migration.abort_received(hub._st, conn),
    Notice: lambda hub, conn, event: log.info("VM %s: %s", conn.channel.peer, event.message),
}
