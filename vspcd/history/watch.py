"""Console watch: alert rules on every console's output, and the alerts remembered.

Spec: docs/operations.md "Console alerts".  Boundary: `ConsoleWatch` is a hub output
listener (`Hub.add_output_listener`, like the console logs) and observer; it hands
each chunk to the sans-IO `AlertMatcher` (vspcd/history/alerts.py) and reports what
it finds through `Hub.report_alert`, which every observer then sees as a typed
`ConsoleAlert` event: admin subscribers, `--log-events`, hooks, metrics, the webhook
and `AlertBook`.  It never blocks a console: matching is a literal pre-filter over
the chunk and a regex scan only of the lines it lets through, and everything that
does I/O (hooks, webhook, the persist file) is an observer that queues or writes
one row.

`AlertBook` keeps the newest alerts for the admin `alerts` command, in memory and,
with `--persist-file`, in the store's `alert` table (vspcd/history/store.py), so
they outlive a restart.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vspc.vspcd.history import store
from vspc.vspcd.history.alerts import AlertMatcher, AlertRule
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.hub.events import ConsoleAlert, ConsoleExpired, HubEvent, VmRenamed
from vspc.vspcd.hub.hub import Hub
from vspc.vspcd.hub.selectors import ConsoleRef

log = logging.getLogger(__name__)

__all__ = ["KEEP_ALERTS", "AlertBook", "AlertRecord", "ConsoleWatch"]

KEEP_ALERTS = 1000  # alerts remembered (memory and persist file)


class ConsoleWatch:
    """Feeds console output to the alert rules; reports hits through the hub.

    Args:
        hub: the hub to observe and report to.
        rules: the rules in force (`alerts.rules_in_force`).
        wall_clock: Unix time for hold-offs and the alerts' `time` (tests pass a fake).
    """

    def __init__(
        self,
        hub: Hub,
        rules: Sequence[AlertRule],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub
        self.matcher = AlertMatcher(rules, clock=wall_clock)
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        """Listen to every console's output and follow renames and expiry."""
        if not self._unsubscribe:
            self._unsubscribe = [
                self._hub.add_output_listener(self.output),
                self._hub.subscribe(self.observe),
            ]

    def stop(self) -> None:
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe = []

    def set_rules(self, rules: Sequence[AlertRule]) -> None:
        """A reload's rules; hold-offs and unfinished lines are kept."""
        self.matcher.set_rules(rules)

    def output(self, console: Console, data: bytes) -> None:
        """Hub output listener."""
        hits = self.matcher.feed(console.key, lambda: _ref(console), data)
        for hit in hits:
            self._hub.report_alert(
                console, hit.rule.name, hit.rule.severity, hit.line, hit.context, hit.when
            )

    def observe(self, event: HubEvent) -> None:
        """Hub observer: names change which rules apply; expiry forgets the console."""
        match event:
            case VmRenamed(key=key):
                self.matcher.renamed(key)
            case ConsoleExpired(key=key):
                self.matcher.forget(key)


def _ref(console: Console) -> ConsoleRef:
    # The fields access rules match on (vspcd/faces/admin/access.py `console_ref`).
    return ConsoleRef(console.display_name, console.name, console.key.uuid, console.key.label)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One remembered alert (the admin `alerts` row)."""

    key: ConsoleKey
    name: str
    alert: str
    severity: str
    line: str
    context: tuple[str, ...]
    time: float

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "key": str(self.key),
            "alert": self.alert,
            "severity": self.severity,
            "line": self.line,
            "context": list(self.context),
            "time": round(self.time, 3),
        }


class AlertBook:
    """The newest `keep` alerts, oldest first; persisted when given a store.

    Args:
        db: the persist file's open store (`store.open_store`), or None (memory only).
            The book writes one row per alert and never closes it.
        keep: how many alerts are remembered.
    """

    def __init__(self, db: sqlite3.Connection | None = None, *, keep: int = KEEP_ALERTS) -> None:
        self._db = db
        self._keep = keep
        self._alerts: deque[AlertRecord] = deque(maxlen=keep)
        self._failing = False
        self._since_prune = 0
        if db is not None:
            try:
                rows = store.load_alerts(db, keep)
            except sqlite3.Error as exc:
                log.error("persist file: cannot read alerts (%s)", exc)
                rows = []
            for row in rows:
                self._alerts.append(
                    AlertRecord(
                        ConsoleKey(row.uuid, row.label),
                        row.name,
                        row.alert,
                        row.severity,
                        row.line,
                        row.context,
                        row.time,
                    )
                )

    def observe(self, event: HubEvent) -> None:
        """Hub observer: remember each `ConsoleAlert`."""
        if not isinstance(event, ConsoleAlert):
            return
        record = AlertRecord(
            event.key,
            event.name,
            event.alert,
            event.severity.value,
            event.line,
            event.context,
            event.time,
        )
        self._alerts.append(record)
        if self._db is not None:
            self._write(record)

    def recent(self, limit: int) -> list[AlertRecord]:
        """Up to `limit` newest alerts, oldest first."""
        if limit <= 0:
            return []
        return list(self._alerts)[-limit:]

    def close(self) -> None:
        """Stop writing (the persist file is closed by its owner)."""
        self._db = None

    def _write(self, record: AlertRecord) -> None:
        assert self._db is not None
        row = store.AlertRow(
            record.time,
            record.key.uuid,
            record.key.label,
            record.name,
            record.alert,
            record.severity,
            record.line,
            record.context,
        )
        try:
            store.save_alert(self._db, row)
            self._since_prune += 1
            if self._since_prune >= max(1, self._keep // 10):
                self._since_prune = 0
                store.prune_alerts(self._db, self._keep)
        except sqlite3.Error as exc:
            if not self._failing:
                log.error("persist file: alert not saved (%s); kept in memory", exc)
                self._failing = True
            return
        if self._failing:
            log.info("persist file: saving alerts again")
            self._failing = False
