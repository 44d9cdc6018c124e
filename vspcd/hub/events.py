"""Typed hub events: what happened to a console, as frozen values.

The hub (vspcd/hub/hub.py) tells its observers about every state change by calling
`observer(event)` with one of the frozen dataclasses below, one type per thing that
happens.  Events carry typed values (a `ConsoleKey`, enums, the typed infos of
`vspc.common.admin`), never display strings to be parsed back, so every observer
matches on types (``match event: case ClientAttached(client=c): ...``):

- the admin server renders them as the protocol's event lines (vspcd/faces/render.py,
  docs/admin-protocol.md "Events"; one schema, through `ConsoleInfo`/`ClientInfo`);
- persistence (vspcd/history/persist.py) rewrites or deletes a console's row;
- console logs, metrics counters, hook runners, plugin backends and a cluster
  registry subscribe the same way (docs/architecture.md, "Hub events").

Events whose `admin_name` is None are internal (no admin event line exists for
them; `subscribe` clients never see them).  An event is built after the state
change it reports, so an observer that queries the hub sees the new state.

Observers run synchronously inside the hub's call and must not raise: one that does
is logged and removed.  They must not call back into the hub to change state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from vspc.common.admin import ClientInfo, ConsoleInfo, EventName, LockMode
from vspc.vspcd.hub.console import ConsoleKey

__all__ = [
    "AbortReason",
    "ClientAttached",
    "ClientDetached",
    "ConsoleAlert",
    "ConsoleCleared",
    "ConsoleEvent",
    "ConsoleExpired",
    "ConsoleRestored",
    "DropReason",
    "HubEvent",
    "InputDropped",
    "LockChanged",
    "Observer",
    "RefusalReason",
    "Severity",
    "TakeoverRefused",
    "VMotionAborted",
    "VMotionBegun",
    "VMotionCompleted",
    "VMotionPeered",
    "VMotionRefused",
    "VmConnected",
    "VmDisconnected",
    "VmRenamed",
    "VmReplaced",
]


class AbortReason(StrEnum):
    """Why a vMotion ended without COMPLETE (docs/protocol.md §4.3); the value is the
    `reason` text of the `vmotion_abort` admin event."""

    SOURCE_ABORTED = "aborted by the source"  # ABORT on the BEGIN connection
    SOURCE_RESUMED = "source resumed"  # F2: the source sent data again
    NEW_BEGIN = "new BEGIN"  # F9: a second BEGIN implicitly aborts the first
    ABANDONED = "abandoned"  # F8: the source left and no COMPLETE came
    REPLACED = "replaced"  # F11: a new DO-PROXY from the VM's own host


class RefusalReason(StrEnum):
    """Why a BEGIN was answered with NOTNOW (F1)."""

    OPERATOR = "refused by operator"
    BACKLOG = "backlog"  # too many VM-bound bytes queued (§4.4 duty 2, TV-32)


class DropReason(StrEnum):
    """Why an operator's input did not reach the VM."""

    LOCKED = "locked"  # another client holds a write or exclusive lock
    READONLY = "readonly"  # the client attached read-only
    HOLD_FULL = "hold_full"  # the console's hold overflowed (oldest bytes dropped)


class Severity(StrEnum):
    """How bad a console alert is (docs/operations.md "Console alerts")."""

    INFO = "info"  # worth a look
    WARNING = "warning"  # the guest may recover by itself
    CRITICAL = "critical"  # the guest is down or needs hands (the built-in rules' default)


@dataclass(frozen=True, slots=True)
class ConsoleEvent:
    """Something happened to the console `key`; `name` is its display name then."""

    admin_name: ClassVar[EventName | None] = None

    key: ConsoleKey
    name: str


# ----------------------------------------------------------------- VM connection


@dataclass(frozen=True, slots=True)
class VmConnected(ConsoleEvent):
    """A VM connection identified itself and became the console's active one (new
    console, reconnect, or replacement).  `info` is the console's list row then, with
    `since` times on the hub's clock."""

    admin_name: ClassVar[EventName | None] = EventName.VM_CONNECTED

    peer: str
    info: ConsoleInfo
    first: bool  # the console did not exist before this connection


@dataclass(frozen=True, slots=True)
class VmRenamed(ConsoleEvent):
    """VM-NAME arrived or changed; `name` is the new display name."""

    admin_name: ClassVar[EventName | None] = EventName.VM_RENAMED

    vm_name: str


@dataclass(frozen=True, slots=True)
class VmDisconnected(ConsoleEvent):
    """The console's VM connection is gone (not a source's normal close mid-vMotion)."""

    admin_name: ClassVar[EventName | None] = EventName.VM_DISCONNECTED

    peer: str


@dataclass(frozen=True, slots=True)
class VmReplaced(ConsoleEvent):
    """A newer connection took the console over from `old_peer` (same host, or the
    old one failed the liveness probe: docs/security.md "Console takeover")."""

    old_peer: str
    new_peer: str
    probed: bool  # False: same address, replaced at once


