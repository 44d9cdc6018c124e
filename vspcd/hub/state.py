"""The hub's shared state and the primitives every part of its policy uses.

`HubState` holds what the `Hub` (vspcd/hub/hub.py) owns: the consoles by key and by
telnet port, the live vMotion cookies, the open VM connections, the observers and
output listeners, the injected clock, timer scheduler, secret factory and port
allocator.  Its methods are the steps the policy modules (binding.py, migration.py,
clients.py) share: report an event, tell clients, fan VM output out, release held
input, follow the VM's flow control, and arm or run a console's expiry timer.  Each
console's creation, idleness and removal is also reported to the console caps
(vspcd/hub/quota.py), and a forgotten console makes room when a cap or the telnet
ports run out (`make_room`; docs/security.md, "Resource bounds").

Pure: no asyncio, sockets or files (docs/architecture.md, "The parts").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vspc.common import vmware as vm
from vspc.common.admin import ErrorCode
from vspc.common.telnet import escape
from vspc.vspcd.hub.audit import (
    Actor,
    AuditAction,
    AuditObserver,
    AuditRecord,
    AuditResult,
)
from vspc.vspcd.hub.console import (
    Cancellable,
    Client,
    Console,
    ConsoleKey,
    Scrollback,
    VmConn,
)
from vspc.vspcd.hub.events import ConsoleExpired, HubEvent, Observer
from vspc.vspcd.hub.quota import ConsoleQuota
from vspc.vspcd.hub.ratelog import BurstLog, NoticeGate, Throttles
from vspc.vspcd.hub.selectors import ConsoleRef

# Every hub module logs under the one name the hub has always used, so that log
# configurations and filters naming it keep working after the split.
log = logging.getLogger("vspc.vspcd.hub.hub")

__all__ = [
    "HubError",
    "HubSettings",
    "HubState",
    "OutputListener",
    "InputListener",
    "PortAllocator",
    "Tap",
    "host_of",
    "log",
    "tag",
]

Tap = Callable[[bytes], None]
OutputListener = Callable[[Console, bytes], None]
InputListener = Callable[[Console, Client, bytes], None]  # typed bytes, accepted for the VM


class PortAllocator(Protocol):
    """Binds and releases per-VM telnet listeners (vspcd/net/listeners.py PortBinder).

    `bind`'s `previous` is the port the console had before access rules closed it
    (vspcd/hub/telnetport.py): reopened on it if possible."""

    def bind(self, key: ConsoleKey, previous: int | None = None) -> int | None: ...
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
    # Tell console clients what happens in `[vspcd: ...]` lines (docs/admin-protocol.md).
    notices: bool = True
    # Console caps (vspcd/hub/quota.py; docs/security.md, "Resource bounds"): per
    # source address and in all; 0 = no cap.  The service sizes `console_limit`
    # from the fd limit.
    consoles_per_host: int = 2048
    console_limit: int = 0


def tag(console: Console) -> str:
    """How log lines name a console."""
    return console.tag


def host_of(peer: str) -> str:
    """The address part of a `host:port` / `[v6]:port` peer name."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    return peer.rpartition(":")[0] or peer


