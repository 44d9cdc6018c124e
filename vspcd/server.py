"""Daemon orchestration: build the hub, open the listeners, shut down in order.

Boundary: this module owns every listener and the hub instance; it holds no policy.
`Daemon` is usable in-process (the end-to-end tests start one on 127.0.0.1 port 0);
`serve()` is what `python -m vspc.vspcd` runs.

Start-up order: persist file (vspcd/store.py, a bad file fails the start), console
log directory, hub, remembered consoles restored onto their old telnet ports
(vspcd/persist.py), then the listeners, so a VM connecting at once finds its console.

Shutdown (STYLE.md, "Orderly shutdown"): close the listeners, ask every connection to
close (the hub tells operators why), wait a bounded time for them to go, then return.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vspc.vspcd import admin, store
from vspc.vspcd.config import Config
from vspc.vspcd.console import ConsoleKey
from vspc.vspcd.consolelog import ConsoleLogs, LogSettings
from vspc.vspcd.hub import Hub, HubSettings, PortAllocator
from vspc.vspcd.links import TelnetClientLink, VmLink
from vspc.vspcd.listeners import PortBinder, make_ssl_context, start_proxy_listener
from vspc.vspcd.persist import Persister
from vspc.vspcd.render import fields_observer

log = logging.getLogger(__name__)

__all__ = ["Daemon", "serve"]

_FD_RESERVE = 64


def hub_settings(config: Config) -> HubSettings:
    """The hub's share of the configuration."""
    return HubSettings(
        vm_expire_time=config.vm_expire_time,
        client_limit=config.client_limit,
        multi_console=config.multi_console,
        abandon_time=config.vmotion_abandon,
        takeover_timeout=config.takeover_timeout,
        notices=not config.no_notices,
        hold_limit=config.hold_limit,
        scrollback=config.scrollback,
    )


class _VmPorts:
    """The hub's PortAllocator: one telnet listener per console, sticky by key."""

    def __init__(self, binder: PortBinder, factory: Callable[[], asyncio.Protocol]) -> None:
        self._binder = binder
        self._factory = factory

    def bind(self, key: ConsoleKey) -> int | None:
        bound = self._binder.bind(self._factory)
        if bound is None:
            return None
        port, _handle = bound
        log.debug("%s: telnet port %d", key, port)  # the hub's "connected" line names it
        return port

    def release(self, port: int) -> None:
        self._binder.release(port)


class _ClusterPorts:
    """Cluster mode's PortAllocator: a console's telnet port comes from the registry
    and is bound before the console exists (vspcd/cluster/node.py `claim`), so the
    hub never picks one itself; it still releases them on expiry."""

    def __init__(self, binder: PortBinder) -> None:
        self._binder = binder

    def bind(self, key: ConsoleKey) -> int | None:
        log.warning("%s: console created outside the registry; it has no telnet port", key)
        return None

    def release(self, port: int) -> None:
        self._binder.release(port)


class Daemon:
    """One vspcd instance: hub + proxy listener + per-VM ports + admin socket."""

    def __init__(
        self,
        config: Config,
        *,
        secret_factory: Callable[[], bytes] | None = None,
        fd_limit: int | None = None,
    ) -> None:
        self.config = config
        self._secret_factory = secret_factory
        self.hub: Hub | None = None
        self._proxy: Any = None
        self._binder: PortBinder | None = None
        self._admin: admin.AdminServer | None = None
        self.persister: Persister | None = None
        self.logs: ConsoleLogs | None = None
        self.proxy_port: int | None = None
        self.cluster: Any = None  # vspcd.cluster.node.ClusterNode with --cluster
        if fd_limit is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            fd_limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
        self._fd_limit = fd_limit

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
        db = None if config.persist_file is None else store.open_store(config.persist_file)
        try:
            if config.log_dir is not None:
                self.logs = ConsoleLogs(
                    LogSettings(config.log_dir, config.log_prefix, config.log_mode),
                    call_later=loop.call_later,
                )
                self.logs.check_directory()
        except BaseException:
            if db is not None:
                db.close()
            raise
        ports: PortAllocator | None = None
        if config.vm_ports:
            self._binder = PortBinder(config.vm_iface, config.port_range_start, loop)
            ports = _VmPorts(self._binder, self._client_link)
            if config.cluster:
                # Ports are handed out cluster-wide by the registry (docs/cluster.md).
                ports = _ClusterPorts(self._binder)
        extra: dict[str, Any] = {}
        if self._secret_factory is not None:
            extra["secret_factory"] = self._secret_factory
        self.hub = Hub(
            hub_settings(config),
            clock=loop.time,
            call_later=loop.call_later,
            ports=ports,
            **extra,
        )
        if db is not None:
            self.persister = Persister(db, self.hub)
            self.persister.restore(self._bind_restored)
            log.info("persist file %s", config.persist_file)
        if self.logs is not None:
            self.hub.add_output_listener(self.logs.output)
            self.hub.subscribe(fields_observer(self.logs.observe))
            log.info("console logs in %s", config.log_dir)
        if config.cluster:
            # Imported only here: cluster mode needs the optional redis client.
            from vspc.vspcd.cluster.node import ClusterNode

            self.cluster = ClusterNode(
                config, self.hub, lambda port: self._bind_restored(port) is not None
            )
            await self.cluster.start()
        ssl_context = None
        if config.ssl:
            assert config.cert is not None  # parse_args refuses --ssl without --cert
            ssl_context = make_ssl_context(config.cert, config.key)
        self._proxy = await start_proxy_listener(
            config.proxy_iface,
            config.proxy_port,
            ssl_context,
            self._vm_link,
            reuse_port=config.reuse_port,
        )
        self.proxy_port = self._proxy.port
        self._admin = admin.AdminServer(self.hub, config)
        if self.cluster is not None:
            from vspc.vspcd.cluster.forward import Forwarder

            self.cluster.rows_provider = self._admin.console_rows
            self._admin.remote = Forwarder(self.cluster, self._admin)
            self._admin.cluster_node_id = self.cluster.node_id
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

    def reopen_logs(self) -> None:
        """SIGHUP: reopen every console log file (after logrotate moved it)."""
        if self.logs is None:
            log.info("SIGHUP: no console logs to reopen (--log-dir not given)")
            return
        self.logs.reopen()

    def _vm_link(self) -> asyncio.Protocol:
        assert self.hub is not None
        self._relieve_fd_pressure()
        return VmLink(self.hub if self.cluster is None else self.cluster.gate)

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
    def admin_path(self) -> Path:
        return self.config.admin_socket

    async def stop(self, grace: float = 5.0) -> None:
        """Close listeners, then connections; wait up to `grace` seconds for them to go."""
        if self._proxy is not None:
            self._proxy.close()
        if self._admin is not None:
            await self._admin.stop()
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
        # Last: the goodbyes above still log output and update rows.
        if self.logs is not None:
            self.logs.close()
        if self.persister is not None:
            self.persister.close()
            self.persister = None


async def serve(config: Config, *, ready: Callable[[Daemon], None] | None = None) -> None:
    """Run vspcd until SIGTERM or SIGINT, then shut down cleanly; SIGHUP reopens logs.

    The handlers go in before anything is opened: a signal during start-up then just
    means "stop once started", and every socket and file is cleaned up either way.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon = Daemon(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reopen_logs)
    try:
        await daemon.start()
        try:
            log.info("vspcd %d ready", os.getpid())
            if ready is not None:
                ready(daemon)
            await stop.wait()
            log.info("shutting down")
        finally:
            await daemon.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
