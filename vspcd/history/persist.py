"""Remember consoles across restarts: hub events -> store rows, rows -> restored consoles.

Boundary: glue between the hub (vspcd/hub/hub.py, pure) and the sqlite3 store
(vspcd/history/store.py).  The hub is only observed (`Hub.subscribe`) and, at startup, asked
to `restore()` each remembered console; it never learns a store exists.

This is vSPC.py's File backend (`--backend File --backend-args '-f PATH'`): each
console's key -> (name, port) is written when it appears, is renamed, or moves to
another host, and deleted when it expires; at startup every remembered console is
listed again, disconnected, on its old telnet port where that port is still free,
with its expiry timer armed for `--vm-expire-time`.  A VM that reconnects finds its
console and therefore its port.

Writes are one autocommitted row on the event loop per event, never per byte of
console output.  A failing write (disk full, file removed) is logged once and the
daemon carries on in memory; the next successful write is logged too.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from vspc.common import vmware as vm
from vspc.vspcd.history import store
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.hub.events import (
    ConsoleExpired,
    HubEvent,
    VmConnected,
    VmDisconnected,
    VMotionCompleted,
    VmRenamed,
)
from vspc.vspcd.hub.hub import Hub

log = logging.getLogger(__name__)

__all__ = ["Persister"]


class Persister:
    """Keeps the persist file in step with the hub's consoles.

    Args:
        db: an open store (`store.open_store`); closed by `close()`.
        hub: the hub to restore into and observe.
        wall_clock: Unix time for `last_seen` (tests pass a fake).
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        hub: Hub,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._hub = hub
        self._wall_clock = wall_clock
        self._failing = False
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The open store (console alerts are kept there too, vspcd/history/watch.py)."""
        return self._db

    def restore(self, bind: Callable[[int | None], int | None]) -> list[Console]:
        """Recreate every remembered console in the hub, then start observing it.

        Args:
            bind: binds a telnet port for a console, preferring the remembered one
                (None: none remembered); returns the port bound, or None.

        Returns:
            The consoles restored.
        """
        restored: list[Console] = []
        for row in store.load_consoles(self._db):
            try:
                key = ConsoleKey(vm.canonical_uuid(row.uuid), row.label)
            except ValueError:
                log.warning("persist file: skipping a row with a bad UUID %r", row.uuid)
                continue
            port = bind(row.port)
            console = self._hub.restore(key, row.name, port, row.service_uri)
            restored.append(console)
            if port != row.port:
                log.info("%s: remembered telnet port %s is taken; now %s", key, row.port, port)
                self._save(console, row.last_seen)
        if restored:
            log.info("restored %d console(s) from the persist file", len(restored))
        self._unsubscribe = self._hub.subscribe(self._observe)
        return restored

    def _observe(self, event: HubEvent) -> None:
        match event:
            case VmConnected() | VmRenamed() | VMotionCompleted() | VmDisconnected():
                # The name, port or serviceURI may have changed, or last_seen moves on.
                console = self._hub.console(event.key)
                if console is not None:
                    self._save(console, self._wall_clock())
            case ConsoleExpired(key=key):
                self._write(store.delete_console, key.uuid, key.label)

    def _save(self, console: Console, last_seen: float) -> None:
        row = store.ConsoleRow(
            uuid=console.key.uuid,
            label=console.key.label,
            name=console.name,
            port=console.port,
            service_uri=console.service_uri,
            last_seen=last_seen,
        )
        self._write(store.save_console, row)

    def _write(self, query: Callable[..., object], *args: Any) -> None:
        try:
            query(self._db, *args)
        except sqlite3.Error as exc:
            if not self._failing:
                log.error("persist file: write failed (%s); carrying on in memory", exc)
                self._failing = True
            return
        if self._failing:
            log.info("persist file: writing again")
            self._failing = False

    def close(self) -> None:
        """Stop observing and close the file (idempotent)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._db.close()