class HubState:
    """The registries and injected services behind one `Hub`, with the shared steps."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        ports: PortAllocator | None,
        secret_factory: Callable[[], bytes],
        telnet_allowed: Callable[[ConsoleRef], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.call_later = call_later
        self.ports = ports
        # Which consoles may have a telnet port (`telnet = false`; vspcd/hub/telnetport.py).
        self.telnet_allowed = telnet_allowed
        self.secret = secret_factory
        self.consoles: dict[ConsoleKey, Console] = {}
        self.by_port: dict[int, Console] = {}
        self.cookies: dict[bytes, Console] = {}
        self.vms: set[VmConn] = set()
        self.observers: list[Observer] = []
        # Audit observers (vspcd/hub/audit.py) and the Unix time their records carry.
        self.auditors: list[AuditObserver] = []
        self.wall_clock: Callable[[], float] = time.time
        self.taps: dict[ConsoleKey, list[Tap]] = {}
        self.output_listeners: list[OutputListener] = []
        self.input_listeners: list[InputListener] = []
        self.next_client = 0
        # Clients attached to any console, kept as a count because the server asks for
        # `connection_count()` on every accept: summing over every console there made
        # accepting N VMs O(N^2) (docs/benchmarks.md, "Before and after this work").
        self.client_count = 0
        self.idle_waiters: list[Callable[[], None]] = []
        # One INFO line per vMotion up to a burst, then a count (vspcd/hub/ratelog.py).
        self.vmotion_log = BurstLog(log, "vMotions completed", clock=clock, call_later=call_later)
        # Warnings a hostile peer can repeat at will (refused claims, stray PEERs):
        # one line per period and kind plus a count; the notices they cause on
        # operators' screens: one per period, kind and console.
        self.warnings = Throttles(log, clock=clock, call_later=call_later)
        self.notices = NoticeGate(clock)
        # Consoles per source address and in all, idle ones oldest first.
        self.quota = ConsoleQuota(clock=clock, call_later=call_later)

    # ------------------------------------------------------------------ reporting

    def audit(
        self,
        action: AuditAction,
        actor: Actor,
        console: Console | None = None,
        *,
        denied: str | None = None,
        mode: str = "",
        client: int | None = None,
        name: str = "",
        note: str = "",
    ) -> None:
        """Hand one audit record to every audit observer (`denied`: the reason it was
        refused; `note`: the reason of an allowed one, e.g. the text a kicked client
        was shown; `name`: what the actor named when `console` is None)."""
        if not self.auditors:
            return
        record = AuditRecord(
            self.wall_clock(),
            action,
            actor,
            AuditResult.OK if denied is None else AuditResult.DENIED,
            note if denied is None else denied,
            name if console is None else console.display_name,
            None if console is None else console.key,
            mode,
            client,
        )
        for observer in list(self.auditors):
            try:
                observer(record)
            except Exception:
                log.exception("audit observer failed on %s; removing it", action.value)
                self.auditors.remove(observer)

    def emit(self, event: HubEvent) -> None:
        """Hand `event` to every observer; one that raises is logged and removed."""
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # an observer is a client connection; never let it stop us
                log.exception("observer failed on %s; removing it", type(event).__name__)
                if observer in self.observers:  # it may have unsubscribed itself
                    self.observers.remove(observer)

    def tell(self, console: Console, text: str, *, only: Client | None = None) -> None:
        """One `[vspcd: ...]` line (the channel frames it) for every client of
        `console`, or `only` one, unless notices are off (docs/admin-protocol.md)."""
        if not self.settings.notices:
            return
        for client in console.clients if only is None else (only,):
            if client.notices:
                client.channel.notify(text)

    def tell_once(self, console: Console, kind: str, text: str) -> None:
        """`tell`, at most once per period for this kind and console; the next one
        says how many were held back meanwhile."""
        held = self.notices.admit((kind, console.key))
        if held is not None:
            self.tell(console, f"{text} (and {held} more like it)" if held else text)

    # ------------------------------------------------------------------ consoles

    def new_console(self, key: ConsoleKey, name: str, host: str = "") -> Console:
        """A console made by a VM connection from `host` ("": restored)."""
        now = self.clock()
        console = Console(
            key=key,
            name=name,
            scrollback=Scrollback(self.settings.scrollback),
            hold_limit=self.settings.hold_limit,
            created=now,
        )
        self.consoles[key] = console
        self.quota.added(key, host)
        return console

    def create(self, key: ConsoleKey, conn: VmConn) -> Console:
        """A console for a VM connection's first binding.  Its telnet port is bound
        when it is announced, once its name is known (vspcd/hub/telnetport.py)."""
        name = conn.name or vm.display_uuid(key.uuid)
        return self.new_console(key, name, host_of(conn.channel.peer))

    # ------------------------------------------------------------------ data path

    def output(self, console: Console, data: bytes) -> None:
        """VM output: counted, kept in the scrollback, fanned out to clients and taps."""
        if not data:
            return
        size = len(data)
        console.counters.bytes_from_vm += size
        console.last_output = self.clock()
        console.scrollback.append(data)
        escaped = escape(data)  # once for every telnet client (fan-out shares objects)
        for client in console.clients:
            client.bytes_out += size
            client.channel.console_output(data, escaped)
        taps = self.taps.get(console.key)
        if taps:
            for tap in list(taps):
                tap(data)
        if self.output_listeners:
            for listener in self.output_listeners:
                listener(console, data)

    def send_hold(self, console: Console, conn: VmConn) -> None:
        """Send `console`'s held client input, if any, to `conn`."""
        if console.held:
            data = console.hold.take()
            console.counters.bytes_to_vm += len(data)
            conn.channel.send_console(data)

    def flush_hold(self, console: Console) -> None:
        """Release held input to the active connection unless it must keep waiting
        (mid-vMotion, no VM, or the VM's transport is congested)."""
        vm_conn = console.vm
        if vm_conn is None or console.migration is not None or vm_conn.congested:
            return
        self.send_hold(console, vm_conn)

    def follow_flow_control(self, console: Console, old: VmConn | None) -> None:
        """The active connection changed from `old`: clients follow the new one's state.

        Clients paused for a congested connection must be resumed when it is replaced
        (TV-27, F11), closed, or superseded by COMPLETE, since a transport that goes
        away never calls resume_writing; the console would then never read its clients
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

    # ------------------------------------------------------------------ expiry

    def cancel_expiry(self, console: Console) -> None:
        if console.expiry is not None:
            console.expiry.cancel()
        console.expiry = console.expires_at = None
        self.quota.busy(console.key)

    def maybe_expire(self, console: Console) -> None:
        """Arm the expiry timer once neither a VM nor a client is left (sticky ports)."""
        if console.connected or console.clients:
            self.cancel_expiry(console)
            return
        if console.expiry is not None:
            return
        delay = self.settings.vm_expire_time
        console.expires_at = self.clock() + delay
        console.expiry = self.call_later(delay, lambda: self.expire(console))
        self.quota.idle(console.key)

    def expire(self, console: Console) -> None:
        """Forget an idle console and release its port (the expiry timer fired)."""
        console.expiry = None
        if console.connected or console.clients or self.consoles.get(console.key) is not console:
            console.expires_at = None
            return
        del self.consoles[console.key]
        self.quota.removed(console.key)
        if console.port is not None:
            self.by_port.pop(console.port, None)
            if self.ports is not None:
                self.ports.release(console.port)
        self.taps.pop(console.key, None)
        log.info("%s: console expired", tag(console))
        self.emit(ConsoleExpired(console.key, console.display_name, console.port))

    def make_room(self, key: ConsoleKey, why: str) -> bool:
        """Forget the idle console `key` now (a console cap or the telnet ports ran
        out); False if it is gone or in use."""
        console = self.consoles.get(key)
        if console is None or console.connected or console.clients:
            return False
        self.quota.evictions.log("%s: forgotten early to make room for %s", tag(console), why)
        self.cancel_expiry(console)
        self.expire(console)
        return True

    # ------------------------------------------------------------------ idleness

    def busy(self) -> bool:
        """Any VM or client connection still open."""
        return bool(self.vms) or any(c.clients for c in self.consoles.values())

    def check_idle(self) -> None:
        """Run the `when_idle` callbacks once no connection is left."""
        if self.idle_waiters and not self.busy():
            waiters, self.idle_waiters = self.idle_waiters, []
            for callback in waiters:
                callback()
