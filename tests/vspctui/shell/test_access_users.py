"""Per-console access through the real socket and the real `vspc`, run as real
unprivileged users (docs/security.md "Who may do what").

A session fixture creates users and groups with useradd/groupadd (skipped unless
root); each `vspc` runs under `setpriv --reuid --regid --groups/--clear-groups`, so
the daemon sees exactly the credentials the kernel reports (SO_PEERCRED,
SO_PEERGROUPS) -- including groups a process holds that /etc/group does not list,
and a uid with no passwd entry at all.  `vspc` is the world-readable copy of
tests/userruntime.py, under /usr/bin/python3: those users may not be able to run the
venv's interpreter or read the checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.userruntime import UserRuntime
from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, console_port, identified, running
from tests.vspctui.realdaemon import RealDaemon
from vspc.common.esxi import SerialBreak

# Per test process: suites running side by side must not delete each other's accounts.
PREFIX = f"vt{os.getpid() % 100000:05d}"
GROUPS = ("dba", "net", "ro")
USERS = {"alice": "dba", "bob": "net", "carol": "net", "dave": "net"}
GHOST_UID = 54321  # no passwd entry

RULES = f"""
access_default = "none"
[[access]]
consoles = ["db*"]
users = ["@{PREFIX}_dba"]
level = "write"
[[access]]
consoles = ["*"]
users = ["@{PREFIX}_net"]
level = "watch"
[[access]]
consoles = ["uuid:{UUID_B}"]
users = ["{PREFIX}_carol"]
level = "control"
"""


@pytest.fixture(scope="session")
def accounts(request: pytest.FixtureRequest) -> Iterator[dict[str, tuple[int, int]]]:
    """name -> (uid, gid) of throw-away users and groups."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates users and groups and runs vspc as them (setpriv)")
    for tool in ("useradd", "groupadd", "userdel", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    user_runtime: UserRuntime = request.getfixturevalue("user_runtime")  # may skip: says why
    made_users: list[str] = []
    made_groups: list[str] = []
    try:
        for group in GROUPS:
            name = f"{PREFIX}_{group}"
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                continue
            subprocess.run(["groupadd", name], check=True)
            made_groups.append(name)
        out: dict[str, tuple[int, int]] = {}
        for user, group in USERS.items():
            name = f"{PREFIX}_{user}"
            try:
                pwd.getpwnam(name)
            except KeyError:
                # No membership in /etc/group: the groups a process holds are what
                # setpriv gives it, exactly what the daemon must go by.
                subprocess.run(
                    ["useradd", "-M", "-N", "-g", f"{PREFIX}_{group}", "-s", "/bin/false", name],
                    check=True,
                )
                made_users.append(name)
            entry = pwd.getpwnam(name)
            out[user] = (entry.pw_uid, entry.pw_gid)
        for group in GROUPS:
            out["@" + group] = (0, grp.getgrnam(f"{PREFIX}_{group}").gr_gid)
        _assert_runnable(user_runtime.vspc, *next(iter(out.values())))
        yield out
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], check=False)
        for name in made_groups:
            subprocess.run(["groupdel", name], check=False)


def _assert_runnable(program: str, uid: int, gid: int) -> None:
    """`program` starts as uid/gid: the copy is built for any user to run (a checkout
    under a private directory does not matter), so a failure here is a failure, not a
    reason to skip."""
    probe = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", program, "--version"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert probe.returncode == 0, f"uid {uid} cannot run {program}: {probe.stderr}"


class SharedDaemon(RealDaemon):
    """vspcd with the rules above, a socket every user may reach, and two VMs:
    db01 (UUID_A) and web01 (UUID_B); `program` is the `vspc` the users run."""

    def __init__(self, directory: Path, program: str, *extra: str) -> None:
        super().__init__(directory)
        self.program = program
        self.extra = extra

    async def _start(self) -> None:
        config = self.directory / "vspcd.toml"
        config.write_text(RULES)
        self.daemon, self.events = await self._stack.enter_async_context(
            running(
                self.directory, "--config", str(config), "--admin-socket-mode", "0666", *self.extra
            )
        )
        assert self.daemon.proxy_port is not None
        self.vm = await FakeEsxi.connect(self.daemon.proxy_port, UUID_A, "db01")
        await identified(self.events, UUID_A)
        self.vm2 = await FakeEsxi.connect(self.daemon.proxy_port, UUID_B, "web01")
        await identified(self.events, UUID_B)
        await asyncio.sleep(0)


@pytest.fixture
def shared(
    accounts: dict[str, tuple[int, int]], user_runtime: UserRuntime
) -> Iterator[SharedDaemon]:
    directory = Path(tempfile.mkdtemp(prefix="vspc-access-"))
    directory.chmod(0o755)  # the users must reach the socket
    daemon = SharedDaemon(directory, user_runtime.vspc, "--readonly-group", f"{PREFIX}_ro")
    try:  # a start that fails still closes the daemon's loop
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def vspc(
    daemon: SharedDaemon, uid: int, gid: int, groups: tuple[int, ...], *argv: str
) -> tuple[int, str, str]:
    """Run the real `vspc` as uid/gid with exactly `groups`; (exit code, out, err)."""
    drop = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    cmd = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}", *drop,
        daemon.program, "--socket", daemon.path, *argv,
    ]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, cwd="/", env={"PATH": os.defpath}
    )
    return done.returncode, done.stdout, done.stderr


