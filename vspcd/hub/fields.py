"""Hub events -> their named fields: the one place that says what each event carries.

Three outputs describe the typed hub events (vspcd/hub/events.py) to the outside, and
all three take their fields from `event_fields`, so they cannot drift apart:

- admin event lines (vspcd/faces/render.py; docs/admin-protocol.md "Events");
- `--log-events` lines in `FILE.events` (vspcd/history/eventlog.py; docs/operations.md
  "Console logs");
- the `VSPC_*` hook variables (vspcd/ext/hookenv.py; docs/operations.md "Hooks").

An event's name is its admin event name (`EventName`).  Three events have no admin
event line but do run hooks; their names are `HookOnly`.  `fields` are the admin
event's own fields (after `name` and `key`), with plain values except the console
and client objects, which stay typed infos for each output to render (the admin
server puts their times on Unix time).  `details` are what only the hook environment
adds; a key in both means the hook sees the detail instead (the whole client of a
`client_detached`, an empty `reason` for a client that simply left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vspc.common.admin import EventName
from vspc.vspcd.hub import events

__all__ = ["EventFields", "HookOnly", "event_fields"]


class HookOnly(StrEnum):
    """The names of the events that run hooks but push no admin event line."""

    VM_REPLACED = "vm_replaced"  # docs/security.md "Console takeover"
    TAKEOVER_REFUSED = "takeover_refused"
    CONSOLE_CLEARED = "console_cleared"  # `clear`; its clients' client_detached follow


@dataclass(frozen=True, slots=True)
class EventFields:
    """One event's name and fields (see the module docstring)."""

    name: EventName | HookOnly
    fields: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def admin(self) -> EventName | None:
        """The admin event name; None for an event without an admin event line."""
        return self.name if isinstance(self.name, EventName) else None


def event_fields(event: events.HubEvent) -> EventFields | None:
    """The name and fields of `event`; None for an internal event (nothing outside
    the daemon hears of it)."""
    match event:
        case events.VmConnected(peer=peer, info=info, first=first):
            return _admin(event, {"first": first}, peer=peer, console=info)
        case (
            events.VmDisconnected(peer=peer)
            | events.VMotionBegun(peer=peer)
            | events.VMotionPeered(peer=peer)
        ):
            return _admin(event, peer=peer)
        case events.VMotionCompleted(peer=peer, source=source):
            return _admin(event, {"source_peer": source}, peer=peer)
        case events.VmRenamed(vm_name=vm_name):
            return _admin(event, vm_name=vm_name)
        case events.ConsoleExpired(port=port):
            return _admin(event, port=port)
        case events.VMotionAborted(reason=reason):
            return _admin(event, reason=reason.value)
        case events.VMotionRefused() as refused:
            return _admin(event, reason=refused.text)
        case events.ClientAttached(client=client):
            return _admin(event, client=client)
        case events.ClientDetached(client=client, reason=reason):
            fields: dict[str, Any] = {"client": client.id}
            if reason is not None:
                fields["reason"] = reason
            return _admin(event, {"client": client, "reason": reason or ""}, **fields)
        case events.LockChanged(lock=lock, holder=holder):
            return _admin(event, lock=None if lock is None else lock.value, holder=holder)
        case events.ConsoleAlert(
            alert=alert, severity=severity, line=line, context=context, time=when
        ):
            # The hook environment carries the rule and line (VSPC_ALERT, VSPC_ALERT_LINE);
            # its VSPC_TIME is the hook's own, so the admin event's `time` stays out.
            hook = {"alert_line": line, "alert_severity": severity.value, "time": None}
            return _admin(
                event,
                hook,
                alert=alert,
                severity=severity.value,
                line=line,
                context=list(context),
                time=round(when, 3),
            )
        case events.VmReplaced(old_peer=old, new_peer=new, probed=probed):
            return EventFields(
                HookOnly.VM_REPLACED, {"peer": new, "old_peer": old, "probed": probed}
            )
        case events.TakeoverRefused(peer=peer, active_peer=active):
            return EventFields(HookOnly.TAKEOVER_REFUSED, {"peer": peer, "active_peer": active})
        case events.ConsoleCleared(clients=clients, reason=reason):
            return EventFields(HookOnly.CONSOLE_CLEARED, {"clients": clients, "reason": reason})
    return None


def _admin(
    event: events.HubEvent, details: dict[str, Any] | None = None, **fields: Any
) -> EventFields:
    name = event.admin_name
    assert name is not None, type(event).__name__  # every event matched above has one
    return EventFields(name, fields, details or {})
