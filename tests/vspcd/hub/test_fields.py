"""One event -> fields function (vspcd/hub/fields.py) behind the admin event lines,
`--log-events` lines and hook variables: the three agree on names and fields."""

from __future__ import annotations

from vspc.common.admin import ClientInfo, ClientKind, EventName, LockMode
from vspc.vspcd.ext.hookenv import HOOK_EVENTS, environment
from vspc.vspcd.faces.render import event_fields as admin_fields
from vspc.vspcd.history.eventlog import event_details
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import ClientDetached, ConsoleCleared, ConsoleExpired
from vspc.vspcd.hub.fields import HookOnly, event_fields

KEY = ConsoleKey("0123456789abcdeffedcba9800000000", "")
CLIENT = ClientInfo(4, ClientKind.TELNET, "127.0.0.1:5000", LockMode.FREE_FOR_ALL, False, 1.0)


def test_expiry_carries_its_port_everywhere() -> None:
    event = ConsoleExpired(KEY, "db01", 7001)
    found = admin_fields(event)
    assert found is not None and found[0] is EventName.VM_EXPIRED and found[1]["port"] == 7001
    assert event_details(event) == {"port": 7001}
    env = environment(event, 0.0, None)
    assert env is not None and env["VSPC_EVENT"] == "vm_expired" and env["VSPC_PORT"] == "7001"


def test_hook_names_are_admin_names_or_hook_only() -> None:
    assert set(HOOK_EVENTS) <= {e.value for e in EventName} | {h.value for h in HookOnly}
    cleared = event_fields(ConsoleCleared(KEY, "db01", 2, "maintenance"))
    assert cleared is not None and cleared.admin is None
    assert event_details(ConsoleCleared(KEY, "db01", 2, "maintenance")) is None


def test_a_detached_client_is_its_id_on_the_wire_and_whole_for_hooks() -> None:
    event = ClientDetached(KEY, "db01", CLIENT, None)
    assert event_details(event) == {"client": 4}
    env = environment(event, 0.0, 7001)
    assert env is not None
    assert env["VSPC_CLIENT_PEER"] == "127.0.0.1:5000" and env["VSPC_REASON"] == ""
