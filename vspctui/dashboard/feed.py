"""vspc-tui's feed: the subscription that keeps the model in step with vspcd.

Boundary: `Feed` owns the dashboard's admin connection (vspctui/client.py).  It
subscribes (docs/admin-protocol.md: a `subscribe` reply is a snapshot, then events),
folds every event into the model (vspctui/dashboard/model.py), tells the sync workers
(vspctui/dashboard/tails.py) what changed and asks the controller to redraw.  When
vspcd goes away the rows turn stale, the status line says so, and it tries again with
exponential back-off; on success the list is rebuilt from a fresh `subscribe`
snapshot, never patched from what was shown before (docs/vspc-tui.md, "When vspcd
goes away").  It also polls `list` now and then for the activity of consoles nobody
tails (docs/vspc-tui.md, "Activity").
"""

from __future__ import annotations

import asyncio

from vspc.common.admin import AdminError, EventName
from vspc.vspctui.client import AdminAddress, AdminClient, ClientError, consoles_of
from vspc.vspctui.dashboard.layout import Layout, Mode
from vspc.vspctui.dashboard.model import Model
from vspc.vspctui.dashboard.tails import DetailSync, Refresh, Say, TailSync

__all__ = ["Feed"]


class Feed:
    """The admin connection and what comes over it.

    Args:
        backoff: first and longest wait (s) between attempts to reconnect to vspcd.
        activity_poll: how often (s) to `list` again for the `last_output` of
            consoles nobody tails, when the daemon sends it.
    """

    def __init__(
        self,
        address: AdminAddress,
        model: Model,
        layout: Layout,
        tails: TailSync,
        details: DetailSync,
        say: Say,
        refresh: Refresh,
        *,
        backoff: tuple[float, float],
        activity_poll: float,
    ) -> None:
        self.address = address
        self._model, self._layout = model, layout
        self._tails, self._details = tails, details
        self._say, self._refresh = say, refresh
        self._backoff = backoff
        self._activity_poll = activity_poll
        self._daemon_activity = False  # it sends `last_output`
        self.client: AdminClient | None = None
        self.reconnected = asyncio.Event()  # set on each reconnection (tests wait on it)

    def connected(self) -> AdminClient | None:
        """The admin connection while it is up, else None."""
        return self.client if self._model.connected else None

    async def connect(self) -> None:
        """The first connection.

        Raises:
            ConnectError: vspcd cannot be reached.
        """
        self.client = await AdminClient.connect(self.address)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def subscribe(self, client: AdminClient) -> None:
        """Subscribe on `client` and rebuild the model from the snapshot.

        Raises:
            AdminError, ClientError: the subscription failed.
        """
        reply = await client.request("subscribe")
        consoles = consoles_of(reply)
        self._model.load(consoles)
        # A daemon that knows when consoles were created also sends `last_output`,
        # even if no console has printed anything yet.
        self._daemon_activity = any(
            c.created is not None or c.last_output is not None for c in consoles
        )
        self._tails.reset()
        self._layout.shown_detail = None

    async def run(self) -> None:
        """Pump events; when the connection goes, reconnect, and pump again."""
        while True:
            why = await self._pump()
            self._connection_lost(why)
            await self._reconnect(why)

    async def _pump(self) -> str:
        """Fold events into the model until the connection ends; returns why it did."""
        client = self.client
        assert client is not None
        layout = self._layout
        try:
            async for event in client.events():
                self._model.apply(event)
                if event.event == EventName.OUTPUT:
                    # Output only changes the tails; the list need not be redrawn.
                    self._refresh(False)
                    continue
                self._tails.on_event(event.event, event.key or "")
                focused = layout.console_list.focused
                if layout.mode is Mode.DETAIL and focused is not None and event.key == focused.key:
                    self._details.wake()
                self._refresh(True)
        except (AdminError, ClientError) as exc:
            return str(exc)
        return "connection closed by vspcd"

    def _connection_lost(self, why: str) -> None:
        self._model.note(f"lost the connection to vspcd: {why}")
        self._model.disconnected()
        self._tails.tailing.clear()
        self._layout.shown_detail = None
        self._layout.connection = "not connected to vspcd"
        self._say(f"lost the connection to vspcd ({why}); reconnecting, q quits", True)
        self._refresh(True)

    async def _reconnect(self, why: str) -> None:
        """Try again until vspcd answers, waiting longer each time (up to the
        back-off's maximum), then resubscribe."""
        old = self.client
        if old is not None:
            await old.close()
        delay, longest = self._backoff
        attempt, last_why = 0, why
        while True:
            attempt += 1
            self._layout.connection = f"not connected to vspcd: retry {attempt} in {delay:g}s"
            if why != last_why:  # the event log says why, once per different reason
                self._model.note(f"cannot reach vspcd: {why}")
                last_why = why
            self._refresh(True)
            await asyncio.sleep(delay)  # the back-off itself: nothing to wait on
            try:
                client = await AdminClient.connect(self.address)
            except ClientError as exc:
                why, delay = str(exc), min(delay * 2, longest)
                continue
            try:
                await self.subscribe(client)
            except (AdminError, ClientError) as exc:
                await client.close()
                why, delay = str(exc), min(delay * 2, longest)
                continue
            break
        self.client = client
        self._layout.connection = ""
        self._model.note(f"reconnected to vspcd at {self.address}")
        self._say(f"reconnected to vspcd at {self.address}", False)
        self._tails.wake()
        self._details.wake()
        self.reconnected.set()
        self._refresh(True)

    async def poll_activity(self) -> None:
        """Events only tell about changes, and output only comes for tailed consoles;
        a daemon that sends `last_output` is asked for it again now and then, so the
        column and the activity order cover every console."""
        while True:
            await asyncio.sleep(self._activity_poll)
            client = self.connected()
            if not self._daemon_activity or client is None:
                continue
            try:
                consoles = consoles_of(await client.request("list"))
            except (AdminError, ClientError):
                continue  # the session notices a lost connection on its own
            self._model.learn(consoles)
            self._refresh(True)
