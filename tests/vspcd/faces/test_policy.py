"""The access rules, sans-IO: parsing with per-key errors, and judging
(vspcd/faces/admin/policy.py; docs/security.md "Who may do what")."""

from __future__ import annotations

import pytest

from vspc.common.admin import Level
from vspc.vspcd.faces.admin.policy import (
    DEFAULT_POLICY,
    AccessConfigError,
    AccessPolicy,
    ConsoleRef,
    Identity,
    Source,
    parse_access,
)

USERS = {"alice": 1001, "bob": 1002, "carol": 1003}
GROUPS = {"dba": 2001, "net": 2002}
UUID = "42231c5e-4f0b-2a4b-9d3e-0123456789ab"
CANON = UUID.replace("-", "")


def parse(table: dict[str, object]) -> AccessPolicy:
    return parse_access(table, user_uid=USERS.__getitem__, group_gid=GROUPS.__getitem__)


def errors(table: dict[str, object]) -> list[str]:
    with pytest.raises(AccessConfigError) as info:
        parse(table)
    return list(info.value.errors)


def person(uid: int, *gids: int, user: str | None = "x", gid: int = 100) -> Identity:
    return Identity("unix", uid, gid, user, frozenset(gids), Source.UNIX)


DB1 = ConsoleRef("db1", "db1", CANON, "")
WEB = ConsoleRef("web1", "web1", "0" * 32, "")
LABELLED = ConsoleRef("app_console2", "app", "1" * 32, "console2")

RULES = {
    "access_default": "none",
    "access": [
        {"consoles": ["db*"], "users": ["@dba"], "level": "write"},
        {"consoles": ["*"], "users": ["@net"], "level": "watch"},
        {"consoles": [f"uuid:{UUID.upper()}"], "users": ["alice"], "level": "control"},
        {"consoles": ["label:console2"], "users": ["bob"], "level": "write"},
    ],
}


def test_no_keys_is_todays_behaviour() -> None:
    assert parse({}) == DEFAULT_POLICY
    assert DEFAULT_POLICY.level(person(1002), WEB) is Level.CONTROL


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"access_default": "wrte"},
            "access_default: 'wrte' is not one of none, watch, write, control",
        ),
        ({"access": {"x": 1}}, "access: expected an array of tables ([[access]])"),
        ({"access": ["x"]}, "access[1]: expected a table"),
        (
            {"access": [{"consoles": ["a"], "users": ["alice"], "level": "wrte"}]},
            "access[1].level: 'wrte' is not one of none, watch, write, control",
        ),
        (
            {"access": [{"consoles": ["a"], "users": ["alice"]}]},
            "access[1].level: missing",
        ),
        (
            {"access": [{"consoles": [], "users": ["alice"], "level": "watch"}]},
            "access[1].consoles: expected a non-empty array of non-empty strings",
        ),
        (
            {"access": [{"consoles": ["a"], "users": ["mallory"], "level": "watch"}]},
            "access[1].users: no user 'mallory'",
        ),
        (
            {"access": [{"consoles": ["a"], "users": ["@ops"], "level": "watch"}]},
            "access[1].users: no group 'ops'",
        ),
        (
            {"access": [{"consoles": ["uuid:nope"], "users": ["bob"], "level": "watch"}]},
            "access[1].consoles: 'uuid:nope': bad VM-VC-UUID 'nope'",
        ),
        (
            {"access": [{"consoles": ["a"], "users": ["bob"], "level": "watch", "lvl": 1}]},
            "access[1]: unknown key 'lvl' (keys: consoles, users, level, telnet, record_input)",
        ),
        (
            {"access": [{"consoles": ["a"], "users": ["bob"], "level": "watch", "telnet": 0}]},
            "access[1].telnet: expected true or false, got 0",
        ),
    ],
)
def test_per_key_errors(table: dict[str, object], expected: str) -> None:
    assert expected in errors(table)


def test_every_error_is_reported_with_its_rule_number() -> None:
    found = errors(
        {
            "access": [
                {"consoles": ["a"], "users": ["alice"], "level": "watch"},
                {"consoles": ["a"], "users": ["nobody"], "level": "bad"},
            ]
        }
    )
    assert found == [
        "access[2].users: no user 'nobody'",
        "access[2].level: 'bad' is not one of none, watch, write, control",
    ]


