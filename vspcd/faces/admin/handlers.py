"""The admin command handlers: one function per command of the protocol's table.

Boundary: each handler gets the connection (vspcd/faces/admin/link.py) and the
validated request, and returns the reply's fields (without "ok" and "id") or raises
AdminError / HubError.  Every console a handler touches is found through `link.find`
or checked with `link.check` / `link.may_see`, which judge the peer's level on it
(docs/admin-protocol.md "Access control"): no handler reaches a console otherwise.
Console state and policy come from the hub; the JSON shapes from
vspcd/faces/render.py.  Spec: docs/admin-protocol.md "Commands".
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vspc.common.admin import (
    COMMANDS,
    MAX_ALERTS,
    PROTOCOL_VERSION,
    AdminError,
    ErrorCode,
    Hello,
    Request,
    TailChunk,
)
from vspc.common.display import safe
from vspc.vspcd import __version__
from vspc.vspcd.faces import render
from vspc.vspcd.faces.admin.access import Identity, Source, console_ref, event_ref, group_names
from vspc.vspcd.history.grep import GrepQuery, grep
from vspc.vspcd.hub.audit import Actor, AuditAction
from vspc.vspcd.hub.hub import HubError
from vspc.vspcd.hub.selectors import ConsoleRef, parse_selector

if TYPE_CHECKING:
    from vspc.vspcd.faces.admin.link import AdminLink

log = logging.getLogger(__package__)  # one logger for the admin server

__all__ = ["AUDITED", "HANDLERS", "Handler", "Reply", "actor_of", "handles"]

# Commands whose refusals the audit trail records (docs/security.md "Audit trail"); the
# link records them (vspcd/faces/admin/link.py), the handlers the ones that succeed.
AUDITED = {
    "attach": AuditAction.ATTACH,
    "clear": AuditAction.CLEAR,
    "kick": AuditAction.KICK,
    "break": AuditAction.BREAK,
}

Reply = dict[str, Any]
Handler = Callable[["AdminLink", Request], Reply]

HANDLERS: dict[str, Handler] = {}


def handles(cmd: str) -> Callable[[Handler], Handler]:
    """Register the handler of one command of `COMMANDS`.

    A handler gets the connection and the validated request and returns the reply's
    fields (without "ok" and "id"), or raises AdminError / HubError.
    """

    def register(handler: Handler) -> Handler:
        if cmd not in COMMANDS:
            raise ValueError(f"{cmd!r} is not in the protocol's command table")
        HANDLERS[cmd] = handler
        return handler

    return register


def _delegate(link: AdminLink, name: str) -> Identity:
    """The identity `link`'s peer, a delegate, asks to act as (docs/vspc-web.md).

    Only a Unix peer named by `delegates`, on a connection that has not delegated
    yet and is neither subscribed nor following a tail; never root or the daemon's own
    uid (a delegate acts for people, not as a super-user).  The user's uid, primary gid
    and groups come from NSS: the kernel only knows the delegate's.

    Raises:
        AdminError: permission_denied for every refusal.
    """
    me, gate = link.identity, link.server.gate
    if me.via is not None or link.subscribed or link.tails:
        raise AdminError(ErrorCode.PERMISSION_DENIED, "as_user: only once, before anything else")
    if me.source is not Source.UNIX or me.uid is None or me.uid not in gate.policy.delegates:
        raise AdminError(ErrorCode.PERMISSION_DENIED, "as_user: you are not a delegate")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise AdminError(ErrorCode.PERMISSION_DENIED, "as_user: no such user") from None
    if entry.pw_uid in (0, link.server.own_uid):
        raise AdminError(ErrorCode.PERMISSION_DENIED, "as_user: not for a privileged user")
    try:
        groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    except OSError:
        groups = frozenset({entry.pw_gid})
    return replace(me, uid=entry.pw_uid, gid=entry.pw_gid, user=name, groups=groups, via=me.who)


@handles("hello")
def _hello(link: AdminLink, request: Request) -> Reply:
    client, as_user = request.fields["client"], request.fields["as_user"]
    if as_user is not None:
        delegate, acting = link.identity, _delegate(link, as_user)
        assert acting.uid is not None  # from NSS
        refusal = link.server.delegated(link, acting.uid)  # that user's own allowance
        if refusal is not None:
            raise AdminError(ErrorCode.BUSY, refusal)
        link.identity = acting
        log.info("admin %s: acts for %s", delegate, link.identity)
    if client:
        log.info("admin %s: client %s", link.identity, safe(client))
    me, gate = link.identity, link.server.gate
    return Hello(
        PROTOCOL_VERSION,
        __version__,
        tuple(sorted(HANDLERS)),
        gate.access(me),
        me.uid,
        me.user,
        me.gid,
        group_names(me),
        gate.level(me, None),
    ).to_json()


@handles("whoami")
def _whoami(link: AdminLink, request: Request) -> Reply:
    me, gate = link.identity, link.server.gate
    decision = gate.decide(me, None)
    return {
        "user": me.user,
        "uid": me.uid,
        "gid": me.gid,
        "groups": list(group_names(me)),
        "source": me.source.value,
        "address": me.address,
        "level": decision.level.value,
        "reason": decision.reason,
    }


@handles("access")
def _access(link: AdminLink, request: Request) -> Reply:
    console = link.find(request)
    decision = link.server.gate.decide(link.identity, console_ref(console))
    return {
        "key": str(console.key),
        "name": console.display_name,
        "level": decision.level.value,
        "reason": decision.reason,
    }


@handles("list")
def _list(link: AdminLink, request: Request) -> Reply:
    return {"vms": link.server.console_rows(link)}


@handles("show")
def _show(link: AdminLink, request: Request) -> Reply:
    console = link.find(request)
    info = link.server.hub.console_info(console, detail=True)
    row = render.show_row(info, link.server.epoch)
    row["level"] = link.level(console).value  # the caller's level on it
    return {"console": row}


@handles("stats")
def _stats(link: AdminLink, request: Request) -> Reply:
    stats = link.server.stats
    if stats is None:
        raise AdminError(ErrorCode.INTERNAL, "no metrics registry in this daemon")
    return stats().to_json()


@handles("attach")
def _attach(link: AdminLink, request: Request) -> Reply:
    return link.attach(request)


def _disconnect_text(identity: Identity, reason: str | None) -> str:
    # What the disconnected clients see inside "\r\n[vspcd: ...]\r\n".
    return f"disconnected by {identity.who}" + (f": {reason}" if reason else "")


@handles("clear")
def _clear(link: AdminLink, request: Request) -> Reply:
    hub = link.server.hub
    port, reason = request.fields["port"], request.fields["reason"]
    if port is not None:
        found = hub.console_by_port(port)
        if found is None or not link.may_see(found):
            raise HubError(ErrorCode.VM_NOT_FOUND, f"no console has port {port}")
        console = found
        link.check(request, console)
    else:
        console = link.find(request)
    hub.audit(AuditAction.CLEAR, link.actor, console, note=reason or "")
    cleared = hub.clear(console, _disconnect_text(link.identity, reason))
    log.info(
        "admin %s cleared %s: %d client(s) disconnected (%s), key %s",
        link.identity,
        safe(console.display_name),
        cleared,
        safe(reason) if reason else "no reason given",
        console.key.uuid[:8],
    )
    return {"key": str(console.key), "name": console.display_name, "cleared": cleared}


@handles("kick")
def _kick(link: AdminLink, request: Request) -> Reply:
    reason, ident = request.fields["reason"], request.fields["client"]
    hub = link.server.hub
    target = next(
        (c for console in hub.consoles() for c in console.clients if c.ident == ident), None
    )
    if target is None or not link.may_see(target.console):
        raise HubError(ErrorCode.NOT_ATTACHED, f"no client with id {ident}")  # the hub's words
    link.check(request, target.console)
    hub.audit(AuditAction.KICK, link.actor, target.console, client=ident, note=reason or "")
    client = hub.kick(ident, _disconnect_text(link.identity, reason))
    console = client.console
    log.info(
        "admin %s kicked client %d (%s %s) from %s (%s)",
        link.identity,
        client.ident,
        client.kind,
        client.channel.peer,
        console.tag,
        safe(reason) if reason else "no reason given",
    )
    return {"key": str(console.key), "name": console.display_name, "client": client.ident}


@handles("subscribe")
def _subscribe(link: AdminLink, request: Request) -> Reply:
    link.subscribed = True
    return {"vms": link.server.console_rows(link)}  # same moment: nothing falls between


@handles("unsubscribe")
def _unsubscribe(link: AdminLink, request: Request) -> Reply:
    link.subscribed = False
    return {}


@handles("tail")
def _tail(link: AdminLink, request: Request) -> Reply:
    console = link.find(request)
    data = console.scrollback.last(request.fields["bytes"])
    if request.fields["follow"]:
        link.tails.follow(console)  # in the same turn as the read: no byte lost or repeated
    return TailChunk(str(console.key), console.display_name, data).to_json()


@handles("untail")
def _untail(link: AdminLink, request: Request) -> Reply:
    console = link.find(request)
    link.tails.unfollow(str(console.key))
    return {"key": str(console.key), "name": console.display_name}


@handles("who")
def _who(link: AdminLink, request: Request) -> Reply:
    """Who is on which console, how, in which mode, since when: only consoles the
    peer may watch (docs/admin-protocol.md "who")."""
    hub, epoch = link.server.hub, link.server.epoch
    consoles = [link.find(request)] if request.fields["vm"] else hub.consoles()
    rows = []
    for console in consoles:
        if not link.may_see(console):
            continue
        holder = console.lock_holder()
        for client in console.clients:
            row = render.client_row(hub.client_info(client), epoch)
            row["console"] = console.display_name
            row["key"] = str(console.key)
            row["lock"] = client is holder
            rows.append(row)
    return {"clients": rows}


@handles("break")
def _break(link: AdminLink, request: Request) -> Reply:
    console = link.find(request)
    hub = link.server.hub
    try:
        hub.send_break(console, link.identity.who)
    except HubError as exc:
        hub.audit(AuditAction.BREAK, link.actor, console, denied=f"{exc.code.value}: {exc}")
        raise
    hub.audit(AuditAction.BREAK, link.actor, console)
    log.info("admin %s sent a serial break to %s", link.identity, console.tag)
    return {"key": str(console.key), "name": console.display_name}


def actor_of(identity: Identity) -> Actor:
    """An admin peer as audit records name it."""
    return Actor(identity.user or "", identity.uid, identity.address)


@handles("alerts")
def _alerts(link: AdminLink, request: Request) -> Reply:
    book = link.server.alerts
    records = [] if book is None else book.recent(MAX_ALERTS)
    key = None
    if request.fields["vm"] is not None:
        key = link.find(request).key
    hub = link.server.hub
    rows = [
        r.to_json()
        for r in records
        if (key is None or r.key == key)
        and link.ref_visible(event_ref(r.key, r.name, hub.console(r.key)))
    ]
    return {"alerts": rows[-request.fields["limit"] :]}


@handles("grep")
def _grep(link: AdminLink, request: Request) -> Reply:
    fields = request.fields
    try:
        re.compile(fields["pattern"])
    except re.error as exc:
        raise AdminError(ErrorCode.BAD_FIELD, f"pattern: {exc}", request.id) from None
    wanted: Callable[[ConsoleRef], bool] = lambda ref: True  # noqa: E731
    if fields["consoles"]:
        try:
            selectors = [
                parse_selector(t.strip()) for t in fields["consoles"].split(",") if t.strip()
            ]
        except ValueError as exc:
            raise AdminError(ErrorCode.BAD_FIELD, f"consoles: {exc}", request.id) from None
        wanted = lambda ref: any(s.matches(ref) for s in selectors)  # noqa: E731
    query = GrepQuery(
        fields["pattern"], fields["ignore_case"], fields["since"], fields["until"], fields["limit"]
    )
    server = link.server

    async def run() -> Reply:
        result = await grep(
            query,
            consoles=list(server.hub.consoles()),
            place=server.log_place,
            visible=link.ref_visible,
            wanted=wanted,
            flush=server.flush_logs,
        )
        return {
            "matches": [m.to_json() for m in result.matches],
            "truncated": result.truncated,
            "consoles": result.consoles,
        }

    link.defer(request, run())
    return {}


# Every command of the protocol has a handler, and nothing else does.
assert set(HANDLERS) == set(COMMANDS), sorted(set(COMMANDS) ^ set(HANDLERS))
