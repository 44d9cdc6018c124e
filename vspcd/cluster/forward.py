"""Any node answers: admin requests about consoles another node serves.

Spec: docs/cluster.md ("Any node answers"), docs/admin-protocol.md.  The
admin server (vspcd/faces/admin/) offers every validated request to `Forwarder.takes`:

- `list` / `subscribe`'s snapshot stay local; `list` is answered here with every
  console of the cluster: this node's rows plus each live node's, asked over the
  inter-node link (`Call {"op": "rows"}`), each row with an added `node` field.  If
  the registry cannot be read the reply carries this node's rows and a
  `cluster_error` saying why; a node that does not answer is named in
  `cluster_missing`.
- `show`, `clear`, `tail` (without follow) and `untail` naming a console this hub does
  not have are looked up in the registry and executed by the owner (`Call {"op":
  "admin"}`), with the asking operator's identity (uid, gid, groups, user, how it
  was known); the owner judges it with its own access rules and replies unchanged
  (docs/security.md "Who may do what").
- `subscribe` subscribes to every node: each other live node runs a relayed
  `subscribe` session (a *feed*) whose snapshot joins this node's rows in the reply
  and whose event lines follow, tagged with `node`.  Nodes that join later are not
  followed (subscribe again); a feed ends at its next event once the operator
  unsubscribed or left.
- `kick` of a client id this node does not have goes to the one other node that
  has it (ids are per node; if several nodes have it the reply says which, and the
  operator kicks it there).
- `attach` and `tail` with follow naming such a console **splice** the connection to
  the owner: the owner runs a full admin session (`AdminLink` over `_StreamTransport`)
  whose first request is this one, and from then on the bytes of the connection flow
  both ways over the inter-node link (`StreamOpen`/`StreamData`/`StreamClose`), so
  locks, the attach channel and followed output behave exactly as on the owner.

The request's id is kept, and the admin link reads no further request until the
answer is in, so replies stay in request order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from enum import Enum
from typing import Any

from vspc.common.admin import (
    AdminError,
    ErrorCode,
    Request,
    encode_message,
    failed,
    ok,
    validate_request,
)
from vspc.common.peerlink import StreamClose, StreamData, StreamOpen
from vspc.vspcd.cluster.links import PeerLink
from vspc.vspcd.cluster.node import ClusterNode
from vspc.vspcd.cluster.registry import RegistryUnavailable
from vspc.vspcd.cluster.streams import (
    BackToOperator,
    Feed,
    FromOperator,
    StreamSink,
    StreamTransport,
    end_feed,
)
from vspc.vspcd.faces.admin.handlers import HANDLERS, Reply
from vspc.vspcd.faces.admin.link import AdminLink, Mode
from vspc.vspcd.faces.admin.policy import Identity, Source
from vspc.vspcd.faces.admin.server import AdminServer
from vspc.vspcd.hub.hub import HubError

log = logging.getLogger(__name__)

__all__ = ["Forwarder"]

_CALLED = frozenset({"show", "clear", "tail", "untail", "kick"})  # one request, one reply
_FORWARDED = _CALLED | {"attach"}


def _wire(request: Request) -> dict[str, Any]:
    """A validated request back as the JSON object that produced it."""
    obj: dict[str, Any] = {"cmd": request.cmd}
    if request.id is not None:
        obj["id"] = request.id
    for name, value in request.fields.items():
        if value is not None:
            obj[name] = value.value if isinstance(value, Enum) else value
    return obj


def _identity(link: AdminLink) -> dict[str, Any]:
    me = link.identity
    return {
        "address": f"{me.address} via {link.server.cluster_node_id}",
        "uid": me.uid,
        "gid": me.gid,
        "user": me.user,
        "groups": sorted(me.groups),
        "source": me.source.value,
    }


def _parse_identity(who: dict[str, Any]) -> Identity:
    """The operator a relayed request runs as; the owner judges it with its own rules.

    Raises ValueError on a bad source (a node that sends none, an older one, is
    judged as unknown credentials: no access).
    """
    uid, gid, user, groups = who.get("uid"), who.get("gid"), who.get("user"), who.get("groups")
    gids = groups if isinstance(groups, list) else []
    return Identity(
        str(who.get("address", "?")),
        uid if isinstance(uid, int) else None,
        gid if isinstance(gid, int) else None,
        user if isinstance(user, str) else None,
        frozenset(g for g in gids if isinstance(g, int) and not isinstance(g, bool)),
        Source(who.get("source", Source.UNKNOWN.value)),
    )


class Forwarder:
    """The admin server's `RemoteRequests` in cluster mode."""

    def __init__(self, node: ClusterNode, server: AdminServer) -> None:
        self._node = node
        self._server = server
        node.admin_handler = self.answer
        node.stream_handler = self.open_stream
        node.calls["has_client"] = self.answer_has_client

    def takes(self, link: AdminLink, request: Request) -> bool:
        if link.relayed and request.cmd != "list":
            return False  # one hop only: a relayed session is answered here
        if request.cmd == "subscribe":
            self._run_async(link, request, self._subscribe(link, request))
            return True
        if request.cmd == "list":
            self._run_async(link, request, self._list(link, request))
            return True
        if request.cmd == "kick":
            if self._has_client(request.fields["client"]):
                return False
            self._run_async(link, request, self._kick(link, request))
            return True
        if request.cmd not in _FORWARDED:
            return False
        spec = request.fields.get("vm")
        port = request.fields.get("port")
        hub = self._server.hub
        if port is not None:
            if hub.console_by_port(port) is not None:
                return False
            spec = str(port)
        else:
            try:
                hub.find(str(spec))
                return False
            except HubError as exc:
                if exc.code is not ErrorCode.VM_NOT_FOUND:
                    return False  # ambiguous here: the local answer says so
        if request.cmd == "attach" or (request.cmd == "tail" and request.fields.get("follow")):
            self._run_async(link, request, self._splice(link, request, str(spec)))
        else:
            self._run_async(link, request, self._forward(link, request, str(spec)))
        return True

    def _run_async(
        self, link: AdminLink, request: Request, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run `work`, which answers through `link.remote_done`; if it fails instead,
        answer `internal`, so the link never waits forever."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("admin %s: forwarding %s failed", link.identity, request.cmd)
                if link.mode is Mode.JSON:
                    link.remote_done(
                        failed(ErrorCode.INTERNAL, "internal error; vspcd logged it", request.id)
                    )

        self._node.spawn(guarded())

    async def _list(self, link: AdminLink, request: Request) -> None:
        # Rows of other nodes are judged here, with this node's rules (every node
        # loads the same configuration; docs/security.md).
        try:
            rows, missing = await self._node.cluster_rows()
            reply = ok(request.id, vms=[r for r in rows if link.row_visible(r)])
            if missing:
                reply["cluster_missing"] = missing
        except RegistryUnavailable as exc:
            rows = [r for r in self._node.local_rows() if link.row_visible(r)]
            reply = ok(request.id, vms=rows, cluster_error=str(exc))
        link.remote_done(reply)

    async def _locate(self, link: AdminLink, request: Request, spec: str) -> str | None:
        """The node serving the console `spec` names; None once it has replied
        itself (not found, ambiguous, registry unreachable)."""
        try:
            owners = await self._node.owners_of(spec)
        except RegistryUnavailable as exc:
            link.remote_done(
                failed(ErrorCode.VM_NOT_FOUND, f"not on this node, and {exc}", request.id)
            )
            return None
        if not owners:
            link.remote_done(self._run(link, request))  # the local answer: not found
            return None
        if len(owners) > 1:
            names = ", ".join(sorted(f"{name} (node {node})" for node, name in owners))
            link.remote_done(
                failed(
                    ErrorCode.AMBIGUOUS_VM,
                    f"{spec!r} matches several consoles: {names}",
                    request.id,
                )
            )
            return None
        return owners[0][0]

    async def _forward(self, link: AdminLink, request: Request, spec: str) -> None:
        owner = await self._locate(link, request, spec)
        if owner is None:
            return
        call = {"op": "admin", "request": _wire(request), "identity": _identity(link)}
        try:
            result = await self._node.call(owner, call)
        except (ConnectionError, TimeoutError) as exc:
            link.remote_done(
                failed(
                    ErrorCode.VM_NOT_FOUND,
                    f"served by node {owner}, unreachable: {exc}",
                    request.id,
                )
            )
            return
        reply = result.get("reply")
        if not isinstance(reply, dict):
            reply = failed(ErrorCode.INTERNAL, f"node {owner} gave no reply", request.id)
        link.remote_done(reply)

    async def _splice(self, link: AdminLink, request: Request, spec: str) -> None:
        node = self._node
        owner = await self._locate(link, request, spec)
        if owner is None:
            return
        peer = await node.link_to(owner)
        if peer is None:
            link.remote_done(
                failed(ErrorCode.VM_NOT_FOUND, f"served by node {owner}, unreachable", request.id)
            )
            return
        if link.mode is not Mode.JSON:
            return  # the operator left meanwhile
        channel = peer.new_channel()
        node.register_stream(peer, channel, BackToOperator(link))
        peer.send(StreamOpen(channel, {"identity": _identity(link), "request": _wire(request)}))

        def closed() -> None:
            node.forget_stream(peer, channel)
            peer.send(StreamClose(channel))

        pending = link.splice(lambda data: peer.send(StreamData(channel, data)), closed)
        if pending:
            peer.send(StreamData(channel, pending))
        log.info("admin %s: %s %s spliced to node %s", link.identity, request.cmd, spec, owner)

    def open_stream(self, peer: PeerLink, channel: int, head: dict[str, Any]) -> StreamSink | None:
        """On the owner: a spliced admin session from another node."""
        raw, who = head.get("request"), head.get("identity")
        if not isinstance(raw, dict) or not isinstance(who, dict):
            return None
        try:
            identity = _parse_identity(who)
        except ValueError:
            return None
        link = AdminLink(self._server, unix=False)
        link.relayed = True
        transport = StreamTransport(self._node, peer, channel, link, identity.address)
        link.connection_made(transport)
        link.identity = identity
        link.peer = identity.address
        link.data_received(encode_message(raw))
        return FromOperator(link, transport)

    async def _subscribe(self, link: AdminLink, request: Request) -> None:
        """Events from every node: a feed (a relayed `subscribe` session) per other
        node, whose snapshot joins this node's rows in the reply; the events each feed
        sends before the reply wait and follow it."""
        node = self._node
        try:
            nodes = await node.registry.live_nodes()
        except RegistryUnavailable as exc:
            link.subscribed = True
            mine = [r for r in node.local_rows() if link.row_visible(r)]
            link.remote_done(ok(request.id, vms=mine, cluster_error=str(exc)))
            return
        feeds: list[Feed] = []
        missing: list[str] = []
        for name in sorted(n for n in nodes if n != node.node_id):
            peer = await node.link_to(name)
            if peer is None:
                missing.append(f"{name}: unreachable")
                continue
            channel = peer.new_channel()
            feed = Feed(link, name, functools.partial(end_feed, node, peer, channel))
            node.register_stream(peer, channel, feed)
            request_line = {"cmd": "subscribe", "id": 0}
            peer.send(StreamOpen(channel, {"identity": _identity(link), "request": request_line}))
            feeds.append(feed)
        rows: list[dict[str, Any]] = []
        for feed in feeds:
            try:
                async with asyncio.timeout(5.0):
                    rows += await feed.snapshot
            except (TimeoutError, ConnectionError) as exc:
                missing.append(f"{feed.node}: {exc or 'no answer'}")
                feed.stop()
        if link.mode is not Mode.JSON:
            for feed in feeds:
                feed.stop()
            return
        # One step, no await: this node's snapshot and its subscription, then the
        # reply, then what the feeds sent meanwhile.
        link.subscribed = True
        rows += [r for r in node.local_rows() if link.row_visible(r)]  # feeds' are judged there
        rows.sort(key=lambda r: str(r.get("key", "")))
        reply = ok(request.id, vms=rows)
        if missing:
            reply["cluster_missing"] = missing
        link.remote_done(reply)
        for feed in feeds:
            feed.go_live()

    def _has_client(self, ident: Any) -> bool:
        return any(
            client.ident == ident
            for console in self._server.hub.consoles()
            for client in console.clients
        )

    async def _kick(self, link: AdminLink, request: Request) -> None:
        """Client ids are per node: kick where exactly one other node has the id."""
        ident = request.fields["client"]
        try:
            nodes = await self._node.registry.live_nodes()
        except RegistryUnavailable as exc:
            link.remote_done(
                failed(ErrorCode.NOT_ATTACHED, f"no client {ident} here, and {exc}", request.id)
            )
            return
        others = sorted(n for n in nodes if n != self._node.node_id)
        answers = await asyncio.gather(
            *(self._node.call(n, {"op": "has_client", "client": ident}) for n in others),
            return_exceptions=True,
        )
        holders = [
            n for n, a in zip(others, answers, strict=True) if isinstance(a, dict) and a.get("has")
        ]
        if len(holders) != 1:
            where = f"on nodes {', '.join(holders)}; run kick there" if holders else "anywhere"
            link.remote_done(
                failed(ErrorCode.NOT_ATTACHED, f"client id {ident}: {where}", request.id)
            )
            return
        call = {"op": "admin", "request": _wire(request), "identity": _identity(link)}
        try:
            result = await self._node.call(holders[0], call)
        except (ConnectionError, TimeoutError) as exc:
            link.remote_done(
                failed(ErrorCode.NOT_ATTACHED, f"node {holders[0]}: {exc}", request.id)
            )
            return
        reply = result.get("reply")
        link.remote_done(
            reply if isinstance(reply, dict) else failed(ErrorCode.INTERNAL, "no reply", request.id)
        )

    def answer_has_client(self, call: dict[str, Any]) -> dict[str, Any]:
        return {"has": self._has_client(call.get("client"))}

    def _run(self, link: AdminLink, request: Request) -> Reply:
        handler = HANDLERS[request.cmd]
        try:
            return ok(request.id, **handler(link, request))
        except AdminError as exc:
            return exc.to_reply()
        except HubError as exc:
            return failed(exc.code, str(exc), request.id)

    def answer(self, call: dict[str, Any]) -> dict[str, Any]:
        """On the owner: run a forwarded request as the asking operator."""
        raw, who = call.get("request"), call.get("identity")
        if not isinstance(raw, dict) or not isinstance(who, dict):
            return {"reply": failed(ErrorCode.INTERNAL, "malformed forwarded request", None)}
        try:
            request = validate_request(raw)
            if request.cmd not in _CALLED:
                raise AdminError(ErrorCode.PERMISSION_DENIED, "not forwardable", request.id)
            identity = _parse_identity(who)
        except (AdminError, ValueError) as exc:
            reply = exc.to_reply() if isinstance(exc, AdminError) else None
            return {"reply": reply or failed(ErrorCode.BAD_FIELD, str(exc), None)}
        link = AdminLink(self._server, unix=False)
        link.identity = identity
        return {"reply": self._run(link, request)}
