"""Console event lines for `--log-events` (issue #11 item 1).

Boundary: formats typed hub events (vspcd/hub/events.py) as lines and hands them to
`ConsoleLogs.write_event`; holds no state.  `hub_observer` matches on the event types
and picks each line's fields from the typed values; `event` is the admin event name
(docs/admin-protocol.md "Events"), so the two vocabularies never drift apart.

Why a separate file.  A VM can print anything, including text that looks like any
in-band marker, so event lines never go into the console log itself: they go to
`FILE.events` beside it (`vmlog-db01.events`), which only vspcd writes.  Each line is
one JSON object (`ensure_ascii`, so a VM name with newlines or escape sequences is
escaped, never a forged line or a terminal command)::

    {"time": "2026-11-30T17:45:00.123Z", "event": "vm_connected", "console": "<key>",
     "name": "db01", "peer": "10.0.0.5:40112"}

`time` has the same form as the console log's `--log-timestamps` stamps, so the two
files merge by time.  Events written: vm_connected, vm_disconnected, vm_expired,
vm_renamed, vmotion_begin, vmotion_peer, vmotion_complete, vmotion_abort,
vmotion_notnow, client_attached (who: kind, peer, user, uid, mode), client_detached
(with the reason, e.g. an operator's `clear`), lock_changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from vspc.common.admin import ClientInfo
from vspc.vspcd.history.consolelog import ConsoleLogs
from vspc.vspcd.history.lineformat import format_stamp
from vspc.vspcd.hub.events import (
    ClientAttached,
    ClientDetached,
    ConsoleExpired,
    HubEvent,
    LockChanged,
    Observer,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VMotionPeered,
    VMotionRefused,
    VmRenamed,
)

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
    """The fields an event's line carries after `time`, `event`, `console`, `name`;
    None for the events that get no line."""
    match event:
        case (
            VmConnected(peer=peer)
            | VmDisconnected(peer=peer)
            | VMotionBegun(peer=peer)
            | VMotionPeered(peer=peer)
            | VMotionCompleted(peer=peer)
        ):
            return {"peer": peer}
        case ConsoleExpired():
            return {}
        case VmRenamed(vm_name=vm_name):
            return {"vm_name": vm_name}
        case VMotionAborted(reason=reason):
            return {"reason": reason.value}
        case VMotionRefused() as refused:
            return {"reason": refused.text}
        case ClientAttached(client=client):
            return {"client": _client(client)}
        case ClientDetached(client=client, reason=reason):
            details: dict[str, Any] = {"client": client.id}
            if reason is not None:
                details["reason"] = reason
            return details
        case LockChanged(lock=lock, holder=holder):
            return {"lock": None if lock is None else lock.value, "holder": holder}
    return None


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
        admin_name = event.admin_name
        if admin_name is None:
            return
        details = event_details(event)
        if details is None:
            return
        key = str(event.key)
        line = event_line(wall_clock(), admin_name.value, key, event.name, details)
        logs.write_event(key, event.name, line)

    return observe
