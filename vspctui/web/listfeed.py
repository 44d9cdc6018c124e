"""The console list, kept live from one session's `subscribe` (docs/vspc-web.md,
"The console list").

Boundary: takes a subscribed `AdminClient` (the session's own, so the list shows
exactly the consoles that user may watch) and keeps compact rows: key, name, VM
connected, clients, lock, last activity, and the newest console alert (rule,
severity, time; seeded from the admin `alerts` command, then kept from `console_alert`
events: docs/operations.md "Console alerts").  Changes are coalesced and pushed to every
list socket of the session at most every `FLUSH` seconds as one message
`{"rows": [...changed...], "gone": [keys]}`, so 10,000 consoles and event bursts
cost one small message per interval, not one per event.  A socket whose queue of
unsent messages is full is dropped (it reconnects and gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from vspc.common.admin import MAX_ALERTS, AdminError, ConsoleInfo, Event, EventName
from vspc.vspctui.client import AdminClient, ClientError

__all__ = ["FLUSH", "ListFeed", "alert_of", "row_of"]

FLUSH = 0.2  # seconds between pushes of coalesced changes
QUEUE = 32  # unsent messages per list socket before it is dropped


def row_of(info: ConsoleInfo) -> dict[str, Any]:
    """The list page's compact row."""
    return {
        "key": info.key,
        "name": info.name,
        "connected": info.connected,
        "clients": info.clients,
        "lock": info.lock.value if info.lock is not None else None,
        "last": info.last_output,
        "alert": None,
    }


def alert_of(fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """A row's alert badge from a `console_alert` event or an `alerts` row (None if it
    is malformed): the rule, its severity and when.  The matching line stays out of
    the list's messages; the console page shows it."""
    rule, severity, when = fields.get("alert"), fields.get("severity"), fields.get("time")
    if not isinstance(rule, str) or not isinstance(severity, str):
        return None
    if not isinstance(when, int | float) or isinstance(when, bool):
        when = None
    return {"rule": rule, "severity": severity, "time": when}


class ListFeed:
    """One session's live console list."""

    def __init__(self, client: AdminClient, *, alerts: bool = True) -> None:
        self.client = client
        self.with_alerts = alerts  # the daemon has the `alerts` command (hello's capabilities)
        self.rows: dict[str, dict[str, Any]] = {}
        self.alerts: dict[str, dict[str, Any]] = {}  # key -> the newest alert's badge
        self.sinks: set[asyncio.Queue[str | None]] = set()
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self.events = 0
        self.ended = False

    async def start(self) -> None:
        snapshot = await self.client.subscribe()
        self.rows = {info.key: row_of(info) for info in snapshot}
        if self.with_alerts:
            # After `subscribe`: an alert raised in between is in the reply and among
            # the events, and `_note_alert` keeps whichever is newer.
            await self._seed_alerts()
        self._task = asyncio.get_running_loop().create_task(self._read(), name="vspc-web-list")

    async def _seed_alerts(self) -> None:
        try:
            reply = await self.client.request("alerts", limit=MAX_ALERTS)
        except AdminError:  # refused (e.g. by an access rule): the list goes on without
            return
        rows = reply.get("alerts")
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                self._note_alert(row["key"], row)

    def _note_alert(self, key: str, fields: Mapping[str, Any]) -> bool:
        """Keep `fields` as `key`'s alert unless a newer one is known; whether it was."""
        badge = alert_of(fields)
        if badge is None:
            return False
        known = self.alerts.get(key)
        if known is not None and (known["time"] or 0) > (badge["time"] or 0):
            return False
        self.alerts[key] = badge
        row = self.rows.get(key)
        if row is not None:
            row["alert"] = badge
        return True

    def snapshot(self) -> str:
        return json.dumps(
            {"rows": list(self.rows.values()), "gone": [], "full": True}, separators=(",", ":")
        )

    def add(self) -> asyncio.Queue[str | None]:
        sink: asyncio.Queue[str | None] = asyncio.Queue(QUEUE)
        sink.put_nowait(self.snapshot())
        if self.ended:
            sink.put_nowait(None)
        self.sinks.add(sink)
        return sink

    def remove(self, sink: asyncio.Queue[str | None]) -> None:
        self.sinks.discard(sink)

    async def _read(self) -> None:
        try:
            async for event in self.client.events():
                self.apply(event)
        except (ClientError, Exception):  # the connection ended; the sockets are told
            pass
        finally:
            self.ended = True
            self._flush()
            for sink in tuple(self.sinks):
                with contextlib.suppress(asyncio.QueueFull):
                    sink.put_nowait(None)

    def apply(self, event: Event) -> None:
        """Fold one admin event into the rows (docs/admin-protocol.md "Events")."""
        self.events += 1
        key = event.key
        if key is None:
            return
        kind = event.event
        if kind == "vm_connected":
            console = event.console
            if console is not None:
                self.rows[key] = row_of(console)
                self.rows[key]["last"] = time.time()
                self.rows[key]["alert"] = self.alerts.get(key)
                self._gone.discard(key)
                self._changed(key)
            return
        if kind == "vm_expired":
            self.alerts.pop(key, None)
            if self.rows.pop(key, None) is not None:
                self._dirty.discard(key)
                self._gone.add(key)
                self._schedule()
            return
        if kind == EventName.CONSOLE_ALERT:
            if self._note_alert(key, event.fields) and key in self.rows:
                self._changed(key)
            return
        row = self.rows.get(key)
        if row is None:
            return
        if event.name:
            row["name"] = event.name
        if kind == "vm_disconnected":
            row["connected"] = False
        elif kind == "client_attached":
            row["clients"] += 1
        elif kind == "client_detached":
            row["clients"] = max(0, row["clients"] - 1)
        elif kind == "lock_changed":
            lock = event.fields.get("lock")
            row["lock"] = lock if isinstance(lock, str) else None
        row["last"] = time.time()
        self._changed(key)

    def _changed(self, key: str) -> None:
        self._dirty.add(key)
        self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        if not self._dirty and not self._gone:
            return
        rows = [self.rows[key] for key in self._dirty if key in self.rows]
        message = json.dumps({"rows": rows, "gone": sorted(self._gone)}, separators=(",", ":"))
        self._dirty.clear()
        self._gone.clear()
        for sink in tuple(self.sinks):
            try:
                sink.put_nowait(message)
            except asyncio.QueueFull:  # a browser that does not read: drop it
                self.sinks.discard(sink)
                while not sink.empty():
                    sink.get_nowait()
                sink.put_nowait(None)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
