"""vspcd/hub/ratelog.py: a line per event up to a burst, then DEBUG and one count line."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from vspc.vspcd.hub.ratelog import BurstLog

LOGGER = "vspc.vspcd.test_ratelog"


class FakeTimers:
    """A manual clock and the timers armed on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        self.pending.append((self.now + delay, callback))
        return None

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.pending if t[0] <= self.now]
        self.pending = [t for t in self.pending if t[0] > self.now]
        for _, callback in due:
            callback()


def make(timers: FakeTimers, burst: int = 3) -> BurstLog:
    return BurstLog(
        logging.getLogger(LOGGER),
        "vMotions completed",
        clock=lambda: timers.now,
        call_later=timers.call_later,
        burst=burst,
        period=10.0,
    )


def test_a_quiet_stream_logs_every_event_at_info_and_arms_no_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = FakeTimers()
    burst = make(timers)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for i in range(6):
            burst.log("vm-%d: vMotion complete", i)
            timers.advance(4.0)  # 2-3 per window: under the burst of 3
    assert [r.getMessage() for r in caplog.records] == [
        f"vm-{i}: vMotion complete" for i in range(6)
    ]
    assert timers.pending == [] and burst.total == 6


def test_a_storm_logs_the_burst_then_debug_then_one_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = FakeTimers()
    burst = make(timers)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for i in range(10):
            burst.log("vm-%d: vMotion complete", i)
        assert len(timers.pending) == 1  # one summary timer for the whole window
        timers.advance(10.0)
        burst.log("vm-late: vMotion complete")  # a new window: INFO again
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert info == [
        "vm-0: vMotion complete",
        "vm-1: vMotion complete",
        "vm-2: vMotion complete",
        "vMotions completed: 7 more in the last 10 s (each logged at DEBUG)",
        "vm-late: vMotion complete",
    ]
    # Nothing is lost for whoever runs with DEBUG on.
    assert debug == [f"vm-{i}: vMotion complete" for i in range(3, 10)]
    assert burst.total == 11
