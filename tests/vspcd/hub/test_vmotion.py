"""The vMotion transition table (vspcd/hub/vmotion.py; docs/protocol.md §4.5).

The behaviour of every transition is tested through the hub in test_hub.py; here, the
properties of the table itself.
"""

from __future__ import annotations

import itertools

from vspc.common.admin import VMotionPhase
from vspc.vspcd.hub.console import Phase, Role
from vspc.vspcd.hub.vmotion import TABLE, Action, Trigger, next_action


def test_phase_is_the_admin_protocols_enum() -> None:
    assert Phase is VMotionPhase


def test_every_begin_is_answered() -> None:
    # docs/protocol.md §4.6: GOAHEAD or NOTNOW within 5000 ms, whatever the state, so a
    # BEGIN is never F10.
    for phase, role in itertools.product(Phase, Role):
        assert next_action(phase, Trigger.BEGIN, role) is not Action.IGNORE


def test_missing_entries_are_f10() -> None:
    assert next_action(Phase.NORMAL, Trigger.COMPLETE, Role.ACTIVE) is Action.IGNORE
    assert next_action(Phase.PENDING, Trigger.COMPLETE, Role.DESTINATION) is Action.IGNORE
    assert next_action(Phase.PEERED, Trigger.ABORT, Role.DESTINATION) is Action.IGNORE  # TV-30
    assert next_action(Phase.NORMAL, Trigger.ABORT, Role.ACTIVE) is Action.IGNORE  # TV-24
    assert Action.IGNORE not in TABLE.values()


def test_every_action_is_reachable_and_migration_only_actions_need_a_migration() -> None:
    assert set(TABLE.values()) == set(Action) - {Action.IGNORE}
    normal_only = {Action.BEGIN, Action.NOTNOW}
    for (phase, _, _), action in TABLE.items():
        if phase is Phase.NORMAL:
            assert action in normal_only, action


def test_only_a_peered_console_can_complete() -> None:
    completing = [key for key, action in TABLE.items() if action is Action.COMPLETE]
    assert completing == [(Phase.PEERED, Trigger.COMPLETE, Role.DESTINATION)]
