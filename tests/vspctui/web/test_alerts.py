"""Console alerts in vspc-web (docs/vspc-web.md "The console list", "The console
page"): a fake VM's kernel panic reaches the list socket live and the console page's
data, a new session's list is seeded from the admin `alerts` command, and a line a VM
chose stays data (docs/operations.md "Console alerts")."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp", reason="vspc-web needs the web extra (aiohttp)")

from aiohttp import WSMsgType  # noqa: E402
from aiohttp.test_utils import TestClient  # noqa: E402

from tests.vspctui.realdaemon import RealDaemon  # noqa: E402
from tests.vspctui.web.test_app import TIMEOUT, login, origin, run, web  # noqa: E402
from vspc.vspctui.web import listfeed  # noqa: E402

EVIL = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
PANIC = b"[   12.345678] Kernel panic - not syncing: VFS: " + EVIL.encode() + b"\r\n"
STATIC = Path(listfeed.__file__).resolve().parent / "static"


async def alert_row(ws: Any) -> dict[str, Any]:
    """The first db01 row of the list socket that carries an alert."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await ws.receive()
            if msg.type is not WSMsgType.TEXT:
                raise AssertionError(f"list socket ended: {msg}")
            for row in json.loads(msg.data)["rows"]:
                if row["name"] == "db01" and row["alert"] is not None:
                    return dict(row)


def test_a_panic_reaches_the_list_and_the_console_page(real: RealDaemon) -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        csrf = await login(client)
        ws = await client.ws_connect(f"/ws/list?csrf={csrf}", headers={"Origin": origin(client)})
        first = json.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert first["full"] and first["rows"][0]["alert"] is None  # nothing raised yet
        await asyncio.to_thread(real.vm_prints, b"booting\r\n" + PANIC)
        row = await alert_row(ws)
        assert row["alert"]["rule"] == "kernel_panic"
        assert row["alert"]["severity"] == "critical"
        assert isinstance(row["alert"]["time"], float)
        assert "line" not in row["alert"]  # the list carries no VM text but the name
        await ws.close()

        shown = await client.get("/api/console/db01")
        assert shown.content_type == "application/json"
        data = await shown.json()
        (alert,) = data["alerts"]
        assert alert["rule"] == "kernel_panic" and alert["severity"] == "critical"
        assert alert["line"].endswith("Kernel panic - not syncing: VFS: " + EVIL)
        assert alert["context"] == ["login: booting"]  # "login: " had no newline
        assert isinstance(alert["time"], float)

        # The page itself never holds the line: console.js fetches it as JSON.
        page = await (await client.get("/console/db01")).text()
        assert "onerror" not in page and "alert(2)" not in page
        assert 'id="alerts"' in page

        # A new session's list is seeded from the admin `alerts` command.
        async with web(real) as other:
            csrf = await login(other)
            fresh = await other.ws_connect(
                f"/ws/list?csrf={csrf}", headers={"Origin": origin(other)}
            )
            snapshot = json.loads((await fresh.receive(timeout=TIMEOUT)).data)
            (seeded,) = snapshot["rows"]
            assert seeded["alert"] == row["alert"]
            await fresh.close()

    run(real, body)


def test_scripts_set_text_never_markup() -> None:
    """The line, the context and the rule reach the DOM as text: no script of the
    pages parses strings as HTML."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser")
    for script in ("list.js", "console.js"):
        text = (STATIC / script).read_text()
        assert not sinks.search(text), script
        assert "textContent" in text


def test_newest_alert_wins_and_expiry_forgets_it() -> None:
    """`ListFeed` keeps the newest alert per console whichever way it arrives."""
    from vspc.common.admin import Event

    async def main() -> None:
        feed = listfeed.ListFeed(None, alerts=False)  # type: ignore[arg-type]
        feed.rows["k"] = {"key": "k", "name": "db01", "alert": None}
        feed.apply(Event("console_alert", "k", "db01", {"alert": "b", "severity": "warning",
                                                      "time": 20.0, "line": "x"}))  # fmt: skip
        feed._note_alert("k", {"alert": "a", "severity": "critical", "time": 10.0})  # older
        assert feed.rows["k"]["alert"] == {"rule": "b", "severity": "warning", "time": 20.0}
        feed.apply(Event("console_alert", "k", "db01", {"alert": 3, "severity": "x"}))
        assert feed.rows["k"]["alert"]["rule"] == "b"  # malformed: ignored
        feed.apply(Event("vm_expired", "k", "db01"))
        assert "k" not in feed.alerts and "k" not in feed.rows
        await feed.close()

    asyncio.run(main())
