"""This node's consoles in the registry: which it owns, their state, vMotion cookies.

Spec: docs/cluster.md ("Registry schema").  A hub observer
(`Mirror.observe`) turns the events of owned consoles into registry writes: state
updates go through one ordered writer task, so a slow Redis never stalls the data
path; vMotion cookies are published at once (a destination reaching another node
looks them up).  A write that fails marks the mirror `dirty`; the next successful
lease renewal (vspcd/cluster/node.py) calls `reconcile`, which republishes every
owned console by compare-and-set and drops (vspcd/hub/hub.py `drop`) any that another
live node won meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from vspc.vspcd.cluster.registry import ConsoleRecord, Registry, RegistryUnavailable
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import (
    ConsoleExpired,
    HubEvent,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VmRenamed,
)
from vspc.vspcd.hub.hub import Hub

log = logging.getLogger(__name__)

__all__ = ["Mirror"]


class Mirror:
    """The registry side of one node's consoles.

    Args:
        node_id: this node's id.
        hub: this node's hub.
        registry: the registry client.
        spawn: starts a task the node owns (cancelled at stop).
        cookie_life: seconds a published cookie lives: the abandon grace (docs/protocol.md
            §4.3 F8) plus a lease, so no PEER misses it.
    """

    def __init__(
        self,
        node_id: str,
        hub: Hub,
        registry: Registry,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        cookie_life: float,
    ) -> None:
        self.node_id = node_id
        self.hub = hub
        self.registry = registry
        self._spawn = spawn
        self._cookie_life = cookie_life
        self.owned: set[ConsoleKey] = set()
        self.dirty = True  # registry writes were lost: reconcile at the next chance
        self._cookies: dict[ConsoleKey, bytes] = {}
        self._cookie_puts: dict[ConsoleKey, asyncio.Task[Any]] = {}
        self._writes: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()

    def start(self) -> None:
        """Start the ordered writer (a task of the node's)."""
        self._spawn(self._writer())

    async def reconcile(self) -> None:
        """Republish every console this node serves; let go of any another node won."""
        self.dirty = False
        for console in list(self.hub.consoles()):
            key = console.key
            if key not in self.owned:
                continue
            state = (
                "vmotion"
                if console.migration is not None
                else ("connected" if console.connected else "disconnected")
            )
            record = ConsoleRecord(
                key=str(key),
                uuid=key.uuid,
                label=key.label,
                name=console.name,
                # A port `telnet = false` closed stays the console's (vspcd/hub/telnetport.py).
                port=console.port if console.port is not None else console.closed_port,
                owner=self.node_id,
                state=state,
                last_seen=0.0,
                uri=console.service_uri or "",
            )
            owner = await self.registry.republish(record)
            if owner != self.node_id:
                log.warning(
                    "%s: the registry gives it to %s now; letting it go", console.tag, owner
                )
                self.owned.discard(key)
                # Its VM reconnects and is relayed to the winner, which needs the
                # telnet port (same host) and must be the only one listing it.
                self.hub.drop(console, f"console moved to node {owner}")
        cookies = list(self._cookies.values())
        for cookie in cookies:
            await self.registry.put_cookie(cookie, self._cookie_ttl())
        log.info(
            "cluster node %s: registry reconciled (%d consoles)", self.node_id, len(self.owned)
        )

    def _cookie_ttl(self) -> float:
        return self._cookie_life

    def observe(self, event: HubEvent) -> None:
        """The hub observer (vspcd/hub/events.py); only consoles this node owns."""
        key = event.key
        if key not in self.owned:
            return
        k = str(key)
        match event:
            case VmConnected(info=info):
                name = info.vm_name  # the VM's own name; the label is stored apart
                self._write(lambda: self.registry.update(k, state="connected", name=name))
            case VmRenamed(vm_name=vm_name):
                self._write(lambda: self.registry.update(k, name=vm_name))
            case VmDisconnected():
                self._write(lambda: self.registry.update(k, state="disconnected"))
            case VMotionBegun():
                cookie = self.hub.cookie_of(key)
                if cookie is not None:
                    # Not behind the queued state updates: a destination on another
                    # node looks this up (ESXi connects it 1 s after GOAHEAD).
                    self._cookies[key] = cookie
                    self._cookie_puts[key] = self._spawn(self._put_cookie(cookie))
                self._write(lambda: self.registry.update(k, state="vmotion"))
            case VMotionCompleted() | VMotionAborted():
                old = self._cookies.pop(key, None)
                if old is not None:
                    self._spawn(self._drop_cookie(old, self._cookie_puts.pop(key, None)))
                console = self.hub.console(key)
                state = "connected" if console is not None and console.connected else "disconnected"
                self._write(lambda: self.registry.update(k, state=state))
            case ConsoleExpired():
                self.owned.discard(key)
                self._write(lambda: self.registry.release(k))
            case _:
                pass

    async def _put_cookie(self, cookie: bytes) -> None:
        try:
            await self.registry.put_cookie(cookie, self._cookie_ttl())
        except RegistryUnavailable as exc:
            log.warning(
                "vMotion cookie not published (%s): a destination reaching "
                "another node gets no PEER-OK",
                exc,
            )
            self.dirty = True

    async def _drop_cookie(self, cookie: bytes, put: asyncio.Task[Any] | None) -> None:
        if put is not None:
            await asyncio.wait([put])  # never delete before the write landed
        try:
            await self.registry.drop_cookie(cookie)
        except RegistryUnavailable:
            self.dirty = True  # it expires with its TTL anyway

    def _write(self, op: Callable[[], Awaitable[Any]]) -> None:
        self._writes.put_nowait(op)

    async def _writer(self) -> None:
        while True:
            op = await self._writes.get()
            try:
                await op()
            except RegistryUnavailable as exc:
                log.debug("registry write lost (%s); reconciling later", exc)
                self.dirty = True
