"""A plugin whose work is slow (a stuck database): it offloads, so the loop is free."""

from __future__ import annotations

import threading
from typing import Any

from vspc.vspcd.ext.plugins import Offload


class Slow:
    def __init__(self, args: str) -> None:
        self.unblock = threading.Event()
        self.stored: list[bytes] = []
        self.offload: Offload[bytes] = Offload(self._store, limit=int(args or "2"))

    def _store(self, data: bytes) -> None:
        self.unblock.wait()  # the slow call
        self.stored.append(data)

    def start(self, hub: Any) -> None:
        pass

    def console_up(self, event: Any) -> None:
        pass

    def console_down(self, event: Any) -> None:
        pass

    def console_output(self, key: Any, name: str, data: bytes) -> None:
        self.offload.put(data)

    def client_changed(self, event: Any) -> None:
        pass

    def close(self) -> None:
        self.unblock.set()
        self.offload.close(timeout=5.0)
