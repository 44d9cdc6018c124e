"""vspc-tui's model: what the dashboard knows about vspcd, as plain data.

Boundary: fed by the admin connection (vspctui/client.py) through the controller
(vspctui/dashboard/app.py): the `subscribe` snapshot (`load`), every pushed `Event` (`apply`) and
`tail` replies (`tail_started`).  Views read it; nothing here imports urwid, touches a
socket or reads the clock except through the injected `clock`, so it is tested as data
(tests/vspctui/dashboard/test_tui_model.py).

What it keeps:

- `consoles`: one `ConsoleInfo` per console key, replaced (they are frozen) as events
  say what changed (docs/admin-protocol.md, "Events");
- `tails`: for each console being followed (`tail` with `follow`), a bounded buffer of
  its most recent output;
- `log`: a `deque(maxlen=...)` of human-readable event lines, oldest first, made
  inert (`vspc.common.display.safe`) as they enter it;
- `filter`: the name filter the console list applies (`visible()`), and `sort`, the
  order it shows them in (by name, by activity, by port: docs/vspc-tui.md);
- `activity`: when each console was last seen doing something (Unix time): the
  daemon's `ConsoleInfo.last_output` where it sends one, else (older daemons, and
  between two `list`s) output this dashboard received or an event about it;
- `pinned`: the consoles the operator pinned with `t` to keep following whatever has
  the focus (the controller follows the focused one, the pinned ones and the grid's);
- `connected`: whether the admin connection is up.  While it is down every row is
  stale and the views say so rather than show a VM "up" (docs/vspc-tui.md,
  "When vspcd goes away").

`visible()` is cached: with many consoles and a stream of events, re-sorting on every
event would cost more than everything else the dashboard does (docs/vspc-tui.md,
"Staying responsive"), so the order is only recomputed when something it depends on
changed.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vspc.common.admin import (
    AdminError,
    ClientInfo,
    ConsoleInfo,
    Event,
    EventName,
    LockMode,
    VMotionPhase,
)
from vspc.common.display import safe
from vspc.vspctui.formatting import who

__all__ = [
    "ALERTS_PER_CONSOLE",
    "AlertSeen",
    "LOG_LIMIT",
    "TAIL_LIMIT",
    "LogEntry",
    "Model",
    "SortOrder",
    "describe",
]

TAIL_LIMIT = 64 * 1024  # bytes of output kept per followed console
LOG_LIMIT = 500  # event log lines kept


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the event log: when it was seen (Unix time) and what happened."""

    when: float
    text: str


@dataclass(frozen=True, slots=True)
class AlertSeen:
    """One `console_alert` event the dashboard saw (the detail pane lists them)."""

    time: float  # Unix time the daemon stamped
    alert: str
    severity: str
    line: str


ALERTS_PER_CONSOLE = 5  # alerts the detail pane lists per console


class SortOrder(StrEnum):
    """The console list's order; `next()` is what the sort key cycles to."""

    NAME = "name"
    ACTIVITY = "activity"  # most recently active first
    PORT = "port"

    def next(self) -> SortOrder:
        members = list(SortOrder)
        return members[(members.index(self) + 1) % len(members)]


# The event log's line for each event, by name; `describe` fills the fields in, each
# one made inert with `safe` (a VM names itself; reasons and peers come from outside).
# A field the event lacks shows as "?".  The events with optional parts are the
# special cases in `describe`.
_LINES: dict[str, str] = {
    EventName.VM_CONNECTED: "{name}: VM connected from {peer}",
    EventName.VM_DISCONNECTED: "{name}: VM disconnected",
    EventName.VM_EXPIRED: "{name}: expired, forgotten",
    EventName.VM_RENAMED: "{key}: now called {name}",
    EventName.VMOTION_BEGIN: "{name}: vMotion begins",
    EventName.VMOTION_PEER: "{name}: vMotion destination {peer} bound",
    EventName.VMOTION_COMPLETE: "{name}: vMotion complete, now at {peer}",
    EventName.VMOTION_ABORT: "{name}: vMotion aborted: {reason}",
    EventName.VMOTION_NOTNOW: "{name}: vMotion refused: {reason}",
    EventName.CLIENT_DETACHED: "{name}: client {client} detached",
    EventName.LOCK_CHANGED: "{name}: {lock} lock taken by client {holder}",
    EventName.TAIL_END: "{name}: tail ended: {reason}",
}


