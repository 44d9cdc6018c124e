"""A log line per event until a burst, then one summary line per period (issue #12 item 3).

For events that are rare in normal operation but can come by the thousand: a vMotion.
vSphere DRS moves a few VMs a minute, and each such move deserves its own INFO line;
a host evacuation moves hundreds within seconds, and there a line per vMotion costs
the daemon ~10 % of its CPU per vMotion (docs/benchmarks.md) and buries everything
else in the log.  So `BurstLog` logs the first `burst` events of each `period` at
its level as they come, logs the rest at DEBUG (still there for whoever turns
DEBUG on), and at the end of that period says, at its level, how many there were:

    INFO  ... vMotion complete, 10.0.0.1:4100 -> 10.0.0.2:4211
    INFO  vMotions completed: 1950 more in the last 10 s (each logged at DEBUG)

Unlike `gate.Throttled` (a warning once per period) nothing is lost from the log
at DEBUG, and a quiet daemon logs exactly as before.  No I/O: the clock and the
timer are injected, as in the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["BurstLog"]


class BurstLog:
    """Log at `level` up to `burst` times per `period` seconds, then at DEBUG + a count."""

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
        burst: int = 20,
        period: float = 10.0,
        level: int = logging.INFO,
    ) -> None:
        self._log = logger
        self._summary = summary  # "vMotions completed": what the count counts
        self._clock = clock
        self._call_later = call_later
        self.burst = burst
        self.period = period
        self._level = level
        self._window_end = float("-inf")
        self._logged = 0  # at `level` in the current window
        self._over = 0  # at DEBUG in the current window, reported by `_flush`
        self.total = 0  # events ever reported

    def log(self, message: str, *args: object) -> None:
        """Report one event, formatted lazily like `Logger.log`."""
        self.total += 1
        now = self._clock()
        if now >= self._window_end:
            self._window_end = now + self.period
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            self._log.log(self._level, message, *args)
            return
        if not self._over:
            # The window's first surplus event arms the summary; a quiet daemon
            # never has a timer pending.
            self._call_later(self._window_end - now, self._flush)
        self._over += 1
        self._log.debug(message, *args)

    def _flush(self) -> None:
        over, self._over = self._over, 0
        if over:
            self._log.log(
                self._level,
                "%s: %d more in the last %g s (each logged at DEBUG)",
                self._summary,
                over,
                self.period,
            )
