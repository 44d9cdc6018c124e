"""systemd's readiness protocol (sd_notify) with the stdlib: one datagram per message.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace) and waits for ``READY=1`` before it calls the
service started; ``STATUS=`` is what ``systemctl status`` shows, ``STOPPING=1`` marks a
requested shutdown, ``RELOADING=1`` + ``MONOTONIC_USEC=`` a reload (``Type=notify-reload``
needs it; plain ``notify`` accepts it), and ``WATCHDOG=1`` must come at least every
``$WATCHDOG_USEC`` microseconds when the unit sets ``WatchdogSec=``.  See sd_notify(3).

Boundary: no asyncio here.  `Notifier` is a tiny sender that never raises (a lost
notification must not take the daemon down; systemd's own timeouts catch a missing
READY), and `watchdog_interval` reads the environment the way sd_watchdog_enabled(3)
does.  `vspcd/service/server.py` decides *when* to send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "watchdog_interval"]


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; a no-op when it is unset."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        # "@name" is Linux's abstract namespace, spelled with a leading NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.warning("cannot create the sd_notify socket: %s", exc)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """The notifier for this process's ``$NOTIFY_SOCKET`` (None-safe)."""
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one message (newline-separated ``KEY=VALUE``).

        Returns whether it was sent.  Never raises: a manager that went away or a full
        socket buffer is logged at DEBUG and otherwise ignored.
        """
        if self._sock is None or self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("sd_notify %r not delivered: %s", fields, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload tell this reload from an older one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is asked for.

    Half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so one late tick
    of a busy loop does not get the service killed.  ``$WATCHDOG_PID``, when set, must
    name this process (the variable may leak to a child otherwise).
    """
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw, 10)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner, 10) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2e6
