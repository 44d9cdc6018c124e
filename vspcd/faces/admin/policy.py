"""Per-console access rules: who may watch, type on or control which console.

Spec: docs/security.md "Who may do what", docs/admin-protocol.md "Access control".
The configuration file's `access_default` and `[[access]]` tables are parsed here
(`parse_access`) into an `AccessPolicy`, which judges an operator's `Identity` on one
console (`AccessPolicy.decide`, `.level`, `.explain`).

Sans-IO: no sockets, no clock.  User and group names are resolved to uids and gids
once, when the table is parsed (at start-up and at each reload), through NSS
(`pwd`/`grp`, injectable for tests); judging compares numbers only.  An operator's
groups are the ones its own credentials carry (SO_PEERCRED's gid and SO_PEERGROUPS,
vspcd/faces/admin/access.py), never a lookup of its uid in the group database: a
process that dropped a group (`setpriv --groups`) does not get it back here.

A level on a console is, in this order:

1. `none` if the peer's credentials could not be read (fail closed);
2. `control` for root and the daemon's own uid;
3. the highest level of the rules that name both the console and the peer (its uid,
   or one of its gids), else `access_default` -- except for a uid without a passwd
   entry, which gets `none` when no rule names it;
4. at most `watch` for members of `--readonly-group`.

Delegated identity (docs/vspc-web.md, docs/security.md "Who may do what"): the
file-only key `delegates` names the unix users (a web front end such as vspc-web)
allowed to say `{"cmd":"hello","as_user":"alice"}` on their own connection.  That
connection is then judged as alice, whose uid, primary gid and groups are resolved
through NSS (alice is not the peer, so her credentials cannot come from the kernel);
`Identity.via` names the delegate, so audit lines read `user=alice via vspc-web`.

Two per-console switches ride on the same tables, whoever the rule's users are:
`record_input = true` (`AccessPolicy.records_input`: the console's output and typed
input go to an asciicast file, vspcd/history/recording.py, when `--record-dir` is set)
and `telnet = false` (`AccessPolicy.telnet_allowed`: no per-VM telnet port, since
telnet carries no identity; docs/security.md).  A rule that sets one of them may
leave out `users` and `level` (it then grants nothing).
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vspc.common.admin import Level
from vspc.vspcd.hub.selectors import ConsoleRef, Selector, parse_selector

__all__ = [
    "DEFAULT_POLICY",
    "AccessConfigError",
    "AccessPolicy",
    "ConsoleRef",
    "Decision",
    "Identity",
    "Rule",
    "Source",
    "parse_access",
]

_LEVELS = ", ".join(level.value for level in Level)


class Source(StrEnum):
    """How a peer's identity is known."""

    UNIX = "unix"  # SO_PEERCRED / SO_PEERGROUPS of the admin socket's peer
    TCP = "tcp"  # the admin TCP port: anonymous
    UNKNOWN = "unknown"  # a Unix peer whose credentials could not be read


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is at the other end of an admin connection.

    `address` is "unix" for the admin socket and host:port for TCP (a relayed
    session's says which node relayed it).  `uid`, `gid` and `groups` (the
    supplementary gids) come from the peer's own credentials; `user` is the uid's
    passwd name, None when it has none.
    """

    address: str
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    groups: frozenset[int] = frozenset()
    source: Source = Source.TCP
    via: str | None = None  # the delegate acting for this user (`hello` with `as_user`)

    @property
    def gids(self) -> frozenset[int]:
        """The primary gid and every supplementary one."""
        return self.groups if self.gid is None else self.groups | {self.gid}

    @property
    def who(self) -> str:
        """The name shown to disconnected clients: user, else uid, else address."""
        if self.user:
            return self.user
        if self.uid is not None:
            return f"uid {self.uid}"
        return self.address

    def privileged(self, own_uid: int) -> bool:
        """Root or the daemon's own uid: always `control`, may use the reserved
        connection slots (they could bypass the daemon anyway)."""
        return self.source is Source.UNIX and self.uid is not None and self.uid in (0, own_uid)

    def __str__(self) -> str:
        if self.via is not None:
            return f"uid={self.uid} gid={self.gid} user={self.user or '?'} via {self.via}"
        if self.uid is not None:
            return f"uid={self.uid} gid={self.gid} user={self.user or '?'}"
        if self.source is Source.UNKNOWN:
            return "unix peer (credentials unknown)"
        return f"{self.address} (TCP, unauthenticated)"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[access]]` table, names resolved."""

    number: int  # 1 for the file's first [[access]] table
    consoles: tuple[Selector, ...]
    uids: frozenset[int]
    gids: frozenset[int]
    level: Level
    text: str  # consoles and users as written, for `explain`
    record_input: bool = False
    telnet: bool = True

    def names(self, console: ConsoleRef) -> bool:
        return any(p.matches(console) for p in self.consoles)

    def covers(self, identity: Identity) -> bool:
        if identity.source is not Source.UNIX:
            return False  # rules name users; an anonymous peer is none of them
        return identity.uid in self.uids or bool(identity.gids & self.gids)

    def __str__(self) -> str:
        return f"access[{self.number}] ({self.text}, level {self.level.value})"


