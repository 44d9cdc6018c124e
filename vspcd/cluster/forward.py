"""Any node answers: admin requests about consoles another node serves.

Spec: issue #13 ("Any node answers"), docs/cluster.md, docs/admin-protocol.md.  The
admin server (vspcd/admin.py) offers every validated request to `Forwarder.takes`:

- `list` / `subscribe`'s snapshot stay local; `list` is answered here with every
  console of the cluster: this node's rows plus each live node's, asked over the
  inter-node link (`Call {"op": "rows"}`), each row with an added `node` field.  If
  the registry cannot be read the reply carries this node's rows and a
  `cluster_error` saying why; a node that does not answer is named in
  `cluster_missing`.
- `show`, `clear`, `tail` (without follow) and `untail` naming a console this hub does
  not have are looked up in the registry and executed by the owner (`Call {"op":
  "admin"}`), with the asking operator's identity and access level; the owner's
  reply goes back unchanged.

The request's id is kept, and the admin link reads no further request until the
answer is in, so replies stay in request order.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

from vspc.common.admin import (
    Access,
    AdminError,
    ErrorCode,
    Request,
    failed,
    ok,
    validate_request,
)
from vspc.vspcd.admin import HANDLERS, AdminLink, AdminServer, Identity, Reply
from vspc.vspcd.cluster.node import ClusterNode
from vspc.vspcd.cluster.registry import RegistryUnavailable
from vspc.vspcd.hub import HubError

log = logging.getLogger(__name__)

__all__ = ["Forwarder"]

_FORWARDED = frozenset({"show", "clear", "tail", "untail"})


def _wire(request: Request) -> dict[str, Any]:
    """A validated request back as the JSON object that produced it."""
    obj: dict[str, Any] = {"cmd": request.cmd}
    if request.id is not None:
        obj["id"] = request.id
    for name, value in request.fields.items():
        if value is not None:
            obj[name] = value.value if isinstance(value, Enum) else value
    return obj


class Forwarder:
    """The admin server's `RemoteRequests` in cluster mode."""

    def __init__(self, node: ClusterNode, server: AdminServer) -> None:
        self._node = node
        self._server = server
        node.admin_handler = self.answer

    def takes(self, link: AdminLink, request: Request) -> bool:
        if request.cmd == "list":
            self._node.spawn(self._list(link, request))
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
            except HubError:
                pass
        if request.cmd == "tail" and request.fields.get("follow"):
            return False  # following another node's console is not forwarded (docs)
        self._node.spawn(self._forward(link, request, str(spec)))
        return True

    async def _list(self, link: AdminLink, request: Request) -> None:
        try:
            rows, missing = await self._node.cluster_rows()
            reply = ok(request.id, vms=rows)
            if missing:
                reply["cluster_missing"] = missing
        except RegistryUnavailable as exc:
            reply = ok(request.id, vms=self._node.local_rows(), cluster_error=str(exc))
        link.remote_done(reply)

    async def _forward(self, link: AdminLink, request: Request, spec: str) -> None:
        try:
            owner = await self._node.owner_of(spec)
        except RegistryUnavailable as exc:
            link.remote_done(
                failed(ErrorCode.VM_NOT_FOUND, f"not on this node, and {exc}", request.id)
            )
            return
        if owner is None:
            link.remote_done(self._run(link, request))  # the local answer: not found
            return
        me = link.identity
        call = {
            "op": "admin",
            "request": _wire(request),
            "identity": {
                "address": f"{me.address} via {self._node.node_id}",
                "uid": me.uid,
                "gid": me.gid,
                "user": me.user,
                "access": me.access.value,
            },
        }
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
            if request.cmd not in _FORWARDED:
                raise AdminError(ErrorCode.PERMISSION_DENIED, "not forwardable", request.id)
            identity = Identity(
                str(who.get("address", "?")),
                who.get("uid") if isinstance(who.get("uid"), int) else None,
                who.get("gid") if isinstance(who.get("gid"), int) else None,
                who.get("user") if isinstance(who.get("user"), str) else None,
                Access(who.get("access", Access.READONLY.value)),
            )
        except (AdminError, ValueError) as exc:
            reply = exc.to_reply() if isinstance(exc, AdminError) else None
            return {"reply": reply or failed(ErrorCode.BAD_FIELD, str(exc), None)}
        link = AdminLink(self._server, unix=False)
        link.identity = identity
        return {"reply": self._run(link, request)}
