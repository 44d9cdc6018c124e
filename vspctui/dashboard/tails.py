"""vspc-tui's sync workers: what vspcd is asked to send follows what the operator looks at.

Boundary: `TailSync` keeps the daemon's tail follows (`tail` with `follow`, `untail`:
docs/admin-protocol.md) equal to the consoles whose output should be live -- the
focused console, the pinned ones and the grid's -- starting the focused one first and
untailing what is no longer wanted.  It reads the wanted set afresh after each
request, so holding a key down over a long list sends a few requests, not one per row
passed.  `DetailSync` asks vspcd to `show` the focused console while the detail pane
is open.  Both run as tasks of the controller (vspctui/dashboard/app.py), one request
at a time, on the one asyncio loop; they fold replies into the model and the layout
and ask the controller to redraw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vspc.common.admin import AdminError, ConsoleInfo, ErrorCode, EventName
from vspc.vspctui.client import AdminClient, ClientError
from vspc.vspctui.dashboard.layout import Layout, Mode
from vspc.vspctui.dashboard.model import Model

__all__ = ["TAIL_BYTES", "Connection", "DetailSync", "Refresh", "Say", "TailSync"]

TAIL_BYTES = 16 * 1024  # scrollback asked for when following a console

Connection = Callable[[], AdminClient | None]  # the client while connected, else None
Say = Callable[[str, bool], None]  # a message for the status line, and if it is an error
Refresh = Callable[[bool], None]  # redraw soon; True if the console list changed


class TailSync:
    """Keeps vspcd's follows equal to `wanted()`; run `run()` as a task, `wake()` it
    whenever the focus, the pins, the grid or the connection change."""

    def __init__(
        self, model: Model, layout: Layout, connection: Connection, say: Say, refresh: Refresh
    ) -> None:
        self._model, self._layout = model, layout
        self._connection, self._say, self._refresh = connection, say, refresh
        # the consoles vspcd follows for us, and those it refused (not retried until
        # the focus moves or we reconnect)
        self.tailing: set[str] = set()
        self.refused: set[str] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def reset(self) -> None:
        """A new connection: vspcd follows nothing for us yet, and refused nothing."""
        self.tailing.clear()
        self.refused.clear()

    def focus_moved(self) -> None:
        """The preview follows the focus: tail the new one, untail the old."""
        self.refused.clear()
        self.wake()

    def on_event(self, name: str, key: str) -> None:
        """An event (not output) from vspcd, already folded into the model."""
        if name in (EventName.TAIL_END, EventName.VM_EXPIRED):
            self.tailing.discard(key)
        elif name == EventName.VM_CONNECTED:
            # A console that was refused a tail (not there yet) may be tailed now.
            self.refused.discard(key)
        if set(self.wanted()) != self.tailing:
            # A console appeared under the focus (e.g. right after a reconnect, before
            # its VM did) or went away: the tails follow the list.
            self.wake()

    def wanted(self) -> list[str]:
        """The consoles whose output should be live, the focused one first."""
        layout, model = self._layout, self._model
        focused = layout.console_list.focused
        wanted = [focused.key] if focused is not None else []
        wanted += sorted(model.pinned)
        if layout.mode is Mode.GRID:
            wanted += layout.grid_keys
        return [k for k in dict.fromkeys(wanted) if k in model.consoles]

    async def run(self) -> None:
        """Keep vspcd's follows equal to `wanted()`, one request at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (client := self._connection()) is not None:
                wanted = self.wanted()
                start = [k for k in wanted if k not in self.tailing]
                start = [k for k in start if k not in self.refused]
                stop = [k for k in self.tailing if k not in wanted]
                try:
                    # The focused console first: it is what the operator looks at.
                    if start and (not stop or start[0] == wanted[0]):
                        await self._tail(client, start[0])
                    elif stop:
                        await self._untail(client, stop[0])
                    else:
                        break
                except ClientError:
                    break  # the connection is gone: the session reconnects and wakes us
                self._refresh(False)

    async def _tail(self, client: AdminClient, key: str) -> None:
        model = self._model
        self.tailing.add(key)
        model.start_following(key)
        try:
            chunk = await client.tail(key, TAIL_BYTES, follow=True)
        except AdminError as exc:
            self.tailing.discard(key)
            self.refused.add(key)
            model.stop_following(key)
            console = model.consoles.get(key)
            self._say(f"tail {console.name if console else key}: {exc}", True)
        except ClientError:
            self.tailing.discard(key)
            raise
        else:
            model.tail_started(key, chunk.data)

    async def _untail(self, client: AdminClient, key: str) -> None:
        self.tailing.discard(key)
        self._model.stop_following(key)
        try:
            await client.request("untail", vm=key)
        except AdminError as exc:
            if exc.code is not ErrorCode.VM_NOT_FOUND:  # it expired meanwhile: nothing to stop
                self._say(f"untail {key}: {exc}", True)


class DetailSync:
    """Asks vspcd to `show` the focused console while the detail pane is open; the
    reply goes to `layout.shown_detail`.  Run `run()` as a task and `wake()` it."""

    def __init__(
        self, model: Model, layout: Layout, connection: Connection, say: Say, refresh: Refresh
    ) -> None:
        self._model, self._layout = model, layout
        self._connection, self._say, self._refresh = connection, say, refresh
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        layout = self._layout
        while True:
            await self._wake.wait()
            self._wake.clear()
            client, console = self._connection(), layout.console_list.focused
            if layout.mode is not Mode.DETAIL or client is None or console is None:
                continue
            try:
                reply = await client.request("show", vm=console.key)
                row = reply.get("console")
                if not isinstance(row, dict):
                    raise AdminError(ErrorCode.BAD_FIELD, "show reply without 'console'")
                info = ConsoleInfo.from_json(row)
            except AdminError as exc:
                self._say(f"show {console.name}: {exc}", True)
                self._refresh(False)
                continue
            except ClientError:
                continue  # the session reconnects
            self._learn_from_show(info)
            layout.shown_detail = (info.key, info)
            self._refresh(False)

    def _learn_from_show(self, info: ConsoleInfo) -> None:
        """A `show` that says more bytes came from the VM than the last one did means
        the console was active in between (for consoles not being tailed, from a
        daemon that sends no `last_output`)."""
        self._model.learn([info])
        previous = self._layout.shown_detail
        if previous is None or previous[0] != info.key:
            return
        before, after = previous[1].counters or {}, info.counters or {}
        if after.get("bytes_from_vm", 0) > before.get("bytes_from_vm", 0):
            self._model.touch(info.key)
