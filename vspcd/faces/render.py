"""Hub state and hub events -> admin protocol JSON, through one schema.

The hub describes consoles and clients as the typed infos of `vspc.common.admin`
(`ConsoleInfo`, `ClientInfo`, with times on its monotonic clock) and reports changes
as typed events (vspcd/hub/events.py), whose fields vspcd/hub/fields.py names.  This
module is the only place they become the JSON of docs/admin-protocol.md: `list` rows,
the `show` object and event lines.
`epoch` is what turns a hub-clock time into Unix time (`time.time() - hub.now()`,
fixed when the admin server starts); None leaves times on the hub's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vspc.common.admin import ClientInfo, ConsoleInfo, EventName
from vspc.vspcd.hub import fields as hub_fields
from vspc.vspcd.hub.audit import AuditRecord
from vspc.vspcd.hub.events import HubEvent, Observer

__all__ = [
    "audit_message",
    "client_row",
    "console_row",
    "event_fields",
    "event_message",
    "fields_observer",
    "show_row",
    "summary_row",
]


def _client(info: ClientInfo, epoch: float | None) -> ClientInfo:
    if epoch is None:
        return info
    return replace(info, since=round(info.since + epoch, 3))


def _unix(when: float | None, epoch: float) -> float | None:
    return None if when is None else round(when + epoch, 3)


def _console(info: ConsoleInfo, epoch: float | None) -> ConsoleInfo:
    if epoch is None:
        return info
    return replace(
        info,
        lock_holder=None if info.lock_holder is None else _client(info.lock_holder, epoch),
        attached=tuple(_client(c, epoch) for c in info.attached),
        created=_unix(info.created, epoch),
        last_output=_unix(info.last_output, epoch),
    )


def client_row(info: ClientInfo, epoch: float | None = None) -> dict[str, Any]:
    """A client object (in `attached`, `lock_holder` and `client_attached`)."""
    return _client(info, epoch).to_json()


def console_row(info: ConsoleInfo, epoch: float | None = None) -> dict[str, Any]:
    """A `list` row (and the `console` of `vm_connected`)."""
    return _console(info, epoch).to_json()


def summary_row(info: ConsoleInfo) -> dict[str, Any]:
    """A list row without `attached` (what a console is, not who is on it)."""
    row = info.to_json()
    del row["attached"]
    return row


def show_row(info: ConsoleInfo, epoch: float | None = None) -> dict[str, Any]:
    """The `show` reply's console: a list row plus the show-only fields.

    `service_uri` and `vm_peer` stay present as null (docs/admin-protocol.md: "string
    | null"), where `ConsoleInfo.to_json` leaves absent fields out of list rows.
    """
    row = console_row(info, epoch)
    row.setdefault("service_uri", None)
    row.setdefault("vm_peer", None)
    return row


def event_fields(
    event: HubEvent, epoch: float | None = None
) -> tuple[EventName, dict[str, Any]] | None:
    """An event's admin name and fields (`name`, `key`, then its own, from
    vspcd/hub/fields.py), or None for an event that has no admin event line."""
    found = hub_fields.event_fields(event)
    if found is None or found.admin is None:
        return None
    fields: dict[str, Any] = {"name": event.name, "key": str(event.key)}
    for name, value in found.fields.items():
        if isinstance(value, ConsoleInfo):
            value = console_row(value, epoch)
        elif isinstance(value, ClientInfo):
            value = client_row(value, epoch)
        fields[name] = value
    return found.admin, fields


def event_message(event: HubEvent, epoch: float | None = None) -> dict[str, Any] | None:
    """The pushed `{"event": ..., "name", "key", ...}` object, or None (internal)."""
    found = event_fields(event, epoch)
    if found is None:
        return None
    name, fields = found
    return {"event": name.value, **fields}


def audit_message(record: AuditRecord) -> dict[str, Any]:
    """The pushed `audit` event: the console's name and key, and the record as the
    `--audit-log` line has it (docs/admin-protocol.md "Events")."""
    fields = record.to_json()
    return {
        "event": EventName.AUDIT.value,
        "key": fields["key"],
        "name": fields["console"],
        "audit": fields,
    }


def fields_observer(observer: Callable[[str, dict[str, Any]], None]) -> Observer:
    """Adapt an observer of `(admin event name, fields)` pairs, the shape of the admin
    event lines (hub clock), to typed events; internal events are not passed on.

    Kept for tests that compare event lines as the admin protocol shows them
    (tests/vspcd/hub/test_hub.py); the daemon's own observers match on the event types.
    """

    def observe(event: HubEvent) -> None:
        found = event_fields(event)
        if found is not None:
            observer(found[0].value, found[1])

    return observe
