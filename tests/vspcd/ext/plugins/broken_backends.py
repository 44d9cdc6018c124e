"""Plugins that must fail the start with a clear message (exit status 2)."""

from __future__ import annotations

from typing import Any


class NoArgs:
    """Constructor takes no --backend-args string."""

    def __init__(self) -> None:
        pass

    def start(self, hub: Any) -> None: ...
    def console_up(self, event: Any) -> None: ...
    def console_down(self, event: Any) -> None: ...
    def console_output(self, key: Any, name: str, data: bytes) -> None: ...
    def client_changed(self, event: Any) -> None: ...
    def close(self) -> None: ...


class Incomplete:
    """No console_output, no close."""

    def __init__(self, args: str) -> None:
        pass

    def start(self, hub: Any) -> None: ...
    def console_up(self, event: Any) -> None: ...
    def console_down(self, event: Any) -> None: ...
    def client_changed(self, event: Any) -> None: ...


class FailingStart(NoArgs):
    def __init__(self, args: str) -> None:
        pass

    def start(self, hub: Any) -> None:
        raise OSError("cannot reach the CMDB")
