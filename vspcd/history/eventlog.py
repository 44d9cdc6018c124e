"""Console event lines for `--log-events` (docs/operations.md "Console logs").

Boundary: formats typed hub events (vspcd/hub/events.py) as lines and hands them to
`ConsoleLogs.write_event`; holds no state.  A line's `event` is the admin event name
and its fields are the admin event's (docs/admin-protocol.md "Events"), both from
vspcd/hub/fields.py, so the two vocabularies never drift apart.

Why a separate file.  A VM can print anything, including text that looks like any
in-band marker, so event lines never go into the console log itself: they go to
`FILE.events` beside it (`vmlog-db01.events`), which only vspcd writes.  Each line is
one JSON object (`ensure_ascii`, so a VM name with newlines or escape sequences is
escaped, never a forged line or a terminal command)::

    {"time": "2026-11-30T17:45:00.123Z", "event": "vm_connected", "console": "<key>",
     "name": "db01", "peer": "10.0.0.5:40112"}

`time` has the same form as the console log's `--log-timestamps` stamps, so the two
files merge by time.  Events written: vm_connected, vm_disconnected, vm_expired (port),
vm_renamed, vmotion_begin, vmotion_peer, vmotion_complete, vmotion_abort,
vmotion_notnow, client_attached (who: kind, peer, user, uid, mode), client_detached
(with the reason, e.g. an operator's `clear`), lock_changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from vspc.common.admin import ClientInfo, ConsoleInfo
from vspc.vspcd.history.consolelog import ConsoleLogs
from vspc.vspcd.history.lineformat import format_stamp
from vspc.vspcd.hub.events import HubEvent, Observer
from vspc.vspcd.hub.fields import event_fields

__all__ = ["event_details", "event_line", "hub_observer"]


def _client(client: ClientInfo) -> dict[str, Any]:
    """Who attached (no byte counters or times: the line has its own `time`)."""
    return {
        "id": client.id,
        "kind": client.kind.value,
        "peer": client.peer,
        "user": client.user,
        "uid": client.uid,
        "mode": client.mode.value,
    }


def event_details(event: HubEvent) -> dict[str, Any] | None:
    """The fields an event's line carries after `time`, `event`, `console`, `name`:
    the admin event's (vspcd/hub/fields.py); None for the events that get no line.

    The admin event's `console` object (a `vm_connected` list row) is left out: a
    line's `console` is the key, and the list row's times would be on the hub clock.
    """
    found = event_fields(event)
    if found is None or found.admin is None:
        return None
    return {
        name: _client(value) if isinstance(value, ClientInfo) else value
        for name, value in found.fields.items()
        if not isinstance(value, ConsoleInfo)
    }


def event_line(now: float, event: str, key: str, name: str, details: Mapping[str, Any]) -> bytes:
    """One `.events` line: a JSON object and `\\n`."""
    record = {
        "time": format_stamp(now)[:-1].decode("ascii"),
        "event": event,
        "console": key,
        "name": name,
        **details,
    }
    return json.dumps(record, default=str).encode("ascii") + b"\n"


def hub_observer(logs: ConsoleLogs, wall_clock: Callable[[], float]) -> Observer:
    """A hub observer writing each console event to `logs`' `.events` files."""

    def observe(event: HubEvent) -> None:
        details = event_details(event)
        admin_name = event.admin_name
        if details is None or admin_name is None:
            return
        key = str(event.key)
        line = event_line(wall_clock(), admin_name.value, key, event.name, details)
        logs.write_event(key, event.name, line)

    return observe
