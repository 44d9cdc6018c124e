"""Audit records: who did what to which console, and whether it was allowed.

Spec: docs/security.md "Audit trail", docs/admin-protocol.md ("Events", `audit`).
One `AuditRecord` per action: attach and detach (with the lock mode), lock and
unlock, clear, kick, break, send (that input was typed, never the bytes), and a
configuration reload.  Denials are always recorded; `send` is recorded at most once
per client, result and second (`SendGate`), so a typist costs one line a second.

The hub and the faces build records; the hub hands them to its audit observers
(`Hub.subscribe_audit`): the `--audit-log` writer (vspcd/history/audit.py) and the
admin server, which pushes them as `audit` events to subscribers with `control`
on the console.  Pure: the wall clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # console.py imports SendGate from here
    from vspc.vspcd.hub.console import ConsoleKey

__all__ = [
    "Actor",
    "AuditAction",
    "AuditObserver",
    "AuditRecord",
    "AuditResult",
    "SendGate",
    "iso_time",
]


class AuditAction(StrEnum):
    """What was done (the record's `action`; wire values never change meaning)."""

    ATTACH = "attach"
    DETACH = "detach"
    LOCK = "lock"
    UNLOCK = "unlock"
    CLEAR = "clear"
    KICK = "kick"
    BREAK = "break"
    SEND = "send"
    RELOAD = "reload"


class AuditResult(StrEnum):
    """Whether it happened: `ok`, or `denied` (the record's `reason` says why)."""

    OK = "ok"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: `user` and `uid` from the admin socket's peer credentials (empty
    and None on a telnet port, which carries no identity), `peer` where from
    ("unix", or the telnet or TCP client's host:port, or "SIGHUP")."""

    user: str = ""
    uid: int | None = None
    peer: str = ""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One action.  `time` is Unix time; `console` the display name and `key` the
    console key ("" when the action named no console, or one that does not exist
    for the actor); `mode` the lock mode of an attach, detach, lock or unlock;
    `client` the client id concerned (attach, detach, kick, send)."""

    time: float
    action: AuditAction
    actor: Actor
    result: AuditResult = AuditResult.OK
    reason: str = ""
    console: str = ""
    key: ConsoleKey | None = None
    mode: str = ""
    client: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the `--audit-log` line and of the `audit` event."""
        out: dict[str, Any] = {
            "time": iso_time(self.time),
            "user": self.actor.user,
            "uid": self.actor.uid,
            "peer": self.actor.peer,
            "action": self.action.value,
            "console": self.console,
            "key": "" if self.key is None else str(self.key),
            "result": self.result.value,
        }
        if self.mode:
            out["mode"] = self.mode
        if self.client is not None:
            out["client"] = self.client
        if self.reason:
            out["reason"] = self.reason
        return out


AuditObserver = Callable[[AuditRecord], None]


def iso_time(unix: float) -> str:
    """ISO 8601 UTC with milliseconds: `2024-05-01T12:00:00.123Z`."""
    stamp = datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class SendGate:
    """At most one `send` record per client, result and second.

    Kept per client (the hub's `Client.audit`); `second` is the wall clock's whole
    second, so "once a second" lines up with the records' own times.
    """

    __slots__ = ("_ok", "_denied")

    def __init__(self) -> None:
        self._ok = -1
        self._denied = -1

    def take(self, now: float, ok: bool) -> bool:
        """True if a record of this result is due for second `now`."""
        second = int(now)
        if ok:
            if self._ok == second:
                return False
            self._ok = second
            return True
        if self._denied == second:
            return False
        self._denied = second
        return True
