"""Process resource limits: file descriptors.

Boundary: small synchronous helpers for `__main__` (raise the limit once at startup)
and for the hub or server (ask how close we are to the ceiling, so expired consoles
can be reclaimed early instead of failing accepts).  Every VM connection, operator
connection and per-VM telnet listener costs one descriptor, and the usual soft limit
of 1024 is far below what a few hundred VMs with viewers need.

Linux only: open descriptors are counted in /proc/self/fd.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

# When the hard limit is "unlimited" the kernel still caps RLIMIT_NOFILE at
# fs.nr_open; setting RLIM_INFINITY would fail with EPERM.
_NR_OPEN = "/proc/sys/fs/nr_open"
_FALLBACK_CEILING = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FdUsage:
    """Open descriptors against the soft RLIMIT_NOFILE."""

    open: int
    limit: int

    @property
    def free(self) -> int:
        return max(self.limit - self.open, 0)

    @property
    def ratio(self) -> float:
        """open / limit, 0.0 to 1.0 (1.0 when the limit is unknown or zero)."""
        return min(self.open / self.limit, 1.0) if self.limit > 0 else 1.0

    def near_limit(self, *, fraction: float = 0.9, reserve: int = 64) -> bool:
        """True when at least `fraction` of the limit is used or fewer than `reserve`
        descriptors are left (the reserve covers logging, sqlite, an admin peer)."""
        return self.ratio >= fraction or self.free < reserve


def _nr_open() -> int:
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return _FALLBACK_CEILING


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit and log the outcome.

    Returns:
        (soft, hard) in effect afterwards.  Failure is logged, never raised: the
        daemon can still run with the old limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise open-file limit from %d to %d: %s", soft, target, exc)
        else:
            log.info("open-file limit raised from %d to %d", soft, target)
            soft = target
    else:
        log.info("open-file limit %d (hard %d)", soft, hard)
    return soft, hard


def count_open_fds() -> int:
    """Number of descriptors this process has open (Linux /proc/self/fd).

    Raises:
        OSError: /proc is not available.
    """
    # listdir itself holds one descriptor on the directory while it reads it
    return len(os.listdir("/proc/self/fd")) - 1


def fd_usage() -> FdUsage:
    """Open descriptors and the soft limit, for `near_limit()` checks.

    Costs one directory read, O(open descriptors); call it on events such as a new
    connection or a failed accept, not in a tight loop.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = _nr_open() if soft == resource.RLIM_INFINITY else soft
    return FdUsage(open=count_open_fds(), limit=limit)
