"""Daemon log lines name consoles as `NAME (shortkey)`.

The connection line waits briefly for VM-NAME (ESXi sends it just after VM-VC-UUID;
vspcd/hub/announce.py), so `grep web01` finds the line with the VM's address and
telnet port.
"""

from __future__ import annotations

import logging

import pytest

from tests.vspcd.hub.test_hub import U1, attach, connect, console_of, make_rig, proxy, vm_link
from vspc.common.session import VmData, VmIdentified
from vspc.vspcd.hub.announce import NAME_WAIT

SHORT = U1[:8]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_connection_line_names_the_vm(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vspc.vspcd.hub.hub")
    rig = make_rig()
    conn, _ = connect(rig, name="web01")
    attach(rig, console_of(conn))
    lines = messages(caplog)
    connected = [m for m in lines if "VM connected" in m]
    assert connected == [f"web01 ({SHORT}): VM connected from esx-a:40001, telnet port 7000"]
    assert any(m.startswith(f"web01 ({SHORT}): telnet client") for m in lines)


def test_a_vm_that_never_names_itself_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vspc.vspcd.hub.hub")
    rig = make_rig()
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    assert not [m for m in messages(caplog) if "VM connected" in m]
    rig.hub.vm_event(conn, VmData(b"boot"))  # output flows; the line still waits
    assert not [m for m in messages(caplog) if "VM connected" in m]
    rig.sched.advance(NAME_WAIT)
    (line,) = [m for m in messages(caplog) if "VM connected" in m]
    assert line.startswith(f"01234567-89ab-cdef-fedc-ba9800000000 ({SHORT}): VM connected")


def test_names_in_log_lines_are_rendered_safe(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vspc.vspcd.hub.hub")
    rig = make_rig()
    connect(rig, name="evil\nFAKE-ROW \x1b[2J")
    text = "\n".join(messages(caplog))
    assert "\x1b" not in text and "evil\nFAKE" not in text