@dataclass(frozen=True, slots=True)
class Decision:
    """A level and why."""

    level: Level
    reason: str


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """`access_default` and the `[[access]]` rules (see the module docstring)."""

    default: Level = Level.CONTROL
    rules: tuple[Rule, ...] = ()
    delegates: frozenset[int] = frozenset()  # uids that may speak `as_user` (`delegates`)

    def decide(
        self,
        identity: Identity,
        console: ConsoleRef | None,
        *,
        own_uid: int | None = None,
        readonly_gid: int | None = None,
    ) -> Decision:
        """`identity`'s level on `console` and the reason; `console=None` gives the
        level on a console no rule names (what `hello` reports)."""
        if identity.source is Source.UNKNOWN:
            return Decision(Level.NONE, "the peer's credentials could not be read")
        if own_uid is not None and identity.privileged(own_uid):
            who = "root" if identity.uid == 0 else "the daemon's own uid"
            return Decision(Level.CONTROL, f"{who} always has control")
        best: Rule | None = None
        if console is not None:
            for rule in self.rules:
                if (
                    rule.names(console)
                    and rule.covers(identity)
                    and (best is None or rule.level.rank > best.level.rank)
                ):
                    best = rule
        if best is not None:
            decision = Decision(best.level, f"rule {best}")
        elif identity.source is Source.UNIX and identity.user is None:
            decision = Decision(
                Level.NONE, f"uid {identity.uid} has no passwd entry and no rule names it"
            )
        else:
            decision = Decision(self.default, "access_default (no rule names you here)")
        if (
            readonly_gid is not None
            and readonly_gid in identity.gids
            and decision.level.rank > Level.WATCH.rank
        ):
            return Decision(Level.WATCH, f"{decision.reason}; capped at watch by --readonly-group")
        return decision

    def records_input(self, console: ConsoleRef) -> bool:
        """Whether a rule naming `console` says `record_input = true`."""
        return any(rule.record_input and rule.names(console) for rule in self.rules)

    def telnet_allowed(self, console: ConsoleRef) -> bool:
        """False when a rule naming `console` says `telnet = false` (the hub asks
        again whenever the console's name or the rules change, vspcd/hub/telnetport.py)."""
        return not any(not rule.telnet and rule.names(console) for rule in self.rules)

    def level(self, identity: Identity, console: ConsoleRef | None, **context: Any) -> Level:
        """`identity`'s level on `console` (`context`: own_uid, readonly_gid)."""
        return self.decide(identity, console, **context).level

    def explain(self, identity: Identity, console: ConsoleRef | None, **context: Any) -> str:
        """Which rule (or default) decided `identity`'s level on `console`."""
        return self.decide(identity, console, **context).reason


DEFAULT_POLICY = AccessPolicy()  # no rules: everyone who can reach the socket has control


