"""File-writing pieces the history writers share (docs/architecture.md, "history").

`write_fully` writes a whole buffer, saying how far it got when the disk refuses;
`failing` and `recovered` log a failure once when it begins and once when it clears,
not at every attempt in between (a full disk must not flood the log).  The state is
one bool the caller keeps (a console log keeps several per console: no object each).
"""

from __future__ import annotations

import logging
import os

__all__ = ["failing", "recovered", "write_fully"]


def write_fully(fd: int, data: memoryview) -> tuple[int, OSError | None]:
    """Write all of `data` to `fd`: (bytes written, None), or how many got written
    before the error, and the error."""
    written = 0
    try:
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError as exc:
        return written, exc
    return written, None


def failing(failed: bool, log: logging.Logger, message: str, *args: object) -> bool:
    """Log `message` as an error unless `failed` says it already was; the new state."""
    if not failed:
        log.error(message, *args)
    return True


def recovered(failed: bool, log: logging.Logger, message: str, *args: object) -> bool:
    """Log `message` (the failure cleared) if `failed`; the new state."""
    if failed:
        log.info(message, *args)
    return False
