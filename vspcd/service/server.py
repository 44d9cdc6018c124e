"""Daemon orchestration: build the hub, open the listeners, shut down in order.

Boundary: this module owns every listener and the hub instance; it holds no policy.
`Daemon` is usable in-process (the end-to-end tests start one on 127.0.0.1 port 0);
`serve()` (vspcd/service/run.py) runs one as `python -m vspc.vspcd`; the telnet port
allocators it hands the hub are in vspcd/service/portalloc.py.

Start-up order: persist file (vspcd/history/store.py; a damaged one is set aside and vspcd
starts empty, one it cannot create or from a newer vspcd fails the start), console
log directory, hub, remembered consoles restored onto their old telnet ports
(vspcd/history/persist.py), then the listeners, so a VM connecting at once finds its console.

Shutdown (docs/development.md, "Orderly shutdown"): close the listeners, ask every connection to
close (the hub tells operators why), wait a bounded time for them to go, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import resource
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from vspc.vspcd.ext.hooks import HookRunner
from vspc.vspcd.ext.plugins import PluginHost
from vspc.vspcd.ext.webhook import WebhookSender
from vspc.vspcd.faces.admin import server as admin
from vspc.vspcd.faces.http import routes as httproutes
from vspc.vspcd.faces.http.server import HttpServer, Router
from vspc.vspcd.faces.metrics import Metrics, Sources
from vspc.vspcd.history import eventlog as logevents
from vspc.vspcd.history import store
from vspc.vspcd.history.audit import AuditLog, AuditSettings
from vspc.vspcd.history.consolelog import ConsoleLogs
from vspc.vspcd.history.gzipper import GzipQueue
from vspc.vspcd.history.persist import Persister
from vspc.vspcd.history.recording import Recordings
from vspc.vspcd.history.watch import AlertBook, ConsoleWatch
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.hub import Hub, PortAllocator
from vspc.vspcd.hub.ratelog import throttled
from vspc.vspcd.net import flow
from vspc.vspcd.net.admission import Slots
from vspc.vspcd.net.links import PreIdentification, TelnetClientLink, VmLink
from vspc.vspcd.net.listeners import (
    Listener,
    PortBinder,
    ephemeral_overlap,
    make_ssl_context,
    start_proxy_listener,
)
from vspc.vspcd.service import resources
from vspc.vspcd.service.config import Config
from vspc.vspcd.service.heap import HeapTrimmer, find_malloc_trim
from vspc.vspcd.service.portalloc import _ClusterPorts, _VmPorts
from vspc.vspcd.service.privileges import Identity, PrivilegeError, drop, hand_over
from vspc.vspcd.service.settings import (
    admin_settings,
    alert_rules,
    hook_settings,
    hub_settings,
    log_place,
    log_settings,
    recordings,
    webhook_settings,
)

log = logging.getLogger(__name__)

__all__ = ["Daemon"]

_FD_RESERVE = 64
# /healthz fails while the event loop's heartbeat runs later than this (seconds).
LOOP_LAG_LIMIT = 2.0


class Daemon:
    """One vspcd instance: hub + proxy listener + per-VM ports + admin socket."""

    def __init__(
        self,
        config: Config,
        *,
        secret_factory: Callable[[], bytes] | None = None,
        fd_limit: int | None = None,
    ) -> None:
        self._config = config
        self._secret_factory = secret_factory
        self.hub: Hub | None = None
        self._proxy: Any = None
        self._binder: PortBinder | None = None
        self._cluster_ports: _ClusterPorts | None = None  # with --cluster and VM ports
        self._admin: admin.AdminServer | None = None
        self.persister: Persister | None = None
        self.logs: ConsoleLogs | None = None
        self.recordings: Recordings | None = None
        self.audit_log: AuditLog | None = None  # --audit-log
        self.gzip: GzipQueue | None = None
        self.http: HttpServer | None = None
        self.hooks: HookRunner | None = None
        self.webhook: WebhookSender | None = None
        self.watch: ConsoleWatch | None = None
        self.alert_book: AlertBook | None = None
        self.plugin: PluginHost | None = None
        # Memory that comes back after a flood.
        self.trimmer: HeapTrimmer | None = None
        self._output_trimmer: HeapTrimmer | None = None
        self.proxy_port: int | None = None
        self._preident: PreIdentification | None = None
        self.cluster: Any = None  # vspcd.cluster.node.ClusterNode with --cluster
        self.metrics: Metrics | None = None
        self._handshakes: Slots | None = None
        if fd_limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            fd_limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
        self._fd_limit = fd_limit

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload's new configuration; the admin server reads its share of it."""
        self._config = config
        if self._admin is not None:
            self._admin.settings = admin_settings(config)

    async def start(self) -> None:
        """Open every listener; raises OSError if a fixed address cannot be bound.

        On failure whatever was already opened is closed again before the error
        propagates, so a failed start leaves no listener or socket file behind.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0.5)
            raise

    async def _start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        db = None if config.persist_file is None else _open_persist_file(config.persist_file)
        try:
            if config.log_dir is not None:
                self.gzip = GzipQueue()
                self.logs = ConsoleLogs(
                    log_settings(config),
                    call_later=loop.call_later,
                    compress=self.gzip.submit,
                    remember_owners=True,
                )
                self.logs.check_directory()
        except BaseException:
            if db is not None:
                db.close()
            raise
        ports: PortAllocator | None = None
        if config.vm_ports:
            # At most one console port per descriptor: the ports vspcd can hold at once.
            overlap = ephemeral_overlap(config.port_range_start, count=self._fd_limit)
            if overlap is not None:
                log.warning(
                    "telnet ports %d-%d (from -r, one per console, as many as the open-file "
                    "limit allows) overlap the kernel's ephemeral port range %d-%d: "
                    "outgoing connections may hold ports there (reserve them with "
                    "net.ipv4.ip_local_reserved_ports, or choose -r outside; "
                    "docs/operations.md)",
                    config.port_range_start,
                    min(65535, config.port_range_start + self._fd_limit - 1),
                    *overlap,
                )
            self._binder = PortBinder(config.vm_iface, config.port_range_start, loop)
            ports = _VmPorts(self._binder, self._client_link)
            if config.cluster:
                # Ports are handed out cluster-wide by the registry (docs/cluster.md).
                ports = self._cluster_ports = _ClusterPorts(self._binder, self._client_link)
        extra: dict[str, Any] = {}
        if self._secret_factory is not None:
            extra["secret_factory"] = self._secret_factory
        self.hub = Hub(
            hub_settings(config, fd_limit=self._fd_limit),
            clock=loop.time,
            call_later=loop.call_later,
            ports=ports,
            # `telnet = false` in [[access]] rules (docs/security.md); reload.py resets it.
            telnet_allowed=config.access_policy.telnet_allowed,
            **extra,
        )
        if config.audit_log is not None:
            # Opened now, before privileges are dropped: a bad path fails the start.
            self.audit_log = AuditLog(
                AuditSettings(config.audit_log, config.audit_max_size, config.audit_keep),
                call_later=loop.call_later,
            )
            try:
                self.audit_log.open()
            except OSError as exc:
                why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise OSError(f"--audit-log {config.audit_log}: cannot open: {why}") from None
            self.hub.subscribe_audit(self.audit_log)
            log.info("audit log %s", config.audit_log)
        if db is not None:
            self.persister = Persister(db, self.hub)
            restored = self.persister.restore(self._bind_restored)
            log.info("persist file %s", config.persist_file)
            self._restore_scrollback(restored)
        if self.logs is not None:
            self.hub.add_output_listener(self.logs.output)
            self.hub.subscribe(self.logs.observe)
            self.hub.subscribe(logevents.hub_observer(self.logs, time.time))  # --log-events
            log.info("console logs in %s", config.log_dir)
        self.recordings = recordings(lambda: self.config, loop.call_later)  # --record-dir
        if self.recordings is not None:
            self.hub.add_output_listener(self.recordings.output)
            self.hub.add_input_listener(self.recordings.input)
            self.hub.subscribe(self.recordings.observe)
        # Hooks and plugin backends are hub observers like the ones above (docs/architecture.md
        # "Hub events").  The runner is always
        # subscribed, so a reload can turn --hook-command on.
        hub = self.hub
        self.hooks = HookRunner(
            hook_settings(config),
            port_of=lambda key: None if (c := hub.console(key)) is None else c.port,
        )
        hub.subscribe(self.hooks)
        # Console alerts: an output listener reporting through the hub, and the book
        # the admin `alerts` command reads (docs/operations.md "Console alerts").
        self.alert_book = AlertBook(None if self.persister is None else self.persister.db)
        hub.subscribe(self.alert_book.observe)
        # --alert-webhook: always subscribed (it ignores alerts while off), so a reload
        # can turn it on.
        self.webhook = WebhookSender(webhook_settings(config))
        hub.subscribe(self.webhook.observe)
        self.watch = ConsoleWatch(hub, alert_rules(config))
        self.watch.start()
        # Metrics are one more observer, always subscribed: the
        # admin `stats` command answers whether or not /metrics is served.
        self.metrics = Metrics(
            hub,
            Sources(
                fds_in_use=lambda: resources.fds_in_use(self._fd_estimate),
                fd_limit=resources.fd_limit,
                admin_refused=lambda: 0 if self._admin is None else self._admin.refused.total,
                unidentified_dropped=lambda: (
                    0 if self._preident is None else self._preident.refused.total
                ),
                handshakes_in_progress=lambda: (
                    0 if self._handshakes is None else len(self._handshakes)
                ),
                handshakes_waiting=lambda: (
                    0 if self._handshakes is None else self._handshakes.waiting
                ),
            ),
            clock=loop.time,
            call_later=loop.call_later,
        )
        hub.subscribe(self.metrics.observe)
        self.metrics.loop.start()
        if config.backend is not None:
            # PluginError (a usage error, exit status 2) if it cannot be built or started.
            self.plugin = PluginHost(
                config.backend, config.backend_args or "", hub, self._bind_restored
            )
        if config.http is not None:
            routes = httproutes.routes(
                logs=self.logs, hub=self.hub, console_log=config.http_console_log
            )
            routes += httproutes.metrics_routes(
                self.metrics, enabled=lambda: self.config.metrics, health=self.health_problems
            )
            self.http = HttpServer(Router(routes))
            with _naming("the HTTP port", _address(*config.http)):
                await self.http.start(*config.http)
        if config.cluster:
            # Imported only here: cluster mode needs the optional redis client.
            from vspc.vspcd.cluster.node import ClusterNode
            from vspc.vspcd.cluster.settings import ClusterSettings

            # parse_args requires these three with --cluster.
            assert config.node_id and config.node_address and config.cluster_secret_file
            cluster_settings = ClusterSettings(
                registry=config.cluster,
                node_id=config.node_id,
                node_address=config.node_address,
                secret_file=config.cluster_secret_file,
                lease=config.cluster_lease,
                vmotion_abandon=config.vmotion_abandon,
                vm_expire_time=config.vm_expire_time,
                port_range_start=config.port_range_start,
                vm_iface=config.vm_iface,
            )
            self.cluster = ClusterNode(cluster_settings, self.hub, self._cluster_ports)
            with _naming("the cluster link port", self.cluster.address):
                await self.cluster.start()
        ssl_context = None
        if config.ssl:
            assert config.cert is not None  # parse_args refuses --ssl without --cert
            ssl_context = make_ssl_context(config.cert, config.key)
        # Bounded pre-identification state (docs/security.md).
        lifetime = config.ident_timeout
        self._handshakes = Slots(
            config.tls_handshake_limit,
            config.tls_handshakes_per_host,
            lifetime=lifetime,
            clock=loop.time,
        )
        self.trimmer = HeapTrimmer(find_malloc_trim(), call_later=loop.call_later, clock=loop.time)
        # All clients' queued output together (--output-budget, vspcd/net/flow.py); once
        # a burst of it has drained, the heap it used goes back to the system too.
        self._output_trimmer = HeapTrimmer(
            find_malloc_trim(), call_later=loop.call_later, clock=loop.time, burst=1
        )
        drains = itertools.count(1)
        flow.BUDGET.limit = config.output_budget
        flow.BUDGET.on_drained = lambda: self._output_trimmer.quiet(next(drains))
        self._preident = PreIdentification(
            throttled(
                log,
                "VM connections dropped before identifying",
                clock=loop.time,
                call_later=loop.call_later,
            ),
            timeout=config.ident_timeout,
            max_bytes=config.preident_bytes,
        )
        with _naming("the ESXi proxy port", _address(config.proxy_iface, config.proxy_port)):
            self._proxy = await start_proxy_listener(
                config.proxy_iface,
                config.proxy_port,
                ssl_context,
                self._vm_link,
                handshake_timeout=config.ident_timeout,
                allow=config.proxy_allow,
                unidentified=Slots(
                    config.unidentified_limit,
                    config.unidentified_per_host,
                    lifetime=lifetime,
                    clock=loop.time,
                    on_empty=self.trimmer.quiet,
                ),
                handshakes=self._handshakes,
                reuse_port=config.reuse_port,
            )
        self.proxy_port = self._proxy.port
        self._admin = admin.AdminServer(self.hub, admin_settings(config))
        self._admin.stats = self.metrics.snapshot
        self._admin.alerts = self.alert_book
        self._admin.log_place = log_place(config)
        if self.logs is not None:
            self._admin.flush_logs = self.logs.flush
        if self.cluster is not None:
            from vspc.vspcd.cluster.forward import Forwarder

            self.cluster.rows_provider = self._admin.console_rows
            self._admin.remote = Forwarder(self.cluster, self._admin)
            self._admin.cluster_node_id = self.cluster.node_id
        with _naming("the admin socket", str(config.admin_socket)):
            await self._admin.start()

    def _bind_restored(self, port: int | None) -> int | None:
        """A telnet port for a restored console: its old one if still free."""
        if self._binder is None:
            return None
        if port is None:
            bound = self._binder.bind(self._client_link)
        else:
            bound = self._binder.bind_port(port, self._client_link)
        return None if bound is None else bound[0]

    def _restore_scrollback(self, consoles: list[Console]) -> None:
        """A console restored from the persist file gets its
        scrollback back from the tail of its log (across a rotation), so `--context`
        replay and `tail` show what it printed before the restart."""
        if self.logs is None:
            return
        filled = 0
        for console in consoles:
            if console.scrollback.total == 0 and console.scrollback.limit > 0:
                data = self.logs.tail(str(console.key), console.scrollback.limit)
                if data:
                    console.scrollback.append(data)
                    filled += 1
        if filled:
            log.info("scrollback of %d restored console(s) read back from their logs", filled)

    def reconfigure_alerts(self, config: Config) -> None:
        """Re-apply the console alert rules of a reloaded configuration."""
        if self.watch is not None:
            self.watch.set_rules(alert_rules(config))

    def reconfigure_logs(self, config: Config) -> None:
        """Re-apply the console log options of a reloaded configuration (--log-dir
        itself must stay set: turning logging on or off needs a restart)."""
        if self.logs is None or config.log_dir is None:
            return
        settings = log_settings(config)
        if settings.directory != self.logs.settings.directory:
            self.logs.check_directory(settings.directory)
        self.logs.reconfigure(settings)

    def drop_privileges(self, identity: Identity, *, fresh_socket_dir: bool) -> None:
        """Become `identity` once everything is bound (`--user`, docs/operations.md §2a).

        Files this process keeps writing are handed over first: the persist file (with
        SQLite's -wal/-shm), the admin socket, and its directory when this start created
        it (so the socket can be removed at exit).  Console logs are opened later, so
        `--log-dir` must be writable by `identity`; that is checked here, not at the
        first console.

        Raises:
            PrivilegeError: a hand-over or the switch failed, or the log directory is
                not writable afterwards.
        """
        owned: list[Path] = [self.config.admin_socket]
        if fresh_socket_dir:
            owned.append(self.config.admin_socket.parent)
        if self.config.persist_file is not None:
            persist = self.config.persist_file
            owned += [persist, Path(f"{persist}-wal"), Path(f"{persist}-shm")]
        hand_over(identity, owned)
        drop(identity)
        socket_dir = self.config.admin_socket.parent
        if not os.access(socket_dir, os.W_OK | os.X_OK):
            log.warning(
                "%s is not writable by %s: the admin socket stays behind at exit (the next "
                "start replaces it); give the directory to that user, e.g. RuntimeDirectory=",
                socket_dir,
                identity.name,
            )
        log_dir = self.config.log_dir
        if log_dir is not None and not os.access(log_dir, os.W_OK | os.X_OK):
            raise PrivilegeError(
                f"--log-dir {log_dir} is not writable by {identity.name}; "
                "console logs could not be created"
            )
        log.info(
            "running as user %s (uid %d, gid %d) after binding",
            identity.name,
            identity.uid,
            identity.gid,
        )

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the audit log and every console log file (after logrotate
        moved them); start new recording files."""
        if self.audit_log is not None:
            self.audit_log.reopen()
        if self.recordings is not None:
            self.recordings.reopen()
        if self.logs is None:
            log.info("SIGHUP: no console logs to reopen (--log-dir not given)")
            return
        self.logs.reopen()

    def _vm_link(self) -> asyncio.Protocol:
        assert self.hub is not None
        self._relieve_fd_pressure()
        return VmLink(
            self.hub if self.cluster is None else self.cluster.gate, preident=self._preident
        )

    def health_problems(self) -> list[str]:
        """Why /healthz says 503: a listener down or a stalled event loop ([]: healthy)."""
        problems = []
        if self._proxy is None or self.proxy_listener is None or self.proxy_listener.closed:
            problems.append("the ESXi listener is not accepting")
        if self._admin is None or not self.config.admin_socket.exists():
            problems.append(f"the admin socket {self.config.admin_socket} is gone")
        if self.metrics is not None and self.metrics.loop.lag > LOOP_LAG_LIMIT:
            problems.append(f"the event loop ran {self.metrics.loop.lag:.1f} s late")
        return problems

    def _fd_estimate(self) -> int:
        """Descriptors in use by our own bookkeeping (where /proc is not mounted)."""
        assert self.hub is not None
        ports = self._binder.held_count if self._binder is not None else 0
        used = self.hub.connection_count() + ports + _FD_RESERVE
        return used + (self.logs.open_count if self.logs is not None else 0)

    def _relieve_fd_pressure(self) -> None:
        """Near the fd ceiling, expire idle consoles early to free their telnet ports.

        vSPC.py did the same.  The count is an estimate from our own bookkeeping
        (connections + bound ports + a reserve for logs, listeners and admin peers), so
        the accept path never lists /proc/self/fd.
        """
        assert self.hub is not None
        ports = self._binder.held_count if self._binder is not None else 0  # O(1): per accept
        used = self.hub.connection_count() + ports + _FD_RESERVE
        if self.logs is not None:
            used += self.logs.open_count
        if used < self._fd_limit * 0.9:
            return
        freed = self.hub.reclaim(max(16, ports // 10))
        if freed:
            log.warning(
                "near the fd limit (%d of %d): expired %d idle console(s) early",
                used,
                self._fd_limit,
                freed,
            )

    def _client_link(self) -> asyncio.Protocol:
        assert self.hub is not None
        return TelnetClientLink(
            self.hub, queue_limit=self.config.client_queue, replay=self.config.context
        )

    @property
    def proxy_listener(self) -> Listener | None:
        """The ESXi listener (e.g. for a reload to `set_allow_list` on it)."""
        return cast(Listener | None, self._proxy)

    @property
    def admin_path(self) -> Path:
        return self.config.admin_socket

    async def stop(self, grace: float = 5.0) -> None:
        """Close listeners, then connections; wait up to `grace` seconds for them to go."""
        if self._proxy is not None:
            self._proxy.close()
        if self.trimmer is not None:
            self.trimmer.close()
        if self._output_trimmer is not None:
            self._output_trimmer.close()
            flow.BUDGET.on_drained = None
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self._admin is not None:
            try:
                await self._admin.stop()
            except PermissionError as exc:  # after --user, in a directory root kept
                log.warning("cannot remove the admin socket: %s", exc)
        if self.hub is not None:
            self.hub.close_all()
        if self._binder is not None:
            self._binder.close_all()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.hub is not None:
            # Let transports flush their goodbyes and run connection_lost.
            idle = asyncio.Event()
            self.hub.when_idle(idle.set)
            try:
                async with asyncio.timeout(grace):
                    await idle.wait()
            except TimeoutError:
                log.warning("connections still open after %.0f s; exiting anyway", grace)
        # Last: the goodbyes above still log output, update rows and run hooks.
        if self.metrics is not None:
            self.metrics.loop.stop()
        if self.hooks is not None:
            await self.hooks.close(grace=min(grace, 2.0))
        if self.webhook is not None:
            await self.webhook.close()
        if self.plugin is not None:
            self.plugin.close()
        if self.logs is not None:
            self.logs.close()
        if self.recordings is not None:
            self.recordings.close()
        if self.audit_log is not None:
            self.audit_log.close()  # last: the goodbyes above are detaches it records
        if self.gzip is not None:
            self.gzip.close()
        if self.alert_book is not None:
            self.alert_book.close()  # before the persist file it writes to
        if self.persister is not None:
            self.persister.close()
            self.persister = None


class BindError(OSError):
    """A listener could not be bound; the message names the address and says why."""


def _address(host: str | None, port: int) -> str:
    host = host or "*"  # every interface
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.contextmanager
def _naming(what: str, address: str) -> Iterator[None]:
    """Re-raise a listener's OSError as `cannot bind ADDRESS: reason (WHAT)`.

    The bare `[Errno 98] Address already in use` names no address, and asyncio's
    spelling differs from the socket module's; the operator needs to know which of
    the listeners (-p, -a, --http, --node-address) is in the way.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno is None and ("cannot bind" in str(exc) or address in str(exc)):
            raise  # ours (BindError, AdminSocketError, ...): says it already
        reason = str(exc) if exc.errno is None else os.strerror(exc.errno).lower()
        raise BindError(f"cannot bind {address}: {reason} ({what})") from None


def _open_persist_file(path: Path) -> sqlite3.Connection:
    """Open the persist file; a damaged one is set aside and a fresh one started.

    After a power cut the file may be unreadable; refusing to start would make systemd
    restart vspcd in a loop.  Consoles reappear as their VMs reconnect; the damaged file
    is kept as `PATH.corrupt-<time>` for inspection.  Other errors (cannot create the
    file, a newer vspcd's schema) still fail the start.
    """
    try:
        return store.open_store(path, set_aside_damaged=True)
    except store.StoreCorrupt as exc:
        log.error("%s; moved it to %s and starting with a new, empty %s", exc, exc.aside, path)
        return store.open_store(path)