@dataclass(frozen=True, slots=True)
class TakeoverRefused(ConsoleEvent):
    """A connection from another address claimed the console while its VM connection
    answered the liveness probe; the newcomer was closed."""

    peer: str  # the refused newcomer
    active_peer: str


# ----------------------------------------------------------------- console lifetime


@dataclass(frozen=True, slots=True)
class ConsoleExpired(ConsoleEvent):
    """A console with neither VM nor clients was forgotten; `port` is free again."""

    admin_name: ClassVar[EventName | None] = EventName.VM_EXPIRED

    port: int | None


@dataclass(frozen=True, slots=True)
class ConsoleRestored(ConsoleEvent):
    """A console remembered from an earlier run was recreated, disconnected."""

    port: int | None


@dataclass(frozen=True, slots=True)
class ConsoleCleared(ConsoleEvent):
    """An operator disconnected every client of the console."""

    clients: int
    reason: str


# ----------------------------------------------------------------- vMotion


@dataclass(frozen=True, slots=True)
class VMotionBegun(ConsoleEvent):
    """GOAHEAD sent to the source `peer`."""

    admin_name: ClassVar[EventName | None] = EventName.VMOTION_BEGIN

    peer: str


@dataclass(frozen=True, slots=True)
class VMotionPeered(ConsoleEvent):
    """PEER accepted from the destination `peer` (PEER-OK sent)."""

    admin_name: ClassVar[EventName | None] = EventName.VMOTION_PEER

    peer: str


@dataclass(frozen=True, slots=True)
class VMotionCompleted(ConsoleEvent):
    """COMPLETE: the destination `peer` is now the console's VM connection."""

    admin_name: ClassVar[EventName | None] = EventName.VMOTION_COMPLETE

    peer: str
    source: str


@dataclass(frozen=True, slots=True)
class VMotionAborted(ConsoleEvent):
    """The vMotion ended without COMPLETE."""

    admin_name: ClassVar[EventName | None] = EventName.VMOTION_ABORT

    reason: AbortReason


@dataclass(frozen=True, slots=True)
class VMotionRefused(ConsoleEvent):
    """A BEGIN was answered with NOTNOW; `backlog` is the VM-bound bytes queued."""

    admin_name: ClassVar[EventName | None] = EventName.VMOTION_NOTNOW

    reason: RefusalReason
    backlog: int = 0

    @property
    def text(self) -> str:
        """The `reason` of the admin event and the log line."""
        if self.reason is RefusalReason.BACKLOG:
            return f"{self.backlog} VM-bound bytes still queued"
        return self.reason.value


# ----------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class ClientAttached(ConsoleEvent):
    """A telnet or attach client joined (`client.since` on the hub's clock)."""

    admin_name: ClassVar[EventName | None] = EventName.CLIENT_ATTACHED

    client: ClientInfo


@dataclass(frozen=True, slots=True)
class ClientDetached(ConsoleEvent):
    """A client left (`reason` None), or was cleared or kicked (`reason`: the notice
    text it was shown).  `client` is how it was when it left."""

    admin_name: ClassVar[EventName | None] = EventName.CLIENT_DETACHED

    client: ClientInfo
    reason: str | None


@dataclass(frozen=True, slots=True)
class LockChanged(ConsoleEvent):
    """A write or exclusive lock was taken (`lock`, `holder`: the client id) or
    released (both None)."""

    admin_name: ClassVar[EventName | None] = EventName.LOCK_CHANGED

    lock: LockMode | None
    holder: int | None


@dataclass(frozen=True, slots=True)
class InputDropped(ConsoleEvent):
    """`count` bytes an operator typed were dropped (`client` is None for hold
    overflow, where the bytes may have come from several clients)."""

    client: int | None
    count: int
    reason: DropReason


# ----------------------------------------------------------------- console output


@dataclass(frozen=True, slots=True)
class ConsoleAlert(ConsoleEvent):
    """The console printed a line an alert rule matches (vspcd/history/alerts.py);
    reported through `Hub.report_alert`, never by the hub itself.  `time` is Unix
    time, `context` the non-blank lines before `line`."""

    admin_name: ClassVar[EventName | None] = EventName.CONSOLE_ALERT

    alert: str
    severity: Severity
    line: str
    context: tuple[str, ...]
    time: float


HubEvent = (
    VmConnected
    | VmRenamed
    | VmDisconnected
    | VmReplaced
    | TakeoverRefused
    | ConsoleExpired
    | ConsoleRestored
    | ConsoleCleared
    | VMotionBegun
    | VMotionPeered
    | VMotionCompleted
    | VMotionAborted
    | VMotionRefused
    | ClientAttached
    | ClientDetached
    | LockChanged
    | InputDropped
    | ConsoleAlert
)

Observer = Callable[[HubEvent], None]
