"""Rate-limited logging: a line per event until a burst, then one summary per period.

For events that are rare in normal operation but can come by the thousand: a
vMotion (vSphere DRS moves a few VMs a minute, a host evacuation hundreds within
seconds), a refused connection (one now and then, or a flood from a hostile peer,
docs/security.md).  A line per event would cost the daemon CPU and bury everything
else in the log, so `BurstLog` logs the first `burst` events of each `period` at
its level as they come, and at the end of that period says, at its level, how many
more there were.  The surplus events themselves are logged at DEBUG (vMotions:
nothing is lost for whoever turns DEBUG on) or not at all (refusals: `throttled`):

    INFO  ... vMotion complete, 10.0.0.1:4100 -> 10.0.0.2:4211
    INFO  vMotions completed: 1950 more in the last 10 s (each logged at DEBUG)
    WARNING port 50000: refused 192.0.2.7:41000: not in the allow list
    WARNING port 50000: connections refused ... and 499 more in the last 10 s

A quiet daemon logs exactly as without it.  No I/O: the clock and the timer are
injected, as in the hub.

`Throttles` keeps one `throttled` warning per kind of event (refused takeover claims,
stray PEERs, inter-node strangers), built on first use, so each kind is one line per
period plus a count whatever a hostile peer repeats.  `NoticeGate` does the same for
the `[vspcd: ...]` notices on operators' screens: at most one per period per kind and
console, the next one saying how many were held back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable

from vspc.common.display import safe

__all__ = ["BurstLog", "NoticeGate", "Throttles", "throttled"]


def _inert(arg: object) -> object:
    # Numbers stay numbers for %d/%g; anything else may carry a peer's bytes.
    return arg if isinstance(arg, int | float) else safe(arg)


class BurstLog:
    """Log at `level` up to `burst` times per `period` seconds, then count the rest.

    Args:
        logger: where the lines go.
        summary: what the count counts ("vMotions completed").
        clock, call_later: the loop's (the summary is a timer, so it is not lost
            when the events stop).
        burst: events logged at `level` per period.
        period: seconds.
        level: the level of the burst and of the summary.
        surplus_level: the level of the events over the burst, or None to only
            count them.
        inert: make every non-numeric argument safe to print (peer-controlled text,
            vspc.common.display.safe).
    """

    __slots__ = (
        "_log",
        "_summary",
        "_clock",
        "_call_later",
        "burst",
        "period",
        "_level",
        "_surplus_level",
        "_inert",
        "_window_end",
        "_logged",
        "_over",
        "total",
    )

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
        surplus_level: int | None = logging.DEBUG,
        inert: bool = False,
    ) -> None:
        self._log = logger
        self._summary = summary
        self._clock = clock
        self._call_later = call_later
        self.burst = burst
        self.period = period
        self._level = level
        self._surplus_level = surplus_level
        self._inert = inert
        self._window_end = -math.inf
        self._logged = 0  # at `level` in the current window
        self._over = 0  # over the burst in the current window, reported by `_flush`
        self.total = 0  # events ever reported (tests, metrics)

    def log(self, message: str, *args: object) -> None:
        """Report one event, formatted lazily like `Logger.log`."""
        self.total += 1
        if self._inert:
            args = tuple(_inert(a) for a in args)
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
        if self._surplus_level is not None:
            self._log.log(self._surplus_level, message, *args)

    def _flush(self) -> None:
        over, self._over = self._over, 0
        if not over:
            return
        if self._surplus_level is None:
            template = "%s ... and %d more in the last %g s"
        else:
            template = "%s: %d more in the last %g s (each logged at DEBUG)"
        self._log.log(self._level, template, self._summary, over, self.period)


def throttled(
    logger: logging.Logger,
    summary: str,
    *,
    clock: Callable[[], float],
    call_later: Callable[[float, Callable[[], None]], object],
    period: float = 10.0,
    level: int = logging.WARNING,
) -> BurstLog:
    """A warning logged at most once per `period`; the rest only counted.

    For refusals and failed setups, whose count matters and whose text comes partly
    from the peer (so arguments are made safe to print).
    """
    return BurstLog(
        logger,
        summary,
        clock=clock,
        call_later=call_later,
        burst=1,
        period=period,
        level=level,
        surplus_level=None,
        inert=True,
    )


class Throttles:
    """One `throttled` warning per kind, built when that kind first happens.

    `log("stray PEER", "VM %s: PEER with an unknown cookie", peer)`: the first of a
    kind in each period is logged, the rest counted into one summary line
    ("stray PEER ... and 499 more in the last 10 s").  The kinds are the caller's
    fixed strings, so the table stays small.
    """

    __slots__ = ("_logger", "_clock", "_call_later", "_period", "_level", "_by_kind")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
        period: float = 10.0,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._call_later = call_later
        self._period = period
        self._level = level
        self._by_kind: dict[str, BurstLog] = {}

    def __getitem__(self, kind: str) -> BurstLog:
        burst = self._by_kind.get(kind)
        if burst is None:
            burst = self._by_kind[kind] = throttled(
                self._logger,
                kind,
                clock=self._clock,
                call_later=self._call_later,
                period=self._period,
                level=self._level,
            )
        return burst

    def log(self, kind: str, message: str, *args: object) -> None:
        self[kind].log(message, *args)


class NoticeGate:
    """At most one notice per `period` per key (a kind and a console, say).

    `admit(key)` is None while the key's period runs (the notice is held back and
    counted), else how many were held back since the last one shown, for the
    notice to say.  Keys whose period is over are dropped when the table grows, so
    a flood over many consoles costs at most a period's worth of entries.
    """

    __slots__ = ("_clock", "period", "_open")

    def __init__(self, clock: Callable[[], float], period: float = 10.0) -> None:
        self._clock = clock
        self.period = period
        self._open: dict[Hashable, list[float | int]] = {}  # key -> [window end, held back]

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        entry = self._open.get(key)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return None
        held = 0 if entry is None else int(entry[1])
        if len(self._open) >= 1024:
            self._open = {k: v for k, v in self._open.items() if v[0] > now}
        self._open[key] = [now + self.period, 0]
        return held
