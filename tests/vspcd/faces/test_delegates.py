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
from vspc.vspcd.faces.admin.policy import AccessPolicy, parse_access

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
