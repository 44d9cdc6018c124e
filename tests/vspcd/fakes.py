"""Test doubles for the hub: a fake clock and scheduler, recording VM and client
channels, and a port allocator.  No sockets, no event loop (docs/development.md "Tests").

The channels satisfy `vspc.vspcd.hub.console.VmChannel` / `ClientChannel` structurally and
log every call in order in `calls`, so a test can check what was sent and in what order
(e.g. the held queue before GOAHEAD, docs/protocol.md §4.4 duty 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vspc.vspcd.hub.console import ConsoleKey

Call = tuple[Any, ...]


class FakeClock:
    """`time.monotonic` stand-in; moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class FakeHandle:
    """What `FakeScheduler.call_later` returns; fire or cancel it by hand."""

    when: float
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)

    def fire(self) -> None:
        assert self.pending, "firing a cancelled or already fired timer"
        self.fired = True
        self.callback()


class FakeScheduler:
    """`loop.call_later` stand-in bound to a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.handles: list[FakeHandle] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self.clock.now + delay, delay, callback)
        self.handles.append(handle)
        return handle

    def pending(self) -> list[FakeHandle]:
        return [h for h in self.handles if h.pending]

    def advance(self, seconds: float) -> int:
        """Move the clock forward, firing due timers in time order; returns how many fired."""
        end = self.clock.now + seconds
        fired = 0
        while True:
            due = sorted((h for h in self.pending() if h.when <= end), key=lambda h: h.when)
            if not due:
                break
            self.clock.now = max(self.clock.now, due[0].when)
            due[0].fire()
            fired += 1
        self.clock.now = end
        return fired


class FakeVm:
    """A recording `VmChannel` with a settable transport backlog."""

    def __init__(self, peer: str = "esx-a:40001", backlog: int = 0) -> None:
        self.peer = peer
        self.backlog = backlog
        self.calls: list[Call] = []

    def send_console(self, data: bytes) -> None:
        self.calls.append(("send", data))

    def goahead(self, sequence: bytes, secret: bytes) -> None:
        self.calls.append(("goahead", sequence, secret))

    def notnow(self, sequence: bytes) -> None:
        self.calls.append(("notnow", sequence))

    def peer_ok(self, sequence: bytes) -> None:
        self.calls.append(("peer_ok", sequence))

    def write_backlog(self) -> int:
        return self.backlog

    def close(self) -> None:
        self.calls.append(("close",))

    def probe(self) -> None:
        self.calls.append(("probe",))

    def send_break(self) -> bool:
        self.calls.append(("break",))
        return True

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c[0] == kind]

    @property
    def sent(self) -> bytes:
        """Every console byte written to this VM, in order."""
        return b"".join(c[1] for c in self.of("send"))

    @property
    def goaheads(self) -> list[tuple[bytes, bytes]]:
        return [(c[1], c[2]) for c in self.of("goahead")]

    @property
    def notnows(self) -> list[bytes]:
        return [c[1] for c in self.of("notnow")]

    @property
    def peer_oks(self) -> list[bytes]:
        return [c[1] for c in self.of("peer_ok")]

    @property
    def closed(self) -> bool:
        return bool(self.of("close"))


class FakeClient:
    """A recording `ClientChannel`."""

    def __init__(self, peer: str = "127.0.0.1:50001") -> None:
        self.peer = peer
        self.calls: list[Call] = []
        self.paused = False

    def console_output(self, raw: bytes, escaped: bytes) -> None:
        self.calls.append(("output", raw, escaped))

    def notify(self, text: str) -> None:
        self.calls.append(("notify", text))

    def pause_reading(self) -> None:
        self.paused = True
        self.calls.append(("pause",))

    def resume_reading(self) -> None:
        self.paused = False
        self.calls.append(("resume",))

    def close(self) -> None:
        self.calls.append(("close",))

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c[0] == kind]

    @property
    def outputs(self) -> list[tuple[bytes, bytes]]:
        return [(c[1], c[2]) for c in self.of("output")]

    @property
    def received(self) -> bytes:
        """Every raw console byte delivered, in order."""
        return b"".join(raw for raw, _ in self.outputs)

    @property
    def notes(self) -> list[str]:
        return [c[1] for c in self.of("notify")]

    @property
    def closed(self) -> bool:
        return bool(self.of("close"))


@dataclass
class FakePorts:
    """A `PortAllocator` handing out ports from a fixed pool."""

    pool: list[int] = field(default_factory=lambda: list(range(7000, 7004)))
    bound: dict[int, ConsoleKey] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, ports: Iterable[int]) -> FakePorts:
        return cls(pool=list(ports))

    def bind(self, key: ConsoleKey, previous: int | None = None) -> int | None:
        if not self.pool:
            return None
        port = previous if previous in self.pool else self.pool[0]
        self.pool.remove(port)
        self.bound[port] = key
        return port

    def release(self, port: int) -> None:
        del self.bound[port]
        self.released.append(port)
        self.pool.append(port)
