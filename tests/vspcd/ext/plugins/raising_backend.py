"""A plugin whose callbacks raise: vspcd must log, count and carry on."""

from __future__ import annotations

from typing import Any


class Raising:
    def __init__(self, args: str) -> None:
        self.closed = False

    def start(self, hub: Any) -> None:
        pass

    def console_up(self, event: Any) -> None:
        raise RuntimeError("console_up is broken")

    def console_down(self, event: Any) -> None:
        pass

    def console_output(self, key: Any, name: str, data: bytes) -> None:
        raise ValueError(f"cannot take {len(data)} bytes")

    def client_changed(self, event: Any) -> None:
        raise KeyError(event.client.id)

    def close(self) -> None:
        self.closed = True
