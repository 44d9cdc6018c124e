"""`serve()`: what `python -m vspc.vspcd` runs -- a `Daemon` (vspcd/service/server.py)
from start to stop, with the process around it.

Signals (SIGTERM/SIGINT stop, SIGHUP reopens the logs and reloads,
vspcd/service/reload.py, recorded as a `reload` audit record, docs/security.md "Audit
trail"), dropping privileges once everything is bound (vspcd/service/privileges.py),
and systemd's notifications and watchdog (vspcd/service/notify.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping

from vspc.vspcd.hub.audit import Actor, AuditAction
from vspc.vspcd.service.config import Config, ConfigError
from vspc.vspcd.service.notify import Notifier, watchdog_interval
from vspc.vspcd.service.privileges import PrivilegeError, resolve
from vspc.vspcd.service.reload import apply as apply_reload
from vspc.vspcd.service.reload import describe as describe_reload
from vspc.vspcd.service.server import Daemon

log = logging.getLogger("vspc.vspcd.service.server")  # the wiring's one logger

__all__ = ["serve"]


def _status_line(daemon: Daemon) -> str:
    """What `systemctl status` shows once vspcd serves."""
    config = daemon.config
    proxy = f"{config.proxy_iface}:{daemon.proxy_port}"
    consoles = 0 if daemon.hub is None else len(list(daemon.hub.consoles()))
    return f"serving: ESXi proxy {proxy}, admin {config.admin_socket}, {consoles} console(s)"


async def _watchdog(notifier: Notifier, interval: float) -> None:
    # On the event loop on purpose: a loop stuck for WatchdogSec stops the pings and
    # systemd restarts the service, which is what the watchdog is for.
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def serve(
    config: Config,
    *,
    ready: Callable[[Daemon], None] | None = None,
    reload: Callable[[], Config] | None = None,
    notifier: Notifier | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Run vspcd until SIGTERM or SIGINT, then shut down cleanly.

    SIGHUP reopens the console logs and, given `reload` (a function that re-reads the
    configuration, raising ConfigError if it is invalid), applies what can change live
    (vspcd/service/reload.py).  `notifier` gets systemd's READY=1 once every listener is bound
    and privileges are dropped, STATUS= lines, RELOADING=1, STOPPING=1, and WATCHDOG=1
    every half `$WATCHDOG_USEC` when set (vspcd/service/notify.py; `environ` defaults to
    os.environ).

    The handlers go in before anything is opened: a signal during start-up then just
    means "stop once started", and every socket and file is cleaned up either way.

    Raises:
        OSError: a listener could not be bound (PrivilegeError: the drop failed).
    """
    environ = os.environ if environ is None else environ
    notifier = Notifier(None) if notifier is None else notifier
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon = Daemon(config)
    identity = None if config.user is None else resolve(config.user, config.group)
    if identity is not None and os.geteuid() != 0:
        if identity.uid != os.geteuid() or identity.gid != os.getegid():
            raise PrivilegeError(f"--user {config.user}: switching user needs root")
        identity = None  # already that user: nothing to drop
    fresh_socket_dir = not config.admin_socket.parent.exists()

    def on_hup() -> None:
        daemon.reopen_logs()
        if reload is not None:
            _reload(daemon, reload, notifier)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watchdog: asyncio.Task[None] | None = None
    try:
        notifier.status("starting: binding listeners")
        await daemon.start()
        try:
            if identity is not None:
                daemon.drop_privileges(identity, fresh_socket_dir=fresh_socket_dir)
            log.info("vspcd %d ready", os.getpid())
            notifier.ready(_status_line(daemon))
            interval = watchdog_interval(environ)
            if interval is not None and notifier.enabled:
                watchdog = asyncio.create_task(_watchdog(notifier, interval))
            if ready is not None:
                ready(daemon)
            await stop.wait()
            log.info("shutting down")
            notifier.stopping()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await daemon.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def _audit_reload(daemon: Daemon, denied: str | None, note: str = "") -> None:
    """One `reload` audit record: SIGHUP carries no identity, so the peer says how."""
    if daemon.hub is not None:
        daemon.hub.audit(AuditAction.RELOAD, Actor(peer="SIGHUP"), denied=denied, note=note)


def _reload(daemon: Daemon, reload: Callable[[], Config], notifier: Notifier) -> None:
    """SIGHUP: re-read the configuration and apply it; a bad file changes nothing."""
    notifier.reloading()
    source = str(daemon.config.config or "the command line (no configuration file)")
    try:
        new = reload()
    except ConfigError as exc:
        log.error("reload failed, configuration unchanged: %s", exc)
        notifier.ready(f"reload failed: {exc}"[:200])
        _audit_reload(daemon, f"configuration rejected: {exc}")
        return
    outcome = apply_reload(daemon, new)
    log.info("%s", describe_reload(outcome, source))
    _audit_reload(daemon, None, describe_reload(outcome, source))
    notifier.ready(_status_line(daemon))
