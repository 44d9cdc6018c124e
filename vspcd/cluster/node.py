"""One cluster node: its lease, its claims, its inter-node links, reconciliation.

Spec: docs/cluster.md ("Design", "Failure modes").  Boundary: everything async
that cluster mode adds around the (synchronous) hub lives here; Redis is reached only
through vspcd/cluster/registry.py, the other nodes only through vspcd/cluster/links.py.

Theory of operation
-------------------
- **Lease.** `node:<id>` in Redis with a TTL of `--cluster-lease`, renewed every third
  of it.  A renewal that finds the key gone (first start, Redis restarted, or we were
  cut off longer than the lease) takes it again and *reconciles*
  (vspcd/cluster/mirror.py): every console this hub serves is republished by
  compare-and-set; one that another live node won meanwhile is dropped here (its VM
  connection is closed, so ESXi reconnects and is relayed to the winner).
- **Claims.** The gate (vspcd/cluster/placement.py) asks `claim(key)` before a source
  connection is bound: ours (the console is restored onto its cluster-wide sticky
  telnet port if this hub does not have it yet) or another live node's (relay).
- **Registry writes** follow hub events (vspcd/cluster/mirror.py), so a slow Redis
  never stalls the data path; a write that fails marks the mirror dirty and the next
  successful lease renewal reconciles.
- **Links.** One dialed link per peer node, reused; inbound links are served the same
  way.  Relayed VM connections, `Call`s (cluster-wide `list`) and spliced admin
  streams share them.
- **Redis unreachable.** Nothing here raises into the hub or a link: consoles already
  served keep working, new claims and cookie lookups are refused with the reason in
  the log, and the lease loop retries with exponential back-off (capped at the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from vspc.common import vmware as vm
from vspc.common.admin import ConsoleInfo
from vspc.common.peerlink import (
    Call,
    LocalProtocolError,
    Message,
    Result,
    Side,
    StreamClose,
    StreamData,
    StreamOpen,
    VmClose,
    VmClosed,
    VmCongested,
    VmEvent,
    VmGoahead,
    VmHeard,
    VmNotNow,
    VmOpen,
    VmPeerOk,
    VmProbe,
    VmSend,
)
from vspc.common.session import ProxyRequested
from vspc.vspcd.cluster.links import PeerLink, RemoteVm, warnings
from vspc.vspcd.cluster.mirror import Mirror
from vspc.vspcd.cluster.placement import Gate
from vspc.vspcd.cluster.registry import ConsoleRecord, Registry, RegistryUnavailable
from vspc.vspcd.cluster.settings import ClusterSettings
from vspc.vspcd.cluster.streams import StreamSink
from vspc.vspcd.hub.console import ConsoleKey, VmChannel, VmConn
from vspc.vspcd.hub.hub import Hub

log = logging.getLogger(__name__)

__all__ = ["ClusterNode", "NodeIdInUse", "StreamHandler", "TelnetPorts"]

CONNECT_TIMEOUT = 2.0
MAX_HANDSHAKES = 64  # inbound inter-node connections not yet authenticated
ORPHAN_SWEEP = 30  # lease renewals between two sweeps for consoles of dead nodes
CALL_TIMEOUT = 3.0

# (link, channel, head) -> a sink for the stream's bytes from the peer, or None to refuse
StreamHandler = Callable[[PeerLink, int, dict[str, Any]], StreamSink | None]


class TelnetPorts(Protocol):
    """How the node binds the telnet ports of the consoles it takes (vspcd/service/server.py)."""

    def bind_exact(self, port: int) -> bool:
        """Bind exactly `port`; False if it is busy on this host."""
        ...

    def bind_any(self) -> int | None:
        """Bind the lowest free port of the range; None if none is free."""
        ...

    def release(self, port: int) -> None: ...


class NodeIdInUse(OSError):
    """Another live node holds our --node-id: two nodes must never share one (their
    claims and leases would be indistinguishable).  An OSError, so the daemon exits
    with "cannot start: ..." like for an address in use."""


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _orphan_row(record: ConsoleRecord) -> dict[str, Any]:
    """A `list` row for a console of a dead node, from what the registry knows."""
    name = record.name or vm.display_uuid(record.uuid)
    info = ConsoleInfo(
        key=record.key,
        name=f"{name}_{record.label}" if record.label else name,
        uuid=vm.display_uuid(record.uuid),
        vm_name=record.name,
        label=record.label,
        port=record.port,
    )
    return {**info.to_json(), "node": record.owner, "node_down": True}


class ClusterNode:
    """Cluster mode around one hub (see the module docstring).

    Args:
        settings: the node's share of the configuration (vspcd/cluster/settings.py).
        hub: this daemon's hub.
        ports: binds the telnet ports of consoles this node takes (None: --no-vm-ports).
        prefix: Redis key prefix (tests run one cluster per prefix or per server).
    """

    def __init__(
        self,
        settings: ClusterSettings,
        hub: Hub,
        ports: TelnetPorts | None,
        *,
        prefix: str = "vspc:",
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.address = settings.node_address
        self.lease = settings.lease
        self._secret = settings.secret_file.read_bytes().strip()
        self.hub = hub
        self._ports = ports
        self.registry = Registry(settings.registry, self.node_id, prefix=prefix)
        self.gate = Gate(self, hub)
        self.available = False  # the registry answered the last call
        self._tasks: set[asyncio.Task[Any]] = set()
        self.mirror = Mirror(
            self.node_id, hub, self.registry, self.spawn, settings.vmotion_abandon + self.lease
        )
        self._links: dict[str, PeerLink] = {}  # dialed, by peer node id
        self._dialing: dict[str, asyncio.Task[PeerLink | None]] = {}
        self._inbound: set[PeerLink] = set()
        self._served: dict[tuple[PeerLink, int], VmConn] = {}  # relayed to us
        self._relays: dict[tuple[PeerLink, int], VmChannel] = {}  # we relay
        self._calls: dict[tuple[PeerLink, int], asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[tuple[PeerLink, int], StreamSink] = {}
        self._server: asyncio.Server | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.rows_provider: Callable[[], list[dict[str, Any]]] = list
        self.stream_handler: StreamHandler | None = None
        # Runs an admin request forwarded by another node (vspcd/cluster/forward.py).
        self.admin_handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        # More `Call` ops answered here, by name (vspcd/cluster/forward.py adds some).
        self.calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.lease_acquired = asyncio.Event()  # set after the first reconciliation
        self._reconcile_task: asyncio.Task[None] | None = None

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for peers, take the lease (or keep trying in the background).

        Raises:
            NodeIdInUse: a live node elsewhere has our --node-id.
            OSError: --node-address cannot be bound.
        """
        try:
            holder = await self.registry.node_address(self.node_id)
        except RegistryUnavailable as exc:
            log.warning("%s; starting anyway, the registry is retried", exc)
            holder = None
        if holder is not None and holder != self.address:
            raise NodeIdInUse(
                f"node id {self.node_id!r} is held by a live node at {holder}; give this "
                f"node another --node-id (if that node is dead, its lease ends within "
                f"{self.lease:g} s)"
            )
        host, port = _host_port(self.address)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._inbound_link(), host, port, reuse_address=True
        )
        self._unsubscribe = self.hub.subscribe(self.mirror.observe)
        self.spawn(self._lease_loop())
        self.mirror.start()
        log.info(
            "cluster node %s: registry %s, links on %s",
            self.node_id,
            self.settings.registry,
            self.address,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: redis-py can sit on a cancelled command until its socket
            # times out; shutdown does not wait for that.
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for link in [*self._links.values(), *self._inbound]:
            link.close()
        try:
            async with asyncio.timeout(1.0):
                await self.registry.drop_lease()  # others may take over at once
        except (RegistryUnavailable, TimeoutError):
            pass
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.registry.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster task failed", exc_info=task.exception())

    # -- lease and reconciliation -----------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew the lease every third of it, on the monotonic clock.

        Only Redis's TTL decides whether this node is alive for the others; the node
        never concludes anything about itself from its own clock.  The schedule is
        measured from when a renewal was *sent*, so a slow answer or a late wake-up
        does not push the next one later; a failed renewal is retried soon enough to
        save a lease that may still be running (back-off only once it surely ran out);
        and reconciliation runs beside the renewals, never between two of them, so a
        node with many consoles does not let its own lease lapse while republishing
        them.  Late renewals are logged (docs/cluster.md "Reliability").
        """
        loop = asyncio.get_running_loop()
        backoff = 0.1
        renewals = 0
        held_until = 0.0  # monotonic: our key in Redis lives at least until then
        while True:
            sent = loop.time()
            try:
                fresh = await self.registry.renew_lease(self.address, self.lease, os.getpid())
            except RegistryUnavailable as exc:
                if self.available:
                    log.error("%s; serving the consoles this node has, retrying", exc)
                self.available = False
                self.mirror.dirty = True
                left = held_until - loop.time()
                # While the lease may still run, retry within a fraction of what is
                # left; afterwards back off (Redis is down, not just slow).
                pause = min(backoff, left / 3) if left > 0 else backoff
                await asyncio.sleep(max(pause, 0.02))
                backoff = min(backoff * 2, self.lease)
                continue
            if not self.available:
                log.info("cluster node %s: registry reachable", self.node_id)
                self.available = True
            if not fresh and held_until > 0:
                since = sent - (held_until - self.lease)
                log.warning(
                    "cluster node %s: its lease was gone (renewal %.2f s after the last "
                    "confirmed one, lease %g s: %s); taken again, reconciling",
                    self.node_id,
                    since,
                    self.lease,
                    "the node was stalled or cut off"
                    if since >= self.lease
                    else "the registry lost it, e.g. Redis restarted",
                )
            elif held_until and sent > held_until - self.lease / 3:
                log.warning(
                    "cluster node %s: lease renewed late (%.2f s after the last, "
                    "lease %g s): is the host overloaded?",
                    self.node_id,
                    sent - (held_until - self.lease),
                    self.lease,
                )
            held_until = sent + self.lease
            if (not fresh or self.mirror.dirty) and not self._reconciling():
                self._reconcile_task = self.spawn(self._reconcile())
            renewals += 1
            if renewals % ORPHAN_SWEEP == 0:
                self.spawn(self._expire_orphans())
            backoff = 0.1
            await asyncio.sleep(max(0.0, sent + self.lease / 3 - loop.time()))

    def _reconciling(self) -> bool:
        return self._reconcile_task is not None and not self._reconcile_task.done()

    async def _reconcile(self) -> None:
        try:
            await self.mirror.reconcile()
        except RegistryUnavailable as exc:
            log.warning("reconciliation interrupted (%s); retried at the next renewal", exc)
            self.mirror.dirty = True
            return
        self.lease_acquired.set()

    async def _expire_orphans(self) -> None:
        # Consoles of dead nodes whose VMs never came back expire like idle consoles
        # on one node (--vm-expire-time).
        try:
            gone = await self.registry.expire_orphans(self.settings.vm_expire_time)
        except RegistryUnavailable as exc:
            log.debug("orphan sweep skipped: %s", exc)
            return
        if gone:
            log.info("registry: %d console(s) of dead nodes expired", gone)

    def serves(self, key: ConsoleKey) -> bool:
        """This node owns `key` and its hub has the console."""
        return key in self.mirror.owned and self.hub.console(key) is not None

    async def claim(self, key: ConsoleKey, request: ProxyRequested, name: str | None) -> str | None:
        """Make `key` ours (None) unless another live node owns it (its id).

        The console's telnet port is the registry's (the same on whichever node serves
        it) and is bound here *exactly*: a node must never list a port it does not
        listen on.  When that port is busy on this host (another process holds it),
        the node binds a free port of its own and offers it; the registry takes the
        offer unless another console has it, so a block of busy ports costs one more
        round trip, not one per port.

        Raises:
            RegistryUnavailable: Redis cannot be reached, or no telnet port binds.
        """
        bad: int | None = None
        offer: int | None = None
        held: list[int] = []  # ports bound here to offer; those not taken are released
        try:
            for _ in range(16):
                if self.serves(key):
                    return None
                claim = await self.registry.claim(
                    str(key),
                    uuid=key.uuid,
                    label=key.label,
                    name=name or "",
                    uri=request.service_uri,
                    first_port=self.settings.port_range_start,
                    bad_port=bad,
                    offer_port=offer,
                )
                if not claim.claimed:
                    return claim.owner
                if self.hub.console(key) is None:
                    port = claim.port if self._ports is not None else None
                    # An offer not taken (another console has that port elsewhere)
                    # stays bound until the end, so the next offer is another port.
                    offer = None
                    if port is not None and port not in held and not self._bind_exact(port):
                        log.warning(
                            "%s: telnet port %d is busy on this host; offering another", key, port
                        )
                        bad = port
                        offer = self._bind_any()
                        if offer is not None:
                            held.append(offer)
                        continue
                    if port in held:
                        held.remove(port)  # the console's now
                    record = await self.registry.console(str(key))
                    remembered = record.name if record is not None else ""
                    self.hub.restore(
                        key,
                        name or remembered or vm.display_uuid(key.uuid),
                        port,
                        request.service_uri,
                    )
                self.mirror.owned.add(key)
                if claim.previous:
                    log.warning(
                        "%s: taken over from node %s, whose lease expired", key, claim.previous
                    )
                return None
            raise RegistryUnavailable(f"no telnet port for {key} could be bound on this node")
        finally:
            if self._ports is not None:
                for port in held:
                    self._ports.release(port)

    def _bind_exact(self, port: int) -> bool:
        return self._ports is not None and self._ports.bind_exact(port)

    def _bind_any(self) -> int | None:
        return None if self._ports is None else self._ports.bind_any()

    # -- links ------------------------------------------------------------------------------

    def _inbound_link(self) -> PeerLink:
        # Strangers cannot get past the handshake, but each holds a socket for up to
        # AUTH_TIMEOUT: cap how many may wait at once.
        pending = sum(1 for link in self._inbound if not link.ready.done())
        link = PeerLink(
            self, Side.LISTENER, self.node_id, self._secret, refuse=pending >= MAX_HANDSHAKES
        )
        self._inbound.add(link)
        return link

    async def link_to(self, node: str) -> PeerLink | None:
        """An authenticated link to `node`, dialing it if need be; None if it cannot be
        reached (not registered, refused, or the handshake failed)."""
        link = self._links.get(node)
        if link is not None and not link.closed:
            return link
        task = self._dialing.get(node)
        if task is None:
            task = self.spawn(self._dial(node))
            self._dialing[node] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None

    async def _dial(self, node: str) -> PeerLink | None:
        try:
            address = await self.registry.node_address(node)
            if address is None:
                return None
            host, port = _host_port(address)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, link = await loop.create_connection(
                    lambda: PeerLink(self, Side.DIALER, self.node_id, self._secret), host, port
                )
                await link.ready
            if link.peer_node != node:
                log.warning("node %s at %s calls itself %s; dropped", node, address, link.peer_node)
                link.close()
                return None
            self._links[node] = link
            return link
        except (OSError, TimeoutError, ConnectionError, RegistryUnavailable) as exc:
            log.info("cannot reach node %s: %s", node, exc)
            return None
        finally:
            self._dialing.pop(node, None)

    def open_relay(self, link: PeerLink, channel: VmChannel) -> int:
        number = link.new_channel()
        self._relays[(link, number)] = channel
        return number

    def forget_relay(self, link: PeerLink, number: int) -> None:
        self._relays.pop((link, number), None)

    def on_message(self, link: PeerLink, message: Message) -> None:
        gate = self.gate
        match message:
            # -- a node relays an ESXi connection to us (we own its console)
            case VmOpen(ch, peer):
                self._served[(link, ch)] = gate.vm_connected(RemoteVm(link, ch, peer))
            case VmEvent(ch, event):
                if (conn := self._served.get((link, ch))) is not None:
                    gate.vm_event(conn, event)
            case VmHeard(ch):
                if (conn := self._served.get((link, ch))) is not None:
                    gate.vm_heard(conn)
            case VmCongested(ch, congested):
                if (conn := self._served.get((link, ch))) is not None:
                    gate.vm_congested(conn, congested)
            case VmClosed(ch):
                if (conn := self._served.pop((link, ch), None)) is not None:
                    gate.vm_closed(conn)
            # -- the owner answers on a connection we relay
            case VmSend(ch, data):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.send_console(data)
            case VmGoahead(ch, sequence, secret):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.goahead(sequence, secret)
            case VmNotNow(ch, sequence):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.notnow(sequence)
            case VmPeerOk(ch, sequence):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.peer_ok(sequence)
            case VmProbe(ch):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.probe()
            case VmClose(ch):
                if (channel := self._relays.get((link, ch))) is not None:
                    channel.close()
            # -- calls and admin streams
            case Call(ch, request):
                try:
                    link.send(Result(ch, self._answer(request)))
                except LocalProtocolError as exc:  # an answer over MAX_FRAME
                    log.error("inter-node call %r: %s", request.get("op"), exc)
                    link.send(Result(ch, {"error": str(exc)}))
            case Result(ch, result):
                future = self._calls.pop((link, ch), None)
                if future is not None and not future.done():
                    future.set_result(result)
            case StreamOpen(ch, head):
                sink = None if self.stream_handler is None else self.stream_handler(link, ch, head)
                if sink is None:
                    link.send(StreamClose(ch))
                else:
                    self._streams[(link, ch)] = sink
            case StreamData(ch, data):
                if (sink := self._streams.get((link, ch))) is not None:
                    sink.data(data)
            case StreamClose(ch):
                if (sink := self._streams.pop((link, ch), None)) is not None:
                    sink.closed()
            case _:
                warnings().log(
                    "unexpected inter-node messages",
                    "inter-node link %s: unexpected %s",
                    link.peer,
                    type(message).__name__,
                )

    def on_link_lost(self, link: PeerLink) -> None:
        self._inbound.discard(link)
        if self._links.get(link.peer_node or "") is link:
            del self._links[link.peer_node or ""]
        for item in [k for k in self._served if k[0] is link]:
            conn = self._served.pop(item)
            channel = conn.channel
            if isinstance(channel, RemoteVm):
                channel.closed = True
            self.gate.vm_closed(conn)
        for item in [k for k in self._relays if k[0] is link]:
            del self._relays[item]
        self.gate.link_lost(link)
        for item in [k for k in self._calls if k[0] is link]:
            future = self._calls.pop(item)
            if not future.done():
                future.set_exception(ConnectionError("inter-node link lost"))
        for item in [k for k in self._streams if k[0] is link]:
            self._streams.pop(item).closed()

    def register_stream(self, link: PeerLink, channel: int, sink: StreamSink) -> None:
        self._streams[(link, channel)] = sink

    def forget_stream(self, link: PeerLink, channel: int) -> None:
        self._streams.pop((link, channel), None)

    # -- cluster-wide queries ---------------------------------------------------------------

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "rows":
            return {"rows": self.local_rows()}
        if request.get("op") == "admin" and self.admin_handler is not None:
            return self.admin_handler(request)
        handler = self.calls.get(str(request.get("op")))
        if handler is not None:
            return handler(request)
        return {"error": f"unknown call {request.get('op')!r}"}

    def local_rows(self) -> list[dict[str, Any]]:
        """This hub's `list` rows, each with `node` and `telnet_host` (where an
        operator telnets to the row's `port`)."""
        rows = self.rows_provider()
        host = self.telnet_host
        for row in rows:
            row["node"] = self.node_id
            row["telnet_host"] = host
        return rows

    @property
    def telnet_host(self) -> str:
        """-i/--vm-iface, or for a wildcard the host part of --node-address."""
        iface = self.settings.vm_iface
        if iface in ("", "0.0.0.0", "::"):
            return _host_port(self.address)[0]
        return iface

    async def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to another node, one answer (raises ConnectionError/TimeoutError)."""
        link = await self.link_to(node)
        if link is None:
            raise ConnectionError(f"node {node} cannot be reached")
        number = link.new_channel()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[(link, number)] = future
        link.send(Call(number, request))
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await future
        finally:
            self._calls.pop((link, number), None)

    async def cluster_rows(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every console of the cluster with the node serving it, and a note per node
        that could not be asked.

        Raises:
            RegistryUnavailable: the node list cannot be read.
        """
        rows = self.local_rows()
        nodes = await self.registry.live_nodes()
        others = sorted(n for n in nodes if n != self.node_id)
        results = await asyncio.gather(
            *(self.call(n, {"op": "rows"}) for n in others), return_exceptions=True
        )
        missing: list[str] = []
        for node, result in zip(others, results, strict=True):
            if isinstance(result, BaseException) or "error" in result:
                missing.append(
                    f"{node}: {result if isinstance(result, BaseException) else result['error']}"
                )
                continue
            for row in result.get("rows", []):
                if isinstance(row, dict):
                    row["node"] = node
                    rows.append(row)
        # Consoles whose node is dead and that nobody took over yet: their VM has not
        # reconnected.  Listed from the registry, disconnected, with `node_down`.
        listed = {str(r.get("key")) for r in rows}
        for record in await self.registry.consoles():
            if record.key not in listed and record.owner not in nodes:
                rows.append(_orphan_row(record))
        rows.sort(key=lambda r: str(r.get("key", "")))
        return rows, missing

    async def owners_of(self, spec: str) -> list[tuple[str, str]]:
        """(node, display name) of every console on another node that an operator's
        `spec` names, by the rules of `Hub.find` in its order: display name or key,
        then UUID (the unlabelled console first), then VM name, then telnet port."""
        records = [r for r in await self.registry.consoles() if r.owner != self.node_id]

        def display(record: ConsoleRecord) -> str:
            return f"{record.name}_{record.label}" if record.label else record.name

        try:
            spec_uuid: str | None = vm.canonical_uuid(spec)
        except ValueError:
            spec_uuid = None
        found = [r for r in records if spec in (r.key, display(r))]
        if not found and spec_uuid is not None:
            found = [r for r in records if r.uuid == spec_uuid]
            found = [r for r in found if not r.label] or found
        if not found:
            found = [r for r in records if r.name == spec]
        if not found and spec.isdigit():
            found = [r for r in records if r.port == int(spec)]
        return [(r.owner, display(r)) for r in found]
