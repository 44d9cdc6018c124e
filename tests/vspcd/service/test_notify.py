"""vspcd/service/notify.py: sd_notify datagrams and the watchdog interval.

The daemon's messages in order are tested end to end in tests/vspcd/service/test_service.py;
these cover the sender's edges: abstract sockets, no socket, a vanished manager, and
$WATCHDOG_USEC/$WATCHDOG_PID parsing as sd_watchdog_enabled(3) defines it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vspc.vspcd.service.notify import Notifier, watchdog_interval


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        assert notifier.ready("serving")
        assert manager.recv(4096).decode().split("\n") == [
            "READY=1",
            "STATUS=serving",
            f"MAINPID={os.getpid()}",
        ]
        assert notifier.stopping()
        assert manager.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"
        notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"vspcd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        notifier = Notifier(f"@{name}")
        assert notifier.watchdog()
        assert manager.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_without_a_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_vanished_manager_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.status("x") is False  # ENOENT, logged at DEBUG, never raised
    notifier.close()
    assert notifier.send("READY=1") is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # someone else's
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected
