"""`telnet = false` in the hub (vspcd/hub/telnetport.py): a new console's port waits
for its name, renames and rule changes close and reopen it, telnet clients (not
admin attaches) are disconnected with the notice, a restored console the rules deny
gives its port back at once, and a reopened port is the one it had."""

from __future__ import annotations

from fnmatch import fnmatchcase

from tests.vspcd.fakes import FakeClient
from tests.vspcd.hub.test_hub import U1, connect, console_of, make_rig, proxy, vm_link
from vspc.common.session import VmIdentified, VmNamed
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.selectors import ConsoleRef
from vspc.vspcd.hub.telnetport import CLOSED_NOTICE


def no_db(console: ConsoleRef) -> bool:
    return not fnmatchcase(console.name, "db*")


def test_a_new_console_is_not_bound_before_its_name_is_known() -> None:
    rig = make_rig()
    rig.hub.set_telnet_rule(no_db)
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    console = console_of(conn)
    assert console.port is None and rig.ports.bound == {}  # waiting for VM-NAME
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert console.port is None and rig.ports.bound == {}
    assert rig.only("vm_connected")[0]["console"]["port"] is None
    other, _ = connect(rig, "89abcdef0123456776543210fedcba98", name="web01")
    assert console_of(other).port == 7000


def test_a_console_that_never_names_itself_is_judged_after_the_wait() -> None:
    rig = make_rig()
    rig.hub.set_telnet_rule(no_db)
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    rig.sched.advance(1.0)
    assert console_of(conn).port == 7000


def test_rename_closes_then_reopens_and_only_telnet_clients_go() -> None:
    rig = make_rig()
    rig.hub.set_telnet_rule(no_db)
    conn, _ = connect(rig, name="web01")
    console = console_of(conn)
    assert console.port == 7000
    telnet, attach = FakeClient(), FakeClient("unix")
    rig.hub.attach(console, telnet, kind="telnet")
    rig.hub.attach(console, attach, kind="attach")
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert console.port is None and rig.hub.console_by_port(7000) is None
    assert rig.ports.released == [7000]
    assert ("notify", CLOSED_NOTICE) in telnet.calls and ("close",) in telnet.calls
    assert ("close",) not in attach.calls and len(console.clients) == 1
    rig.ports.pool.insert(0, 7003)  # a lower port is free now: the old one is preferred
    rig.hub.vm_event(conn, VmNamed("web02"))
    assert console.port == 7000 and rig.hub.console_by_port(7000) is console


def test_rule_changes_apply_to_every_console() -> None:
    rig = make_rig()
    conn, _ = connect(rig, name="db01")
    console = console_of(conn)
    assert console.port == 7000
    rig.hub.set_telnet_rule(no_db)
    assert console.port is None and rig.ports.bound == {}
    rig.hub.set_telnet_rule(None)
    assert console.port == 7000


def test_a_restored_console_the_rules_deny_gives_its_port_back() -> None:
    rig = make_rig()
    rig.hub.set_telnet_rule(no_db)
    rig.ports.pool.remove(7002)
    rig.ports.bound[7002] = ConsoleKey(U1)  # bound by the caller, as persist.py does
    console = rig.hub.restore(ConsoleKey(U1), "db01", 7002, None)
    assert console.port is None and rig.ports.released == [7002]
    assert console.closed_port == 7002