class AccessConfigError(ValueError):
    """The access keys are invalid; `errors` has one message per bad key."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = tuple(errors)


def _nss_user(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _nss_group(name: str) -> int:
    return grp.getgrnam(name).gr_gid


_RULE_KEYS = frozenset({"consoles", "users", "level", "telnet", "record_input"})


def parse_access(
    table: Mapping[str, object],
    *,
    user_uid: Callable[[str], int] = _nss_user,
    group_gid: Callable[[str], int] = _nss_group,
) -> AccessPolicy:
    """The policy from a configuration file's `access_default`, `access` and
    `delegates` keys (other keys of `table` are ignored: they are the caller's).

    `user_uid` / `group_gid` resolve names (KeyError: no such name).

    Raises:
        AccessConfigError: every problem, each as "key: why".
    """
    errors: list[str] = []
    default = Level.CONTROL
    if "access_default" in table:
        parsed = _level("access_default", table["access_default"], errors)
        default = parsed or default
    rules: list[Rule] = []
    raw = table.get("access", [])
    if not isinstance(raw, list):
        errors.append("access: expected an array of tables ([[access]])")
        raw = []
    for number, item in enumerate(raw, 1):
        rule = _rule(number, item, errors, user_uid, group_gid)
        if rule is not None:
            rules.append(rule)
    delegates: set[int] = set()
    if table.get("delegates", []) != []:  # an empty array: nobody, like no key
        for name in _strings("delegates", table["delegates"], errors):
            try:
                delegates.add(user_uid(name))
            except KeyError:
                errors.append(f"delegates: no user {name!r}")
    if errors:
        raise AccessConfigError(errors)
    return AccessPolicy(default, tuple(rules), frozenset(delegates))


def _level(key: str, value: object, errors: list[str]) -> Level | None:
    if isinstance(value, str) and value in Level.__members__.values():
        return Level(value)
    errors.append(f"{key}: {value!r} is not one of {_LEVELS}")
    return None


def _strings(key: str, value: object, errors: list[str]) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        errors.append(f"{key}: expected a non-empty array of non-empty strings")
        return []
    return value


def _rule(
    number: int,
    item: object,
    errors: list[str],
    user_uid: Callable[[str], int],
    group_gid: Callable[[str], int],
) -> Rule | None:
    where = f"access[{number}]"
    if not isinstance(item, dict):
        errors.append(f"{where}: expected a table")
        return None
    before = len(errors)
    for key in sorted(set(item) - _RULE_KEYS):
        errors.append(
            f"{where}: unknown key {key!r} (keys: consoles, users, level, telnet, record_input)"
        )
    switches = (
        _switch(where, item, "telnet", True, errors),
        _switch(where, item, "record_input", False, errors),
    )
    grants = "users" in item or "level" in item or switches == (True, False)
    for key in ("consoles", "users", "level") if grants else ("consoles",):
        if key not in item:
            errors.append(f"{where}.{key}: missing")
    patterns = [
        p
        for text in _strings(f"{where}.consoles", item.get("consoles", ["*"]), errors)
        if (p := _pattern(f"{where}.consoles", text, errors)) is not None
    ]
    uids: set[int] = set()
    gids: set[int] = set()
    users = _strings(f"{where}.users", item["users"], errors) if "users" in item else []
    for name in users:
        try:
            if name.startswith("@"):
                gids.add(group_gid(name[1:]))
            else:
                uids.add(user_uid(name))
        except KeyError:
            kind = "group" if name.startswith("@") else "user"
            errors.append(f"{where}.users: no {kind} {name.lstrip('@')!r}")
    level = _level(f"{where}.level", item.get("level", Level.NONE.value), errors)
    if len(errors) > before or level is None:
        return None
    text = f"consoles {', '.join(item['consoles'])}; users {', '.join(users) or '-'}"
    telnet, record_input = switches
    return Rule(
        number, tuple(patterns), frozenset(uids), frozenset(gids), level, text,
        record_input=record_input, telnet=telnet,
    )  # fmt: skip


def _switch(
    where: str, item: dict[str, object], key: str, default: bool, errors: list[str]
) -> bool:
    value = item.get(key, default)
    if not isinstance(value, bool):
        errors.append(f"{where}.{key}: expected true or false, got {value!r}")
        return default
    return value


def _pattern(key: str, text: str, errors: list[str]) -> Selector | None:
    try:
        return parse_selector(text)
    except ValueError as exc:
        errors.append(f"{key}: {text!r}: {exc}")
        return None