class _SafeFields:
    """An event's fields for `str.format_map`, each made inert with `safe` as the line
    asks for it (not all of them: a `vm_connected` carries a whole console row); a
    missing one is "?"."""

    def __init__(self, fields: Mapping[str, Any], **own: str) -> None:
        self._fields, self._own = fields, own

    def __getitem__(self, name: str) -> str:
        if name in self._own:
            return self._own[name]
        value = self._fields.get(name)
        return "?" if value is None else safe(value)


def describe(event: Event) -> str:
    """One human line for an event (the event log shows these), safe to print: every
    name, peer and reason in it has been through `safe`."""
    name = safe(event.name or event.key or "?")
    fields = event.fields
    match event.event:
        case EventName.CLIENT_ATTACHED:
            client = _client_of(event)
            if client is None:
                return f"{name}: client attached"
            return f"{name}: client {client.id} ({client.kind.value}, {who(client)}) attached"
        case EventName.LOCK_CHANGED if fields.get("lock") is None:
            return f"{name}: lock released"
        case EventName.CONSOLE_ALERT:
            alert, severity = safe(fields.get("alert")), safe(fields.get("severity"))
            return f"{name}: ALERT {alert} ({severity}): {safe(fields.get('line'))}"
    values = _SafeFields(fields, name=name, key=safe(event.key or "?"), event=safe(event.event))
    line = _LINES.get(event.event, "{name}: {event}").format_map(values)
    reason = fields.get("reason")
    if event.event == EventName.CLIENT_DETACHED and reason:
        line += f": {safe(reason)}"
    return line


def _client_of(event: Event) -> ClientInfo | None:
    try:
        return event.client
    except AdminError:  # a malformed client object: log the event, change nothing
        return None


