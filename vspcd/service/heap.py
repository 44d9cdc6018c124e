"""Memory that comes back after a flood (docs/security.md, "Bounded pre-identification state").

A burst of hostile pre-identification connections (docs/reliability.md) leaves no
state behind once they are gone, yet the process kept its RSS: glibc's allocator
keeps freed heap pages (its high-water mark), and each stalled TLS handshake's read
buffer is a large share of that.

`HeapTrimmer`: when the daemon goes from busy to quiet (its unidentified connections
back to zero after a burst), call glibc's `malloc_trim(0)`, which hands free heap
pages back to the kernel.  Debounced and rate-limited, run from a timer, never on a
connection's path.  Linux/glibc only, found at run time through ctypes
(`find_malloc_trim`); elsewhere it does nothing.  Nothing here touches asyncio.

Before trimming it runs a full garbage collection: a closed connection's objects
can be a reference cycle (the stdlib loop's socket transport keeps a bound method
of itself as its read callback), and a quiet daemon runs a full collection only
after many new objects, so a burst's closed transports, their sockets and
dictionaries would otherwise stay on the heap the trim is meant to give back
(docs/benchmarks.md, "Resource bounds").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from collections.abc import Callable

from vspc.vspcd.hub.console import Cancellable

__all__ = ["HeapTrimmer", "find_heap_usage", "find_malloc_trim"]

log = logging.getLogger(__name__)


def _libc() -> ctypes.CDLL | None:
    """The process's C library on Linux, or None (another OS, or it cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def find_malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` as a callable, or None where there is none.

    Feature-detected: Linux, a C library that exports both `gnu_get_libc_version`
    (glibc, not musl) and `malloc_trim`.  The callable returns 1 if memory was
    released, 0 if there was nothing to release.
    """
    libc = _libc()
    if libc is None:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "malloc_trim"):
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def malloc_trim() -> int:
        return int(trim(0))

    return malloc_trim


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33 `struct mallinfo2` (all size_t).
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def find_heap_usage() -> Callable[[], tuple[int, int]] | None:
    """glibc's `mallinfo2()` as (bytes in use, bytes free in the heap), or None.

    Only for the trimmer's DEBUG line: what a trim found and what it could return.
    """
    libc = _libc()
    if libc is None:
        return None
    if not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2
    info.argtypes = []
    info.restype = _MallInfo2

    def usage() -> tuple[int, int]:
        got = info()
        return int(got.uordblks + got.hblkhd), int(got.fordblks)

    return usage


class HeapTrimmer:
    """Trims the heap once a burst of connections has come and gone.

    `quiet(admitted)` says the daemon has no connection left in the state a flood
    fills (unidentified connections back to zero), `admitted` being how many it has
    admitted to that state so far.  If at least `burst` came since the last trim, a
    trim runs `delay` seconds later, and never sooner than `interval` seconds after
    the last one: a steady trickle costs nothing, a flood costs one trim when it
    ends.  The trim runs from a loop timer, never inside a connection's callback.

    Args:
        trim: the trimming call (`find_malloc_trim()`); None makes this a no-op.
        call_later, clock: the loop's.
    """

    __slots__ = (
        "_trim",
        "_call_later",
        "_clock",
        "delay",
        "interval",
        "burst",
        "_trimmed_at",
        "_seen",
        "_last",
        "_timer",
        "_usage",
        "trims",
    )

    def __init__(
        self,
        trim: Callable[[], int] | None,
        *,
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        clock: Callable[[], float],
        delay: float = 0.5,
        interval: float = 5.0,
        burst: int = 64,
    ) -> None:
        self._trim = trim
        self._call_later = call_later
        self._clock = clock
        self.delay = delay
        self.interval = interval
        self.burst = burst
        self._trimmed_at = 0  # the admission count at the last trim
        self._seen = 0  # the admission count last reported
        self._last = float("-inf")  # clock time of the last trim
        self._timer: Cancellable | None = None
        self.trims = 0  # trims run (tests, debugging)
        self._usage = find_heap_usage() if trim is not None else None

    @property
    def available(self) -> bool:
        """True where the platform can trim (glibc)."""
        return self._trim is not None

    def quiet(self, admitted: int) -> None:
        self._seen = admitted
        if self._trim is None or self._timer is not None:
            return
        if admitted - self._trimmed_at < self.burst:
            return
        now = self._clock()
        at = max(now + self.delay, self._last + self.interval)
        self._timer = self._call_later(at - now, self._run)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self) -> None:
        self._timer = None
        if self._trim is None:
            return
        usage = None
        if self._usage is not None and log.isEnabledFor(logging.DEBUG):
            usage = self._usage()
        began = self._clock()
        collected = gc.collect()  # the burst's cycles first (module docstring)
        released = self._trim()
        self._last = self._clock()
        self.trims += 1
        log.debug(
            "heap trimmed after %d connections (%d objects collected, %s, %.1f ms%s)",
            self._seen - self._trimmed_at,
            collected,
            "memory returned" if released else "nothing to return",
            (self._last - began) * 1e3,
            "" if usage is None else f"; {usage[0] >> 10} KiB in use, {usage[1] >> 10} KiB free",
        )
        self._trimmed_at = self._seen
