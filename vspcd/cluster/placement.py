"""Placement in cluster mode: which node owns a console, and where a VM connection goes.

Spec: docs/cluster.md ("Which node serves a VM connection", "Cross-node vMotion",
"Failure modes").  In cluster mode every `VmLink` reports to a `Gate` instead of the
hub (the `VmSink` protocol of vspcd/hub/console.py).  A connection's session events
are held until the gate knows whose console it is:

- a destination (PEER with a cookie): the cookie's owner in the registry;
- a source (DO-PROXY + VM-VC-UUID): the console's owner in the registry, claimed by
  compare-and-set if it has none or its owner's lease expired (a dead node).

Then the held events are replayed, in order, into this node's hub (LOCAL) or sent
over the inter-node link to the owner (RELAY), and so is everything after.  Relaying
keeps the owner's single-node vMotion machine (vspcd/hub/hub.py, vspcd/hub/vmotion.py)
authoritative: one hub holds the cookie, the hold and both connections, so every
guarantee of docs/protocol.md §4 holds as on one node.

The gate never raises into a link: registry or link failures end in a local decision
(the hub then applies its own rules, e.g. F5 for an unknown cookie) or in closing the
connection with a logged reason, after which ESXi reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from vspc.common import vmware as vm
from vspc.common.peerlink import VmClosed, VmCongested, VmEvent, VmHeard, VmOpen
from vspc.common.session import ProxyRequested, SessionEvent, VmData, VmIdentified, VmNamed
from vspc.vspcd.cluster.links import PeerLink, RemoteVm
from vspc.vspcd.cluster.registry import RegistryUnavailable
from vspc.vspcd.hub.console import ConsoleKey, VmChannel, VmConn
from vspc.vspcd.hub.hub import Hub

if TYPE_CHECKING:
    from vspc.vspcd.cluster.node import ClusterNode

log = logging.getLogger(__name__)

__all__ = ["Gate"]

HELD_LIMIT = 1 << 20  # bytes of VM output held while deciding; more closes the connection
# Seconds a PEER waits for its cookie to appear (the owner writes it just after
# GOAHEAD).  Generous: on a loaded host the owner's write can land well after the
# destination arrived, and giving up early fails the vMotion (F5: no PEER-OK), while
# waiting longer for a cookie that never comes is the same silence a little later.
COOKIE_WAIT = 5.0


class Mode(Enum):
    DECIDING = "deciding"  # output held until the VM says who it is
    LOCAL = "local"  # this node owns the console: straight to the hub
    RELAY = "relay"  # another node owns it: over the peer link
    GONE = "gone"  # the VM connection closed


@dataclass(eq=False, slots=True)
class _Conn:
    channel: VmChannel
    mode: Mode = Mode.DECIDING
    held: list[SessionEvent] = field(default_factory=list)
    held_bytes: int = 0
    request: ProxyRequested | None = None
    uuid: str | None = None
    name: str | None = None
    congested: bool = False
    link: PeerLink | None = None
    link_channel: int = 0
    task: asyncio.Task[None] | None = None


class Gate:
    """The `VmSink` of every VM link in cluster mode (see the module docstring)."""

    def __init__(self, node: ClusterNode, hub: Hub) -> None:
        self._node = node
        self._hub = hub
        self._conns: dict[VmConn, _Conn] = {}
        self.relayed = 0  # connections handed to another node (for tests and stats)

    # -- VmSink -------------------------------------------------------------------------

    def vm_connected(self, channel: VmChannel) -> VmConn:
        conn = self._hub.vm_connected(channel)
        self._conns[conn] = _Conn(channel)
        return conn

    def vm_event(self, conn: VmConn, event: SessionEvent) -> None:
        state = self._conns.get(conn)
        if state is None or state.mode is Mode.LOCAL:
            self._hub.vm_event(conn, event)
            return
        if state.mode is Mode.RELAY:
            assert state.link is not None
            state.link.send(VmEvent(state.link_channel, event))
            return
        if state.mode is Mode.GONE:
            return
        state.held.append(event)
        if isinstance(event, VmData):
            state.held_bytes += len(event.payload)
            if state.held_bytes > HELD_LIMIT:
                log.warning(
                    "VM %s: too much output before its console was found", state.channel.peer
                )
                self._give_up(conn, state)
            return
        if state.task is not None:
            return  # a decision is under way; it replays what is held
        match event:
            case vm.VMotionPeer(cookie):
                if self._hub.has_cookie(cookie):
                    self._local(conn, state)
                else:
                    state.task = self._node.spawn(self._decide_peer(conn, state, cookie))
            case ProxyRequested(accepted=accepted) as request:
                state.request = request
                if not accepted:
                    self._local(conn, state)  # the hub refuses it and says why
                    return
                self._maybe_source(conn, state)
            case VmIdentified(uuid):
                state.uuid = uuid
                self._maybe_source(conn, state)
            case VmNamed(name):
                state.name = name
            case _:
                pass

    def vm_heard(self, conn: VmConn) -> None:
        state = self._conns.get(conn)
        if state is None or state.mode is Mode.LOCAL:
            self._hub.vm_heard(conn)
        elif state.mode is Mode.RELAY and state.link is not None:
            state.link.send(VmHeard(state.link_channel))

    def vm_congested(self, conn: VmConn, congested: bool) -> None:
        state = self._conns.get(conn)
        if state is None or state.mode is Mode.LOCAL:
            self._hub.vm_congested(conn, congested)
            return
        state.congested = congested
        if state.mode is Mode.RELAY and state.link is not None:
            state.link.send(VmCongested(state.link_channel, congested))

    def vm_closed(self, conn: VmConn) -> None:
        state = self._conns.pop(conn, None)
        if state is not None:
            if state.mode is Mode.RELAY and state.link is not None:
                state.link.send(VmClosed(state.link_channel))
                self._node.forget_relay(state.link, state.link_channel)
            if state.task is not None and state.mode is Mode.DECIDING:
                state.task.cancel()
            state.mode = Mode.GONE
        self._hub.vm_closed(conn)

    # -- the inter-node link ------------------------------------------------------------

    def link_lost(self, link: PeerLink) -> None:
        """The owner we relay to is gone: our relayed connections go too, so ESXi
        reconnects and the console is served again (by a new owner if need be)."""
        for state in list(self._conns.values()):
            if state.link is link and state.mode is Mode.RELAY:
                log.warning(
                    "VM %s: the node serving its console went away; closing it so it reconnects",
                    state.channel.peer,
                )
                state.channel.close()

    # -- decisions ------------------------------------------------------------------------

    def _maybe_source(self, conn: VmConn, state: _Conn) -> None:
        request, uuid = state.request, state.uuid
        if request is None or uuid is None:
            return
        key = self._hub.key_for(request, uuid)
        if self._node.serves(key):
            self._local(conn, state)
            return
        state.task = self._node.spawn(self._decide_source(conn, state, key, request))

    async def _decide_peer(self, conn: VmConn, state: _Conn, cookie: bytes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COOKIE_WAIT
        owner = None
        pause = 0.002
        while state.mode is Mode.DECIDING:
            if self._hub.has_cookie(cookie):
                break
            try:
                owner = await self._node.registry.cookie_owner(cookie)
            except RegistryUnavailable as exc:
                log.warning("VM %s: PEER cannot be routed: %s", state.channel.peer, exc)
                break
            if owner is not None or loop.time() >= deadline:
                break
            # The owner publishes the cookie just after GOAHEAD (ESXi's destination
            # comes 1 s later; a test or a benchmark may be quicker).
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        if state.mode is not Mode.DECIDING:
            return
        if owner is None or owner == self._node.node_id or isinstance(state.channel, RemoteVm):
            self._local(conn, state)  # the hub answers an unknown cookie with silence (F5)
            return
        link = await self._node.link_to(owner)
        if state.mode is not Mode.DECIDING:
            return
        if link is None:
            log.warning(
                "VM %s: PEER for node %s, which cannot be reached", state.channel.peer, owner
            )
            self._local(conn, state)
            return
        self._relay(conn, state, link)

    async def _decide_source(
        self, conn: VmConn, state: _Conn, key: ConsoleKey, request: ProxyRequested
    ) -> None:
        node = self._node
        loop = asyncio.get_running_loop()
        # Long enough for a dead owner's lease to run out (then we take over).
        deadline = loop.time() + node.lease * 2 + 1.0
        while state.mode is Mode.DECIDING:
            try:
                owner = await node.claim(key, request, state.name)
            except RegistryUnavailable as exc:
                if node.serves(key):
                    self._local(conn, state)
                else:
                    log.warning(
                        "VM %s (console %s) refused: %s; it will reconnect",
                        state.channel.peer,
                        key,
                        exc,
                    )
                    self._give_up(conn, state)
                return
            if state.mode is not Mode.DECIDING:
                return
            if owner is None:
                self._local(conn, state)
                return
            if isinstance(state.channel, RemoteVm):
                # Relayed to us by a node that thought we own it: never relay twice.
                log.warning(
                    "VM %s: console %s is %s's now; closing", state.channel.peer, key, owner
                )
                self._give_up(conn, state)
                return
            link = await node.link_to(owner)
            if state.mode is not Mode.DECIDING:
                return
            if link is not None:
                self._relay(conn, state, link)
                return
            if loop.time() >= deadline:
                log.warning(
                    "VM %s: console %s belongs to node %s, which cannot be reached and "
                    "whose lease does not expire; closing",
                    state.channel.peer,
                    key,
                    owner,
                )
                self._give_up(conn, state)
                return
            await asyncio.sleep(min(0.25, node.lease / 4))  # its lease may run out

    def _local(self, conn: VmConn, state: _Conn) -> None:
        state.mode, state.task = Mode.LOCAL, None
        held, state.held = state.held, []
        for event in held:
            self._hub.vm_event(conn, event)
        if state.congested:
            self._hub.vm_congested(conn, True)

    def _relay(self, conn: VmConn, state: _Conn, link: PeerLink) -> None:
        state.mode, state.task, state.link = Mode.RELAY, None, link
        state.link_channel = self._node.open_relay(link, state.channel)
        self.relayed += 1
        link.send(VmOpen(state.link_channel, state.channel.peer))
        held, state.held = state.held, []
        for event in held:
            link.send(VmEvent(state.link_channel, event))
        if state.congested:
            link.send(VmCongested(state.link_channel, True))
        log.info("VM %s: relayed to node %s", state.channel.peer, link.peer_node)

    def _give_up(self, conn: VmConn, state: _Conn) -> None:
        state.mode, state.task, state.held = Mode.GONE, None, []
        state.channel.close()