class Model:
    """Consoles, tail buffers and the event log.  Pure data plus the methods that
    change it; every method that changes what a view shows returns nothing and the
    controller redraws afterwards.

    Args:
        clock: Unix time for log entries (injected so tests are deterministic).
        tail_limit: bytes kept per followed console.
        log_limit: event log lines kept.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        tail_limit: int = TAIL_LIMIT,
        log_limit: int = LOG_LIMIT,
    ) -> None:
        self.consoles: dict[str, ConsoleInfo] = {}
        self.tails: dict[str, bytearray] = {}
        self.log: deque[LogEntry] = deque(maxlen=log_limit)
        self.activity: dict[str, float] = {}
        # Consoles that raised a console alert (`console_alert`) while we watched:
        # key -> the latest alert's rule name; the list marks them with `!` until
        # the operator acknowledges them (`acknowledge_alerts`, the A key).
        self.alerts: dict[str, str] = {}
        # key -> the newest alerts seen, for the detail pane (kept when acknowledged).
        self.alert_log: dict[str, deque[AlertSeen]] = {}
        self.pinned: set[str] = set()
        self.connected = True
        self._filter = ""
        self._sort = SortOrder.NAME
        self._clock = clock
        self._tail_limit = tail_limit
        # visible() cache: the keys in order, valid until `_order_stale` is set.
        self._order: list[str] = []
        self._order_stale = True
        self._activity_moved = False

    # -- reading -----------------------------------------------------------------------

    @property
    def filter(self) -> str:
        return self._filter

    @filter.setter
    def filter(self, text: str) -> None:
        self._filter = text
        self._order_stale = True

    @property
    def sort(self) -> SortOrder:
        return self._sort

    @sort.setter
    def sort(self, order: SortOrder) -> None:
        self._sort = order
        self._order_stale = True

    def now(self) -> float:
        """The model's clock (views compute "time since" against it)."""
        return self._clock()

    def visible(self) -> list[ConsoleInfo]:
        """Consoles whose display name contains the filter (case-insensitive), in the
        current `sort` order (ties, and the name order, by name then key)."""
        consoles = self.consoles
        return [consoles[k] for k in self.visible_keys()]

    def visible_keys(self) -> list[str]:
        """`visible()`'s keys.  The same list object is returned until the order
        changes, so a view can tell "same order" by identity (do not modify it)."""
        if self._order_stale:
            self._order = self._sorted_keys()
            self._order_stale = False
        return self._order

    def _sorted_keys(self) -> list[str]:
        needle = self._filter.casefold()
        rows = [c for c in self.consoles.values() if needle in c.name.casefold()]
        rows.sort(key=lambda c: (c.name.casefold(), c.key))
        if self._sort is SortOrder.ACTIVITY:
            activity = self.activity
            rows.sort(key=lambda c: -activity.get(c.key, 0.0))  # stable: name breaks ties
        elif self._sort is SortOrder.PORT:
            rows.sort(key=lambda c: (c.port is None, c.port or 0))
        return [c.key for c in rows]

    def idle(self, key: str) -> float | None:
        """Seconds since console `key` was last active, or None if never seen active."""
        when = self.activity.get(key)
        return None if when is None else max(0.0, self._clock() - when)

    def most_active(self, count: int) -> list[str]:
        """The keys of the `count` most recently active consoles (grid view)."""
        ranked = sorted(
            (k for k in self.consoles if k in self.activity),
            key=lambda k: (-self.activity[k], k),
        )
        return ranked[:count]

    def following(self, key: str) -> bool:
        return key in self.tails

    def tail(self, key: str) -> bytes:
        """The buffered output of a followed console (b"" if not followed)."""
        return bytes(self.tails.get(key, b""))

    # -- feeding -----------------------------------------------------------------------

    def load(self, consoles: Iterable[ConsoleInfo]) -> None:
        """Replace every console with a snapshot (the `subscribe` reply)."""
        self.consoles = {c.key: c for c in consoles}
        self.connected = True
        self._order_stale = True
        for key in [k for k in self.tails if k not in self.consoles]:
            del self.tails[key]
        self.pinned &= self.consoles.keys()
        for key in [k for k in self.activity if k not in self.consoles]:
            del self.activity[key]
        self.learn(self.consoles.values())

    def learn(self, consoles: Iterable[ConsoleInfo]) -> None:
        """Take the daemon's `last_output` of consoles that carry one (a `list` or
        `show` reply); older daemons send none, and what this dashboard saw
        itself stands."""
        for console in consoles:
            if console.last_output is not None and console.key in self.consoles:
                self._active(console.key, console.last_output)

    def disconnected(self) -> None:
        """The admin connection is gone: every row is stale, no tail is live."""
        self.connected = False
        self.tails.clear()

    def touch(self, key: str) -> None:
        """Console `key` was seen active just now (e.g. its counters moved)."""
        if key in self.consoles:
            self._active(key, self._clock())

    def _active(self, key: str, when: float) -> None:
        if when > self.activity.get(key, 0.0):
            self.activity[key] = when
            self._activity_moved = True

    def reorder(self) -> None:
        """Sorted by activity, take the activity seen since the last sort into the
        order.  Called once a tick rather than on every event: re-sorting every
        console per event costs too much on a large site (docs/vspc-tui.md, "Staying
        responsive"), and rows that jump under the cursor many times a second cannot
        be read anyway."""
        if self._activity_moved and self._sort is SortOrder.ACTIVITY:
            self._order_stale = True
        self._activity_moved = False

    def acknowledge_alerts(self) -> None:
        """The operator saw the alert list: the `!` marks go (the detail keeps them)."""
        self.alerts.clear()

    def note(self, text: str) -> None:
        """Add a line of our own (not an event) to the log; it may quote the daemon
        (an error's message), so it is made inert here."""
        self.log.append(LogEntry(self._clock(), safe(text)))

    def apply(self, event: Event) -> None:
        """Fold one pushed event into the model.  Unknown events and events about
        consoles we never heard of change nothing (the protocol says to ignore them)."""
        if event.event == EventName.OUTPUT:
            self._output(event)
            return
        self.log.append(LogEntry(self._clock(), describe(event)))  # already safe
        key = event.key
        if key is None:
            return
        if event.event == EventName.VM_CONNECTED:
            try:
                row = event.console
            except AdminError:
                row = None
            if row is not None:
                old = self.consoles.get(key)
                if old is None or (old.name, old.port) != (row.name, row.port):
                    self._order_stale = True
                self.consoles[key] = row
                self.learn([row])
            elif key in self.consoles:
                self._update(key, connected=True)
            if key in self.consoles:
                self._active(key, self._clock())
            return
        if event.event == EventName.TAIL_END:
            self.tails.pop(key, None)
            return
        if event.event == EventName.CONSOLE_ALERT:
            self.alerts[key] = str(event.fields.get("alert", "?"))
            when = event.fields.get("time")
            seen = AlertSeen(
                float(when) if isinstance(when, int | float) else self._clock(),
                str(event.fields.get("alert", "?")),
                str(event.fields.get("severity", "?")),
                str(event.fields.get("line", "")),
            )
            self.alert_log.setdefault(key, deque(maxlen=ALERTS_PER_CONSOLE)).append(seen)
        if event.event == EventName.VM_EXPIRED:
            self.alerts.pop(key, None)
            self.alert_log.pop(key, None)
            self.consoles.pop(key, None)
            self.tails.pop(key, None)
            self.activity.pop(key, None)
            self.pinned.discard(key)
            self._order_stale = True
            return
        console = self.consoles.get(key)
        if console is None:
            return
        if event.event != EventName.LOCK_CHANGED:  # a lock is the operators', not the VM's
            self._active(key, self._clock())
        fields = event.fields
        match event.event:
            case EventName.VM_DISCONNECTED:
                self._update(key, connected=False)
            case EventName.VM_RENAMED:
                self._order_stale = True
                vm_name = fields.get("vm_name")
                self._update(
                    key,
                    name=event.name or console.name,
                    vm_name=vm_name if isinstance(vm_name, str) else console.vm_name,
                )
            case EventName.VMOTION_BEGIN:
                self._update(key, vmotion=VMotionPhase.PENDING)
            case EventName.VMOTION_PEER:
                self._update(key, vmotion=VMotionPhase.PEERED)
            case EventName.VMOTION_COMPLETE | EventName.VMOTION_ABORT:
                self._update(key, vmotion=VMotionPhase.NORMAL)
            case EventName.CLIENT_ATTACHED:
                client = _client_of(event)
                if client is not None:
                    attached = (*(c for c in console.attached if c.id != client.id), client)
                    # A console with a client never expires (docs: `expires_in`).
                    self._update(key, attached=attached, clients=len(attached), expires_in=None)
            case EventName.CLIENT_DETACHED:
                gone = fields.get("client")
                attached = tuple(c for c in console.attached if c.id != gone)
                changes: dict[str, Any] = {"attached": attached, "clients": len(attached)}
                holder = console.lock_holder
                if holder is not None and holder.id == gone:
                    # lock_changed follows, but the row must not name a departed holder
                    # in between.
                    changes |= {"lock": None, "lock_holder": None}
                self._update(key, **changes)
            case EventName.LOCK_CHANGED:
                self._lock_changed(key, console, fields.get("lock"), fields.get("holder"))

    def _lock_changed(self, key: str, console: ConsoleInfo, lock: object, holder: object) -> None:
        try:
            mode = LockMode(lock) if isinstance(lock, str) else None
        except ValueError:  # a newer daemon's lock mode: show no lock rather than guess
            mode = None
        client = next((c for c in console.attached if c.id == holder), None)
        self._update(key, lock=mode, lock_holder=client if mode is not None else None)

    def _update(self, key: str, **changes: Any) -> None:
        self.consoles[key] = dataclasses.replace(self.consoles[key], **changes)
        if "port" in changes or "name" in changes:
            self._order_stale = True

    # -- tail --------------------------------------------------------------------------

    def start_following(self, key: str) -> None:
        """Start buffering `output` events for `key` (call before sending `tail`)."""
        self.tails.setdefault(key, bytearray())

    def tail_started(self, key: str, data: bytes) -> None:
        """The `tail` reply's scrollback.  It precedes any output already buffered:
        the daemon sends the reply before the first `output` event, but the events may
        be folded in before the task awaiting the reply runs again."""
        buffer = self.tails.get(key)
        if buffer is None:  # stopped (or expired) while the request was in flight
            return
        buffer[:0] = data
        self._trim(buffer)

    def stop_following(self, key: str) -> None:
        self.tails.pop(key, None)

    def _output(self, event: Event) -> None:
        key = event.key or ""
        buffer = self.tails.get(key)
        if buffer is None:
            return
        try:
            buffer += event.data
        except AdminError:  # no valid data_b64: nothing to show
            return
        self._trim(buffer)
        if key in self.consoles:
            self._active(key, self._clock())

    def _trim(self, buffer: bytearray) -> None:
        if len(buffer) > self._tail_limit:
            del buffer[: len(buffer) - self._tail_limit]
