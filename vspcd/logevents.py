"""Console event lines for `--log-events` (issue #11 item 1).

Boundary: formats hub events as lines and hands them to `ConsoleLogs.write_event`;
holds no state.  `hub_observer` is the one adapter from the hub's current
`subscribe(observer)` interface, `observer(event_name, fields)`; when the hub's events
become typed dataclasses only that function changes.

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

from vspc.vspcd.consolelog import ConsoleLogs
from vspc.vspcd.logformat import format_stamp

__all__ = ["event_line", "hub_observer"]

_CLIENT_FIELDS = ("id", "kind", "peer", "user", "uid", "mode")


def _pick(*names: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def pick(fields: Mapping[str, Any]) -> dict[str, Any]:
        return {name: fields[name] for name in names if name in fields}

    return pick


def _client(fields: Mapping[str, Any]) -> dict[str, Any]:
    row = fields.get("client")
    if not isinstance(row, Mapping):
        return {}
    return {"client": {name: row[name] for name in _CLIENT_FIELDS if name in row}}


# Which hub events become lines, and which of their fields each line carries.
_DETAILS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "vm_connected": _pick("peer"),
    "vm_disconnected": _pick("peer"),
    "vm_expired": _pick(),
    "vm_renamed": _pick("vm_name"),
    "vmotion_begin": _pick("peer"),
    "vmotion_peer": _pick("peer"),
    "vmotion_complete": _pick("peer"),
    "vmotion_abort": _pick("reason"),
    "vmotion_notnow": _pick("reason"),
    "client_attached": _client,
    "client_detached": _pick("client", "reason"),
    "lock_changed": _pick("lock", "holder"),
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


def hub_observer(
    logs: ConsoleLogs, wall_clock: Callable[[], float]
) -> Callable[[str, dict[str, Any]], None]:
    """A hub observer writing each console event to `logs`' `.events` files."""

    def observe(event: str, fields: dict[str, Any]) -> None:
        details = _DETAILS.get(event)
        key, name = fields.get("key"), fields.get("name")
        if details is None or not isinstance(key, str) or not isinstance(name, str):
            return
        logs.write_event(key, name, event_line(wall_clock(), event, key, name, details(fields)))

    return observe
