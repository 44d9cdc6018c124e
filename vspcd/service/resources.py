"""Process resource limits: file descriptors.

Boundary: a small synchronous helper for `__main__`, which raises the limit once at
startup.  Every VM connection, operator connection and per-VM telnet listener costs
one descriptor, and the usual soft limit of 1024 is far below what a few hundred VMs
with viewers need.  How close the daemon is to the ceiling is estimated from its own
bookkeeping (vspcd/service/server.py), never by listing /proc/self/fd on the accept path.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable

log = logging.getLogger(__name__)

# When the hard limit is "unlimited" the kernel still caps RLIMIT_NOFILE at
# fs.nr_open; setting RLIM_INFINITY would fail with EPERM.
_NR_OPEN = "/proc/sys/fs/nr_open"
_FALLBACK_CEILING = 1024 * 1024


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


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE now (metrics; a huge number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else _nr_open()


def fds_in_use(estimate: Callable[[], int]) -> int:
    """Descriptors open now, counted in /proc/self/fd (at scrape time only, never on
    the accept path); `estimate()` where /proc is not mounted."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return estimate()