def as_user(
    daemon: SharedDaemon, accounts: dict[str, tuple[int, int]], user: str, *argv: str
) -> tuple[int, str, str]:
    uid, gid = accounts[user]
    return vspc(daemon, uid, gid, (gid,), *argv)


def names(out: str) -> list[str]:
    return sorted(row["name"] for row in json.loads(out)["vms"])


NOT_FOUND, DENIED = 4, 6


def test_each_command_at_each_level(
    shared: SharedDaemon, accounts: dict[str, tuple[int, int]]
) -> None:
    d, a = shared, accounts
    # alice (@dba): write on db01, web01 does not exist for her.
    assert names(as_user(d, a, "alice", "list", "--json")[1]) == ["db01"]
    code, out, _ = as_user(d, a, "alice", "show", "db01", "--json")
    assert code == 0 and json.loads(out)["console"]["level"] == "write"
    code, _, err = as_user(d, a, "alice", "show", "web01")
    assert code == NOT_FOUND and "no console matches 'web01'" in err
    assert as_user(d, a, "alice", "show", UUID_B)[0] == NOT_FOUND  # by UUID: same answer
    assert as_user(d, a, "alice", "tail", "web01")[0] == NOT_FOUND
    assert as_user(d, a, "alice", "tail", "db01")[0] == 0
    assert as_user(d, a, "alice", "clear", "db01")[0] == DENIED  # clear needs control
    web_port = str(console_port(d.daemon, UUID_B))
    code, _, err = as_user(d, a, "alice", "clear", web_port)  # by telnet port: no hint either
    assert code == NOT_FOUND and "web01" not in err
    code, out, _ = as_user(d, a, "alice", "access", "db01")
    assert code == 0 and "write" in out and "access[1]" in out
    code, out, _ = as_user(d, a, "alice", "whoami", "--json")
    who = json.loads(out)
    assert (who["user"], who["level"]) == (f"{PREFIX}_alice", "none")
    assert who["groups"] == [f"{PREFIX}_dba"]
    # bob (@net): watch everywhere: sees both, may not type or lock or clear.
    assert names(as_user(d, a, "bob", "list", "--json")[1]) == ["db01", "web01"]
    code, out, _ = as_user(d, a, "bob", "show", "web01", "--json")
    assert json.loads(out)["console"]["level"] == "watch"
    for lock in ("write", "exclusive", "free_for_all"):
        code, _, err = as_user(d, a, "bob", "proxy", "--lock", lock, "db01")
        assert code == DENIED, (lock, err)
    assert as_user(d, a, "bob", "clear", "web01")[0] == DENIED
    # carol (@net + control on web01 by UUID)
    assert as_user(d, a, "carol", "clear", "web01")[0] == 0
    assert as_user(d, a, "carol", "clear", "db01")[0] == DENIED
    code, out, _ = as_user(d, a, "carol", "access", "web01")
    assert "control" in out and "uuid:" in out


def test_kick_needs_control_on_the_clients_console(
    shared: SharedDaemon, accounts: dict[str, tuple[int, int]]
) -> None:
    d, a = shared, accounts
    d.port = console_port(d.daemon, UUID_A)
    op = d.telnet()  # a client on db01
    hub = d.daemon.hub
    assert hub is not None
    ident = d.call(lambda: next(c.ident for c in hub.consoles() for c in c.clients))
    assert as_user(d, a, "bob", "kick", str(ident))[0] == DENIED  # watch on db01
    assert as_user(d, a, "carol", "kick", str(ident))[0] == DENIED  # control on web01 only
    assert as_user(d, a, "alice", "kick", str(ident))[0] == DENIED  # write on db01
    assert vspc(d, 0, 0, (0,), "kick", str(ident))[0] == 0  # root: control
    del op


def test_groups_come_from_the_process_not_from_etc_group(
    shared: SharedDaemon, accounts: dict[str, tuple[int, int]]
) -> None:
    d, a = shared, accounts
    uid, gid = a["carol"]
    ro = a["@ro"][1]
    # carol is in no group of /etc/group; her process holding the read-only group
    # is capped at watch ...
    code, _, err = vspc(d, uid, gid, (gid, ro), "clear", "web01")
    assert code == DENIED and "watch" in err
    # ... and one that dropped @net loses what @net gave (db01 is watch-only via @net)
    code, out, _ = vspc(d, uid, gid, (a["@dba"][1],), "list", "--json")
    assert names(out) == ["db01", "web01"]  # @dba write on db01, carol's own rule on web01
    code, out, _ = vspc(d, uid, a["@ro"][1], (), "list", "--json")
    assert names(out) == ["web01"]  # only the read-only group: carol's own rule, capped
    # a process holding @dba without /etc/group saying so gets @dba's write
    code, out, _ = vspc(d, uid, gid, (a["@dba"][1],), "show", "db01", "--json")
    assert json.loads(out)["console"]["level"] == "write"


