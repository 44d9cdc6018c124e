"""The hub's telnet port allocators: which listener a console's telnet port is.

`_VmPorts` binds one listener per console from the `-r` range (sticky by key);
`_ClusterPorts` is cluster mode's, where the registry hands ports out and
vspcd/cluster/node.py binds them before the console exists (docs/cluster.md).
Which consoles get none (`telnet = false` in an `[[access]]` rule, docs/security.md)
is the hub's decision (vspcd/hub/telnetport.py), made on the owner node in cluster
mode; a port it closed is reopened through `bind(key, previous)`.
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

    def __init__(self, binder: PortBinder, factory: Callable[[], asyncio.Protocol]) -> None:
        self._binder = binder
        self._factory = factory

    def bind(self, key: ConsoleKey, previous: int | None = None) -> int | None:
        """The lowest free port, or `previous` (the console's, before access rules
        closed it) if it is still free."""
        if previous is None:
            bound = self._binder.bind(self._factory)
        else:
            bound = self._binder.bind_port(previous, self._factory)
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
    `bind_exact`/`bind_any`), so the hub never picks one itself; it releases them on
    expiry, and closes and reopens them as `telnet = false` rules say.  The registry
    keeps a closed port reserved for its console, so only that port is reopened."""

    def __init__(self, binder: PortBinder, factory: Callable[[], asyncio.Protocol]) -> None:
        self._binder = binder
        self._factory = factory

    def bind(self, key: ConsoleKey, previous: int | None = None) -> int | None:
        """Reopen `previous`, the registry's port for `key` that access rules closed."""
        if previous is None:
            log.warning("%s: console created outside the registry; it has no telnet port", key)
            return None
        if not self.bind_exact(previous):
            log.warning("%s: its telnet port %d is busy on this host", key, previous)
            return None
        return previous

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
