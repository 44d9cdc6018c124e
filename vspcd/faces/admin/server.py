"""The admin server: its listeners, its connections, and the hub-event fan-out.

One `AdminServer` per daemon owns the admin socket (and the optional TCP port), the
set of open `AdminLink`s (vspcd/faces/admin/link.py) with the connection limits that
keep root and the daemon's own user able to get in (docs/security.md), and one hub
observer that turns hub events into event lines (vspcd/faces/render.py), encoded once
and handed to every link.  Spec: docs/admin-protocol.md.

Boundary: what it needs of the daemon's configuration comes as `AdminSettings`,
which vspcd/service builds from its `Config`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from vspc.common.admin import Request, Stats, encode_message
from vspc.vspcd.faces import render
from vspc.vspcd.faces.admin import limits as limits_module
from vspc.vspcd.faces.admin.access import Gate
from vspc.vspcd.faces.admin.limits import Limits
from vspc.vspcd.faces.admin.link import AdminLink
from vspc.vspcd.faces.admin.policy import DEFAULT_POLICY, AccessPolicy, Source
from vspc.vspcd.history.grep import LogPlace
from vspc.vspcd.history.watch import AlertBook
from vspc.vspcd.hub.audit import AuditRecord
from vspc.vspcd.hub.events import ConsoleExpired, HubEvent
from vspc.vspcd.hub.hub import Hub
from vspc.vspcd.hub.ratelog import throttled
from vspc.vspcd.net.listeners import AdminSocket, Listener, bind_tcp, start_admin_socket

log = logging.getLogger(__package__)  # one logger for the admin server

__all__ = ["SHUTDOWN_GRACE", "AdminServer", "AdminSettings", "RemoteRequests"]

SHUTDOWN_GRACE = 2.0  # seconds stop() waits for closing connections before aborting


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """What the admin server takes from the daemon's configuration
    (docs/operations.md: --admin-socket*, --admin-port, --readonly-group, ...)."""

    socket: Path  # --admin-socket
    socket_mode: int  # --admin-socket-mode
    socket_group: str | None  # --admin-socket-group
    port: int | None  # --admin-port (None: no TCP listener)
    iface: str  # --admin-iface
    readonly_group: str | None  # --readonly-group
    client_queue: int  # the attach channel's slow-reader limit (--client-queue)
    idle_timeout: float  # --admin-idle-timeout (0 = never)
    per_peer: int  # --admin-per-peer
    # access_default and [[access]] (vspcd/faces/admin/policy.py, docs/security.md)
    access: AccessPolicy = field(default=DEFAULT_POLICY)


class RemoteRequests(Protocol):
    """Cluster mode (vspcd/cluster/forward.py): requests another node must answer.

    `takes` returns True if it will answer `request` itself, later, through
    `link.remote_done(reply)`; the link reads no further request until then, so
    replies stay in request order."""

    def takes(self, link: AdminLink, request: Request) -> bool: ...


class AdminServer:
    """The admin listeners, their connections, and the hub-event fan-out.

    Args:
        hub: the daemon's hub.
        settings: the listeners, the access rules and read-only group, the attach
            channel's queue and the two configurable limits.  `settings` may be
            replaced later (a reload): the queue applies to new connections then, the
            access rules and the read-only group to every connection at once
            (`AdminLink.access_changed`).
        limits: per-connection limits (default `limits.DEFAULT_LIMITS`).
    """

    def __init__(self, hub: Hub, settings: AdminSettings, *, limits: Limits | None = None) -> None:
        self.hub = hub
        self._settings = settings
        self.own_uid = os.geteuid()
        self.gate = Gate.build(settings.access, settings.readonly_group, self.own_uid)
        self.limits = replace(
            limits or limits_module.DEFAULT_LIMITS,
            idle_timeout=settings.idle_timeout,
            per_peer=settings.per_peer,
        )
        self.tcp_port: int | None = None
        self._links: set[AdminLink] = set()
        # Open links per peer (uid or host), oldest first, with when each was admitted.
        self._per_peer: dict[object, dict[AdminLink, float]] = {}
        # Links from delegates (`delegates`): their own pool, not the shared one.
        self._delegated: dict[AdminLink, object] = {}  # link -> its delegate's peer key
        self._socket: AdminSocket | None = None
        self._tcp: Listener | None = None
        loop = asyncio.get_running_loop()
        self.refused = throttled(
            log, "admin connections refused", clock=loop.time, call_later=loop.call_later
        )
        self.evictions = throttled(
            log,
            "idle admin connections dropped for newcomers",
            clock=loop.time,
            call_later=loop.call_later,
            level=logging.INFO,
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_audit: Callable[[], None] | None = None
        # The metrics registry's snapshot (vspcd/faces/metrics.py), set by the daemon.
        self.stats: Callable[[], Stats] | None = None
        self.epoch = 0.0  # Unix time minus hub time: `since` is Unix time on the wire
        self.remote: RemoteRequests | None = None  # cluster mode
        # Console watch (docs/operations.md "Console alerts", "Searching console
        # history"), set by the daemon: the alerts `alerts` lists, where `grep` finds
        # console logs, and how buffered log output is written first.
        self.alerts: AlertBook | None = None
        self.log_place: LogPlace | None = None
        self.flush_logs: Callable[[], None] | None = None
        self.cluster_node_id = ""  # cluster mode: this node's --node-id
        self._stopping = False

    @property
    def settings(self) -> AdminSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: AdminSettings) -> None:
        """A reload: new access rules apply to every open connection now."""
        old, self._settings = self._settings, settings
        if (old.access, old.readonly_group) == (settings.access, settings.readonly_group):
            return
        self.gate = Gate.build(
            settings.access, settings.readonly_group, self.own_uid, self.gate.generation + 1
        )
        for link in list(self._links):
            try:
                link.access_changed()
            except Exception:
                log.exception("admin %s: applying new access rules failed; closing", link.identity)
                link.abort()

    @property
    def connections(self) -> frozenset[AdminLink]:
        """The admin connections currently open."""
        return frozenset(self._links)

    async def start(self) -> None:
        """Open the admin socket (and the TCP port if configured).

        Raises:
            OSError: a listener cannot be created (AdminSocketError included).
            KeyError: --admin-socket-group names no group.
        """
        settings = self.settings
        self.epoch = time.time() - self.hub.now()
        self._unsubscribe = self.hub.subscribe(self._on_hub_event)
        self._unsubscribe_audit = self.hub.subscribe_audit(self._on_audit)
        try:
            self._socket = await start_admin_socket(
                settings.socket,
                lambda: AdminLink(self, unix=True),
                mode=settings.socket_mode,
                group=settings.socket_group,
            )
            if settings.port is not None:
                try:
                    sock = bind_tcp(settings.iface, settings.port)
                except OSError as exc:  # name the address: several listeners may clash
                    why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
                    where = f"{settings.iface}:{settings.port}"
                    raise OSError(f"cannot bind {where}: {why.lower()} (the admin port)") from None
                self.tcp_port = sock.getsockname()[1]
                # The proxy port's accept loop (EMFILE back-off, one log line).
                self._tcp = Listener(
                    sock, lambda: AdminLink(self, unix=False), asyncio.get_running_loop()
                )
                self._tcp.start()
                log.warning(
                    "admin TCP port %s:%d is open: its peers are unauthenticated, get full "
                    "access and bypass the admin socket's permissions",
                    settings.iface,
                    self.tcp_port,
                )
        except BaseException:
            self._close_listeners()
            self._hub_unsubscribe()
            raise

    async def stop(self) -> None:
        """Close the listeners, tell every connection we are stopping, close them."""
        self._stopping = True
        self._close_listeners()
        for link in list(self._links):
            link.shutdown()
        waiting = [link.closed for link in self._links if link.closed is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=SHUTDOWN_GRACE)
        for link in list(self._links):
            log.info("admin %s: still open at shutdown; dropping it", link.identity)
            link.abort()
        self._hub_unsubscribe()

    def _hub_unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unsubscribe_audit is not None:
            self._unsubscribe_audit()
            self._unsubscribe_audit = None

    def _close_listeners(self) -> None:
        # Not awaiting wait_closed(): from Python 3.12 on it also waits for every open
        # connection, which stop() bounds itself.
        if self._socket is not None:
            self._socket.close()
        if self._tcp is not None:
            self._tcp.close()

    # -- connections ----------------------------------------------------------------------

    def admit(self, link: AdminLink) -> str | None:
        """Count a new connection in; or say why not (stopping, or a limit reached).

        Root and the daemon's own uid may fill every slot; other peers stop
        `reserved` slots earlier and at `per_peer` connections each (docs/security.md).
        At the shared limit a newcomer takes the place of an idle connection (not
        subscribed, not tailing, open `limits.evict_after` seconds) of the peer
        holding the most, if that peer holds more than the newcomer's: a few
        addresses holding idle connections cannot keep everyone else out.
        """
        limits = self.limits
        if self._stopping:
            return "vspcd is shutting down"
        if self._is_delegate(link):
            return self._admit_delegate(link)
        total = len(self._links) - len(self._delegated)
        if total >= limits.connections and not self._evict_for(link.peer_key):
            return f"too many admin connections ({total} open)"
        if not link.privileged:
            mine = len(self._per_peer.get(link.peer_key, ()))
            if mine >= limits.per_peer:
                return f"too many admin connections from this peer ({mine} open)"
            total = len(self._links) - len(self._delegated)
            if total >= limits.connections - limits.reserved and not self._evict_for(link.peer_key):
                return f"too many admin connections ({total} open, the rest reserved)"
        self._links.add(link)
        self._per_peer.setdefault(link.peer_key, {})[link] = self.hub.now()
        return None

    def _is_delegate(self, link: AdminLink) -> bool:
        me = link.identity
        return (
            not link.privileged
            and me.source is Source.UNIX
            and me.uid is not None
            and me.uid in self.gate.policy.delegates
        )

    def _admit_delegate(self, link: AdminLink) -> str | None:
        """A delegate's connection: its own pool of `delegate_connections`, apart from
        the shared one, so many browser users neither crowd out operators nor are
        crowded out by them."""
        held = sum(1 for key in self._delegated.values() if key == link.peer_key)
        if held >= self.limits.delegate_connections:
            return f"too many admin connections from this delegate ({held} open)"
        self._links.add(link)
        self._delegated[link] = link.peer_key
        self._per_peer.setdefault(link.peer_key, {})[link] = self.hub.now()
        return None

    def delegated(self, link: AdminLink, uid: int) -> str | None:
        """`link`'s delegate now acts for the user `uid` (`hello` with `as_user`):
        count it against that user's `per_peer`, not the delegate's; or say why not."""
        if link not in self._delegated:
            return None  # privileged, or admitted before `delegates` named its peer
        key = ("as_user", uid)
        mine = len(self._per_peer.get(key, ()))
        if mine >= self.limits.per_peer:
            return f"too many admin connections for this user ({mine} open)"
        self._unkey(link)
        link.peer_key = key
        self._per_peer.setdefault(key, {})[link] = self.hub.now()
        return None

    def _unkey(self, link: AdminLink) -> None:
        held = self._per_peer[link.peer_key]
        del held[link]
        if not held:
            del self._per_peer[link.peer_key]

    def _evict_for(self, key: object) -> bool:
        """Drop the oldest idle link of the heaviest other peer; False if none is."""
        mine = len(self._per_peer.get(key, ()))
        cutoff = self.hub.now() - self.limits.evict_after
        for peer in sorted(self._per_peer, key=lambda p: len(self._per_peer[p]), reverse=True):
            held = self._per_peer[peer]
            if len(held) <= mine + 1:
                return False  # nobody holds more than the newcomer's peer would
            for victim, since in held.items():
                if since > cutoff:
                    break  # the rest were admitted later still
                if victim.privileged or victim.subscribed or victim.tails:
                    continue
                if victim in self._delegated:  # another pool
                    continue
                self.evictions.log(
                    "admin %s: idle connection dropped for a newcomer (%d open from it)",
                    victim.identity,
                    len(held),
                )
                self.forget(victim)
                victim.abort()
                return True
        return False

    def forget(self, link: AdminLink) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self._delegated.pop(link, None)
        self._unkey(link)

    # -- rows and events ------------------------------------------------------------------

    def console_rows(self, link: AdminLink | None = None) -> list[dict[str, Any]]:
        """Every console's `list` row, sorted by key; with `link`, only the consoles
        its peer may watch."""
        hub, epoch = self.hub, self.epoch
        return [
            render.console_row(hub.console_info(c), epoch)
            for c in hub.consoles()
            if link is None or link.may_see(c)
        ]

    def _on_audit(self, record: AuditRecord) -> None:
        # An audit observer: must not raise (the hub would drop it).
        if not any(link.subscribed for link in self._links):
            return
        try:
            line = encode_message(render.audit_message(record))
        except Exception:
            log.exception("admin: cannot encode an audit record")
            return
        for link in list(self._links):
            try:
                link.audit_event(record, line)
            except Exception:
                log.exception("admin %s: audit event failed; closing it", link.identity)
                link.abort()

    def _on_hub_event(self, event: HubEvent) -> None:
        # Must not raise: the hub drops an observer that does (and with it every
        # subscriber).  One broken link is closed; the others still get the event.
        if not self._links:
            return  # no admin connection: nothing to tell (the common case, O(1))
        expired = isinstance(event, ConsoleExpired)
        if not expired and not any(link.subscribed for link in self._links):
            return  # nobody listens (an expiry may still end someone's tail)
        try:
            message = render.event_message(event, self.epoch)
            line = None if message is None else encode_message(message)
        except Exception:
            log.exception("admin: cannot encode hub event %s", type(event).__name__)
            return
        if line is None and not expired:
            return
        for link in list(self._links):
            try:
                link.hub_event(event, line)
            except Exception:
                log.exception(
                    "admin %s: event %s failed; closing it", link.identity, type(event).__name__
                )
                link.abort()