def test_a_uid_without_passwd_entry(
    shared: SharedDaemon, accounts: dict[str, tuple[int, int]]
) -> None:
    d, a = shared, accounts
    with contextlib.suppress(KeyError):
        pwd.getpwuid(GHOST_UID)
        pytest.skip(f"uid {GHOST_UID} has a passwd entry here")
    code, out, _ = vspc(d, GHOST_UID, GHOST_UID, (), "list", "--json")
    assert code == 0 and names(out) == []
    code, out, _ = vspc(d, GHOST_UID, GHOST_UID, (), "whoami", "--json")
    who: dict[str, Any] = json.loads(out)
    assert (who["user"], who["uid"], who["level"]) == (None, GHOST_UID, "none")
    assert "no passwd entry" in who["reason"]
    # what rules naming its groups give, and no more
    code, out, _ = vspc(d, GHOST_UID, GHOST_UID, (a["@net"][1],), "list", "--json")
    assert names(out) == ["db01", "web01"]
    assert vspc(d, GHOST_UID, GHOST_UID, (a["@net"][1],), "clear", "db01")[0] == DENIED


@pytest.fixture
def audited(
    accounts: dict[str, tuple[int, int]], user_runtime: UserRuntime
) -> Iterator[SharedDaemon]:
    """The shared daemon with `--audit-log` (docs/security.md "Audit trail")."""
    directory = Path(tempfile.mkdtemp(prefix="vspc-audit-"))
    directory.chmod(0o755)
    daemon = SharedDaemon(directory, user_runtime.vspc, "--audit-log", str(directory / "audit.log"))
    try:  # a start that fails still closes the daemon's loop
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def audit_record(daemon: SharedDaemon, **match: Any) -> dict[str, Any]:
    """The first line of the audit log with every field of `match`, once written (the
    log is flushed at the end of the daemon's loop turn: one round trip later)."""
    path = daemon.directory / "audit.log"
    for _ in range(2):
        daemon.call(lambda: asyncio.sleep(0))  # a turn of the daemon's loop
        for line in path.read_text().splitlines():
            record: dict[str, Any] = json.loads(line)
            if all(record.get(k) == v for k, v in match.items()):
                return record
    raise AssertionError(f"no audit record {match} in {path.read_text()}")


def test_break_needs_control_and_every_action_is_audited(
    audited: SharedDaemon, accounts: dict[str, tuple[int, int]]
) -> None:
    d, a = audited, accounts
    alice, bob, carol = (f"{PREFIX}_{n}" for n in ("alice", "bob", "carol"))
    # alice has write on db01: a break needs control.
    code, _, err = as_user(d, a, "alice", "break", "db01")
    assert code == DENIED and "write access on db01: break needs control" in err
    denied = audit_record(d, action="break", user=alice)
    assert denied["result"] == "denied" and denied["uid"] == a["alice"][0]
    assert denied["console"] == "db01" and denied["reason"].startswith("permission_denied: ")
    # bob (watch) may not clear.
    assert as_user(d, a, "bob", "clear", "db01")[0] == DENIED
    record = audit_record(d, action="clear", user=bob)
    assert record["result"] == "denied" and record["peer"] == "unix"
    assert record["reason"] == ("permission_denied: watch access on db01: clear needs control")
    # carol has control on web01: break, clear and kick there are hers.
    d.port = console_port(d.daemon, UUID_B)
    op = d.telnet()  # a client on web01
    hub = d.daemon.hub
    assert hub is not None
    ident = d.call(lambda: next(c.ident for c in hub.consoles() for c in c.clients))
    assert as_user(d, a, "carol", "break", "web01")[0] == 0
    d.call(lambda: d.vm2.wait_for(SerialBreak))
    record = audit_record(d, action="break", user=carol)
    assert (record["result"], record["console"]) == ("ok", "web01") and record["key"]
    assert as_user(d, a, "carol", "kick", str(ident))[0] == 0
    record = audit_record(d, action="kick", user=carol)
    assert (record["result"], record["client"]) == ("ok", ident)
    assert as_user(d, a, "carol", "clear", "web01")[0] == 0
    record = audit_record(d, action="clear", user=carol)
    assert record["result"] == "ok" and record["uid"] == a["carol"][0]
    # attach and detach: alice's `vspc attach` with its input at EOF (pipes).
    uid, gid = a["alice"]
    done = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={gid}",
         d.program, "--socket", d.path, "attach", "db01", "--lock", "write"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30, cwd="/",
        env={"PATH": os.defpath},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    attach = audit_record(d, action="attach", user=alice)
    assert (attach["result"], attach["mode"], attach["console"]) == ("ok", "write", "db01")
    detach = audit_record(d, action="detach", user=alice)
    assert (detach["result"], detach["mode"]) == ("ok", "write")
    del op
