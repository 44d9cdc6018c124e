"""Delegated identity (docs/vspc-web.md, docs/security.md "Who may do what"): a user
named by `delegates` may say `hello` with `as_user` and is then judged as that user;
anyone else gets permission_denied, and so does a second or late `as_user`."""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import replace
from pathlib import Path

import pytest

from tests.vspcd.faces.test_admin import Harness, daemon_with, run
from vspc.vspcd.faces.admin.policy import AccessPolicy, Identity, Source, parse_access

ME = pwd.getpwuid(os.geteuid()).pw_name
OTHER = "nobody"  # an unprivileged user every Debian and RPM system has


def policy(*, delegates: list[str], level: str = "watch") -> AccessPolicy:
    table: dict[str, object] = {
        "access_default": "none",
        "access": [{"consoles": ["vm*"], "users": [OTHER], "level": level}],
        "delegates": delegates,
    }
    return parse_access(table)


def set_policy(h: Harness, new: AccessPolicy) -> None:
    h.server.settings = replace(h.server.settings, access=new)


def test_parse_delegates() -> None:
    assert policy(delegates=[OTHER]).delegates == {pwd.getpwnam(OTHER).pw_uid}
    with pytest.raises(ValueError, match="delegates: no user"):
        parse_access({"delegates": ["no-such-user-here"]})
    with pytest.raises(ValueError, match="delegates: expected"):
        parse_access({"delegates": "vspc-web"})


def test_delegate_acts_as_user(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            set_policy(h, policy(delegates=[ME]))
            web = await h.admin()
            hello = await web.ok("hello", client="vspc-web/test", as_user=OTHER)
            assert hello["user"] == OTHER and hello["uid"] == pwd.getpwnam(OTHER).pw_uid
            assert hello["level"] == "none"
            shown = await web.ok("show", vm="vm01")
            assert shown["console"]["level"] == "watch"
            assert await web.error("clear", vm="vm01") == "permission_denied"
            # Only once per connection.
            assert await web.error("hello", as_user=OTHER) == "permission_denied"
            # An attach connection: read-only, as the user.
            peer = await h.admin()
            await peer.ok("hello", as_user=OTHER)
            reply = await peer.request("attach", vm="vm01", lock="free_for_all")
            assert reply["ok"] is False and reply["error"]["code"] == "permission_denied"
            peer2 = await h.admin()
            await peer2.ok("hello", as_user=OTHER)
            granted = await peer2.ok("attach", vm="vm01")
            assert granted["readonly"] is True
            await peer2.send(b"typed")
            await h.until(lambda c: c["counters"]["input_dropped"] >= 5)
            assert b"typed" not in vm.received

    run(main)
    assert any(f"user={OTHER} via {ME}" in r.getMessage() for r in caplog.records)


def test_non_delegate_and_privileged_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            set_policy(h, policy(delegates=[]))
            peer = await h.admin()
            assert await peer.error("hello", as_user=OTHER) == "permission_denied"
            set_policy(h, policy(delegates=[ME]))
            peer = await h.admin()
            assert await peer.error("hello", as_user="root") == "permission_denied"
            assert await peer.error("hello", as_user="no-such-user-here") == "permission_denied"
            late = await h.admin()
            await late.ok("subscribe")
            assert await late.error("hello", as_user=OTHER) == "permission_denied"

    run(main)


class _Link:
    """What `AdminServer.admit` looks at of a connection: a Unix peer's identity."""

    def __init__(self, uid: int) -> None:
        self.identity = Identity("unix", uid, uid, None, frozenset(), Source.UNIX)
        self.peer_key: object = ("uid", uid)
        self.privileged = False
        self.subscribed = False
        self.tails: dict[str, object] = {}

    def abort(self) -> None:
        pass


def test_delegate_connections_count_per_user(tmp_path: Path) -> None:
    """A delegate's connections have their own pool (`delegate_connections`), apart
    from the shared `connections`; once `hello` names the user, each user counts
    against `per_peer` of their own (docs/security.md "Admin connection limits")."""
    alice, bob, other = 5001, 5002, 4343

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            server = h.server
            set_policy(h, parse_access({"delegates": [OTHER]}))
            web_uid = pwd.getpwnam(OTHER).pw_uid
            server.limits = replace(
                server.limits, connections=12, reserved=2, per_peer=3, delegate_connections=8
            )
            links = [_Link(web_uid) for _ in range(8)]
            for link in links:  # beyond the 3 per peer and 10 shared: its own pool
                assert server.admit(link) is None  # type: ignore[arg-type]
            assert "delegate" in (server.admit(_Link(web_uid)) or "")  # type: ignore[arg-type]
            # The shared pool is untouched: an ordinary operator still gets in.
            ordinary = [_Link(other) for _ in range(3)]
            for link in ordinary:
                assert server.admit(link) is None  # type: ignore[arg-type]
            assert "this peer" in (server.admit(_Link(other)) or "")  # type: ignore[arg-type]
            # Per user: alice gets per_peer (3), bob his own 3.
            for link in links[:3]:
                assert server.delegated(link, alice) is None  # type: ignore[arg-type]
            assert "this user" in (server.delegated(links[3], alice) or "")  # type: ignore[arg-type]
            for link in links[3:6]:
                assert server.delegated(link, bob) is None  # type: ignore[arg-type]
            # One of alice's goes: she may open another; the delegate's pool frees too.
            server.forget(links[0])  # type: ignore[arg-type]
            assert server.delegated(links[6], alice) is None  # type: ignore[arg-type]
            late = _Link(web_uid)
            assert server.admit(late) is None  # type: ignore[arg-type]
            for link in [*links[1:], *ordinary, late]:
                server.forget(link)  # type: ignore[arg-type]

    run(main)