def test_telnet_and_record_input_switches() -> None:
    policy = parse(
        {
            "access": [
                {
                    "consoles": [f"uuid:{CANON}"],
                    "users": ["bob"],
                    "level": "watch",
                    "telnet": False,
                },
                {"consoles": [f"uuid:{WEB.uuid}"], "record_input": True},  # grants nothing
                {"consoles": ["web*"], "users": ["bob"], "level": "watch", "telnet": True},
            ]
        }
    )
    assert not policy.telnet_allowed(DB1) and policy.telnet_allowed(WEB)
    assert policy.records_input(WEB) and not policy.records_input(DB1)
    assert policy.level(person(1005, 2001), WEB) is Level.CONTROL  # access_default
    # Name globs too: the hub judges the port once the name is known (telnetport.py).
    globbed = parse({"access": [{"consoles": ["db*"], "telnet": False}]})
    assert not globbed.telnet_allowed(DB1) and globbed.telnet_allowed(WEB)
    # Without a switch, a rule must say who and what level.
    assert errors({"access": [{"consoles": ["a"]}]}) == [
        "access[1].users: missing",
        "access[1].level: missing",
    ]
    assert errors({"access": [{"consoles": ["a"], "record_input": "yes"}]}) == [
        "access[1].record_input: expected true or false, got 'yes'",
        "access[1].users: missing",
        "access[1].level: missing",
    ]


@pytest.mark.parametrize(
    ("who", "console", "expected"),
    [
        (person(1005, 2001), DB1, Level.WRITE),  # @dba on db*
        (person(1005, 2001), WEB, Level.NONE),  # @dba elsewhere: access_default
        (person(1005, gid=2001), DB1, Level.WRITE),  # primary gid counts too
        (person(1006, 2002), WEB, Level.WATCH),  # @net everywhere
        (person(1006, 2001, 2002), DB1, Level.WRITE),  # the highest matching rule
        (person(1001), DB1, Level.CONTROL),  # alice by UUID (any accepted form)
        (person(1001), WEB, Level.NONE),
        (person(1002), LABELLED, Level.WRITE),  # bob by label
        (person(1002), DB1, Level.NONE),
    ],
)
def test_levels(who: Identity, console: ConsoleRef, expected: Level) -> None:
    assert parse(RULES).level(who, console) is expected


def test_globs_match_display_name_or_vm_name() -> None:
    policy = parse({"access": [{"consoles": ["app"], "users": ["bob"], "level": "watch"}]})
    policy = AccessPolicy(Level.NONE, policy.rules)
    assert policy.level(person(1002), LABELLED) is Level.WATCH  # vm name "app"
    assert policy.level(person(1002), WEB) is Level.NONE


def test_a_uid_without_passwd_entry_never_gets_the_default() -> None:
    policy = parse({"access_default": "control", "access": RULES["access"]})
    ghost = person(4000, user=None)
    assert policy.level(ghost, WEB) is Level.NONE
    assert "no passwd entry" in policy.explain(ghost, WEB)
    # ... but what rules naming its groups give
    assert policy.level(person(4000, 2002, user=None), WEB) is Level.WATCH


def test_privileged_unknown_anonymous_and_readonly_cap() -> None:
    policy = parse(RULES)
    assert policy.level(person(0), WEB, own_uid=999) is Level.CONTROL
    assert policy.level(person(999), WEB, own_uid=999) is Level.CONTROL
    assert "own uid" in policy.explain(person(999), WEB, own_uid=999)
    unknown = Identity("unix", source=Source.UNKNOWN)
    assert DEFAULT_POLICY.level(unknown, WEB, own_uid=999) is Level.NONE
    tcp = Identity("127.0.0.1:5", source=Source.TCP)
    assert DEFAULT_POLICY.level(tcp, WEB) is Level.CONTROL  # access_default
    assert policy.level(tcp, WEB) is Level.NONE
    # --readonly-group caps at watch, wherever the level came from
    alice_ro = person(1001, 77)
    assert policy.level(alice_ro, DB1, readonly_gid=77) is Level.WATCH
    assert "capped at watch" in policy.explain(alice_ro, DB1, readonly_gid=77)
    assert policy.level(person(0, 77), DB1, own_uid=999, readonly_gid=77) is Level.CONTROL


def test_explain_names_the_rule() -> None:
    policy = parse(RULES)
    reason = policy.explain(person(1005, 2001, 2002), DB1)
    assert reason == "rule access[1] (consoles db*; users @dba, level write)"
    assert policy.explain(person(1005), WEB).startswith("access_default")
    assert policy.level(person(1005), None) is Level.NONE  # what hello reports
