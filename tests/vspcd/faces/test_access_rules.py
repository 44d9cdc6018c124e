"""Access rules applied in-process, with an `Identity` injected for each connection
(docs/admin-protocol.md "Access control"): reload re-judging open connections, and a
property: nothing a `watch` operator sends changes a console or reaches its VM."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vspcd.faces.test_admin import U2, Harness, daemon_with, run
from vspc.vspcd.faces.admin import link as link_module
from vspc.vspcd.faces.admin.policy import AccessPolicy, Identity, Source, parse_access

OP = Identity("unix", 5000, 5000, "op", frozenset({6000}), Source.UNIX)


def policy(level: str, default: str = "none") -> AccessPolicy:
    return parse_access(
        {
            "access_default": default,
            "access": [{"consoles": ["vm*"], "users": ["op"], "level": level}],
        },
        user_uid={"op": 5000}.__getitem__,
        group_gid={}.__getitem__,
    )


def as_op(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Connections opened while the returned flag is set are OP's."""
    flag = {"op": False}
    real = link_module.identify

    def identify(transport: Any, *, unix: bool) -> Identity:
        return OP if flag["op"] else real(transport, unix=unix)

    monkeypatch.setattr(link_module, "identify", identify)
    return flag


def set_policy(h: Harness, new: AccessPolicy) -> None:
    h.server.settings = replace(h.server.settings, access=new)  # what a reload does


def test_reload_downgrades_then_detaches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = as_op(monkeypatch)

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            await h.vm(U2, "other01")
            set_policy(h, policy("write"))
            flag["op"] = True
            watcher = await h.admin()
            await watcher.ok("subscribe")
            listed = await watcher.ok("list")
            assert [row["name"] for row in listed["vms"]] == ["vm01"]  # other01: none
            assert await watcher.error("show", vm="other01") == "vm_not_found"
            assert await watcher.error("show", vm=U2) == "vm_not_found"
            assert await watcher.error("clear", vm="vm01") == "permission_denied"
            assert (await watcher.ok("access", vm="vm01"))["level"] == "write"
            typist, reply = await h.attach(lock="free_for_all")
            flag["op"] = False
            assert reply["readonly"] is False
            await typist.send(b"<one>")
            await h.until(lambda c: c["counters"]["bytes_to_vm"] >= len(b"<one>"))

            set_policy(h, policy("watch"))
            await typist.read_until(b"[vspcd: access changed: read-only]")
            await typist.send(b"<two>")
            console = await h.until(lambda c: c["counters"]["input_dropped"] >= len(b"<two>"))
            assert all(c["readonly"] for c in console["attached"])
            assert b"<two>" not in vm.received

            set_policy(h, policy("none"))
            rest = await typist.read_until(b"[vspcd: access changed: detached]")
            assert rest
            assert await typist.read_to_eof() == b"\r\n"
            assert await watcher.error("show", vm="vm01") == "vm_not_found"
            # events of consoles no longer visible are not sent
            await h.vm(U2, "other01")  # nothing new for the watcher
            assert (await watcher.ok("list"))["vms"] == []
            assert not any(e.get("name") == "other01" for e in watcher.events)

    run(main)


_REQUEST = st.one_of(
    st.just({"cmd": "list"}),
    st.just({"cmd": "subscribe"}),
    st.sampled_from(["vm01", "other01", U2, "1"]).map(lambda vm: {"cmd": "show", "vm": vm}),
    st.sampled_from(["vm01", "other01"]).map(lambda vm: {"cmd": "tail", "vm": vm, "follow": True}),
    st.sampled_from(["vm01", "other01"]).map(lambda vm: {"cmd": "clear", "vm": vm}),
    st.integers(1, 4).map(lambda n: {"cmd": "kick", "client": n}),
    st.tuples(
        st.sampled_from(["vm01", "other01"]),
        st.sampled_from(["exclusive", "write", "free_for_all", "free_for_all_or_readonly"]),
        st.booleans(),
    ).map(lambda t: {"cmd": "attach", "vm": t[0], "lock": t[1], "readonly": t[2]}),
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(_REQUEST, min_size=1, max_size=8))
def test_a_watcher_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requests: list[dict[str, Any]]
) -> None:
    flag = as_op(monkeypatch)

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            vm = await h.vm()
            await h.vm(U2, "other01")
            holder, reply = await h.attach(lock="write")  # root holds vm01's write lock
            assert reply["ok"]
            before = (await h.shown())["attached"]
            set_policy(h, policy("watch"))
            flag["op"] = True
            peer = await h.admin()
            flag["op"] = False
            for request in requests:
                reply = await peer.request(**request)
                if request["cmd"] == "attach" and reply["ok"]:
                    assert reply["readonly"] is True
                    await peer.send(b"<typed by a watcher>")
                    await peer.close()
                    break
            await h.until(lambda c: len(c["attached"]) in (len(before), len(before) + 1))
            after = (await h.shown())["attached"]
            assert [c["id"] for c in after][: len(before)] == [c["id"] for c in before]
            assert (await h.shown())["lock"] == "write"
            assert (await h.shown("other01"))["attached"] == []
            await asyncio.sleep(0.01)
            assert b"<typed by a watcher>" not in vm.received
            await holder.close()

    run(main)
