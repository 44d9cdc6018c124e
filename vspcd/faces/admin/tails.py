"""The consoles one admin connection follows: `tail` with `follow` (docs/admin-protocol.md
"tail / untail").

Boundary: taps the hub's output of each followed console and hands every chunk, as
an encoded `output` event line, to the connection's `push`; a followed console that
expires gets one `tail_end` line and is no longer followed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vspc.common.admin import EventName, encode_bytes, encode_message
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.hub import Hub

__all__ = ["Tails"]


@dataclass(eq=False, slots=True)
class _Tail:
    """One console followed."""

    console: Console
    untap: Callable[[], None]


class Tails:
    """The consoles one connection follows.

    Args:
        hub: the daemon's hub (its output taps).
        push: writes one event line to the connection.
        fail: called, inside the `except` block, when pushing output failed; the
            connection logs it and closes.
    """

    def __init__(self, hub: Hub, push: Callable[[bytes], None], fail: Callable[[], None]) -> None:
        self._hub = hub
        self._push = push
        self._fail = fail
        self._tails: dict[str, _Tail] = {}

    def __bool__(self) -> bool:
        return bool(self._tails)

    def follow(self, console: Console) -> None:
        """Push this console's output as `output` events until unfollowed (idempotent)."""
        key = str(console.key)
        if key in self._tails:
            return

        def tap(data: bytes) -> None:
            # Called inside the hub's VM data path: a failure here must not reach the
            # VM's link (it would close the VM connection).
            try:
                self._push(_event(EventName.OUTPUT, key, console, data_b64=encode_bytes(data)))
            except Exception:
                self._fail()

        self._tails[key] = _Tail(console, self._hub.tap(console.key, tap))

    def unfollow(self, key: str) -> None:
        """Stop following one console (not following it is fine)."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            tail.untap()

    def clear(self) -> None:
        """Stop following every console."""
        for key in list(self._tails):
            self.unfollow(key)

    def consoles(self) -> list[Console]:
        """The consoles followed."""
        return [tail.console for tail in self._tails.values()]

    def expired(self, key: str, reason: str = "console expired") -> None:
        """The console `key` expired (or the peer may no longer watch it): if
        followed, push `tail_end` with `reason` and stop."""
        tail = self._tails.pop(key, None)
        if tail is not None:
            tail.untap()
            self._push(_event(EventName.TAIL_END, key, tail.console, reason=reason))


def _event(name: EventName, key: str, console: Console, **fields: str) -> bytes:
    return encode_message({"event": name.value, "key": key, "name": console.display_name, **fields})
