"""The hub's telnet port allocators: which listener a console's telnet port is.

`_VmPorts` binds one listener per console from the `-r` range (sticky by key, and
none for a console an `[[access]]` rule gives `telnet = false`, docs/security.md);
`_ClusterPorts` is cluster mode's, where the registry hands ports out and
vspcd/cluster/node.py binds them before the console exists (docs/cluster.md).
Both are `PortAllocator`s (vspcd/hub/state.py) built by `Daemon.start`
(vspcd/service/server.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.net.listeners import PortBinder

log = logging.getLogger("vspc.vspcd.service.server")  # the wiring's one logger

__all__ = ["_ClusterPorts", "_VmPorts"]


class _VmPorts:
    """The hub's PortAllocator: one telnet listener per console, sticky by key."""

    def __init__(
        self,
        binder: PortBinder,
        factory: Callable[[], asyncio.Protocol],
        allowed: Callable[[ConsoleKey], bool] = lambda key: True,
    ) -> None:
        self._binder = binder
        self._factory = factory
        self._allowed = allowed  # `telnet = false` rules (docs/security.md)

    def bind(self, key: ConsoleKey) -> int | None:
        if not self._allowed(key):
            log.info("%s: no telnet port (telnet = false in an [[access]] rule)", key)
            return None
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
    and is bound before the console exists (vspcd/cluster/node.py `claim`, through
    `bind_exact`/`bind_any`), so the hub never picks one itself; it still releases
    them on expiry."""

    def __init__(self, binder: PortBinder, factory: Callable[[], asyncio.Protocol]) -> None:
        self._binder = binder
        self._factory = factory

    def bind(self, key: ConsoleKey) -> int | None:
        log.warning("%s: console created outside the registry; it has no telnet port", key)
        return None

    def bind_exact(self, port: int) -> bool:
        """Bind exactly `port` (the one the registry advertises for a console), or
        nothing: `PortBinder.bind_port` falls back to another free port, right for a
        console restored from the persist file, but here it would list a port this
        node does not listen on and an operator's telnet would reach whatever other
        process holds it (docs/cluster.md "Reliability")."""
        bound = self._binder.bind_port(port, self._factory)
        if bound is None:
            return False
        if bound[0] != port:
            self._binder.release(bound[0])
            return False
        return True

    def bind_any(self) -> int | None:
        """The lowest free port of the range, bound (offered to the registry when the
        port it handed out is busy on this host)."""
        bound = self._binder.bind(self._factory)
        return None if bound is None else bound[0]

    def release(self, port: int) -> None:
        self._binder.release(port)
