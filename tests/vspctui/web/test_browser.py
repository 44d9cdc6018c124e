"""vspc-web in a real browser: headless Chromium driven over the DevTools protocol
(aiohttp's WebSocket client speaking CDP), against a real vspcd with a fake VM
(docs/vspc-web.md "Tests").  Skips, saying why, without Chromium."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="vspc-web needs the web extra (aiohttp)")

from aiohttp import web  # noqa: E402

from tests.vspctui.realdaemon import RealDaemon  # noqa: E402
from tests.vspctui.web.test_app import TOKEN, settings  # noqa: E402
from vspc.vspctui.web.app import make_app  # noqa: E402

EVIL = '<img src=x onerror="window.alerted=1">'
PANIC = b"Kernel panic - not syncing: " + EVIL.encode() + b"\r\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


class Page:
    """One CDP session on the browser's first page."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.log: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=20)).data)
            if msg.get("method") in ("Runtime.consoleAPICalled", "Log.entryAdded"):
                self.log.append(json.dumps(msg.get("params")))
            if msg.get("id") == ident:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def type(self, text: str) -> None:
        """Key presses, as a person types them (xterm.js in screen-reader mode reads
        keys, not the textarea's input events)."""
        for char in text:
            await self.call("Input.dispatchKeyEvent", type="keyDown", text=char, key=char)
            await self.call("Input.dispatchKeyEvent", type="keyUp", key=char)

    async def eval(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply.get("result", {}).get("value")

    async def until(self, expression: str) -> Any:
        # Polling the page: the DOM has no event to await from here.
        async with asyncio.timeout(15.0):
            while not (value := await self.eval(expression)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        return value


async def _devtools_port(profile: Path) -> int:
    async with asyncio.timeout(30):
        while not (profile / "DevToolsActivePort").exists():  # noqa: ASYNC110 (a file)
            await asyncio.sleep(0.1)
    return int((profile / "DevToolsActivePort").read_text().split()[0])


def test_browser_token_list_console_typing(real: RealDaemon) -> None:
    async def main() -> None:
        runner = web.AppRunner(make_app(settings(real)), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        profile = Path(tempfile.mkdtemp(prefix="vspc-chromium-"))
        assert CHROMIUM is not None
        browser = subprocess.Popen(  # noqa: ASYNC220 (started once, waited for in finally)
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            debug = await _devtools_port(profile)
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(20):
                    while True:
                        targets = await (await http.get(f"http://127.0.0.1:{debug}/json")).json()
                        pages = [t for t in targets if t["type"] == "page"]
                        if pages:
                            break
                        await asyncio.sleep(0.1)
                async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.call("Runtime.enable")
                    await page.call("Log.enable")
                    # A wrong token sees nothing.
                    await page.call("Page.navigate", url=f"{base}/?token=wrong")
                    # Read the text once the whole 403 page has been parsed: mid-parse
                    # the body holds only its heading.
                    text = await page.until(
                        "document.readyState === 'complete' && location.pathname === '/'"
                        " && document.body.innerText"
                    )
                    assert "wrong token" in text and "db01" not in text
                    # The right one: a cookie, the token gone from the URL, the list.
                    await page.call("Page.navigate", url=f"{base}/?token={TOKEN}")
                    await page.until(
                        "document.querySelector('#consoles tbody')?.innerText.includes('db01')"
                    )
                    assert await page.eval("location.href") == f"{base}/"
                    assert await page.eval("document.cookie") == ""  # HttpOnly
                    # A kernel panic: the list's badge appears live.
                    await asyncio.to_thread(real.vm_prints, PANIC)
                    badge = await page.until(
                        "document.querySelector('#consoles tbody .badge.critical')?.textContent"
                    )
                    assert badge == "kernel_panic (critical)"
                    # The console: the replayed scrollback, as text in the DOM.
                    await page.call("Page.navigate", url=f"{base}/console/db01")
                    await page.until(
                        "document.querySelector('.xterm-rows')?.innerText.includes('login:')"
                    )
                    # Its alert, with the line the VM printed as text: no element from it.
                    line = await page.until(
                        "document.querySelector('#alerts li strong')?.textContent"
                    )
                    assert line.endswith(EVIL)
                    assert await page.eval("document.querySelector('#alerts img, #alerts "
                                           "script') === null && !window.alerted")  # fmt: skip
                    await asyncio.to_thread(real.vm_prints, b"from-the-vm\r\n")
                    await page.until(
                        "document.querySelector('.xterm-rows').innerText.includes('from-the-vm')"
                    )
                    # Read-only first: keys typed now never reach the VM.
                    await page.eval("document.querySelector('.xterm-helper-textarea').focus()")
                    await page.type("WATCHKEYS")
                    await page.until("document.getElementById('state').innerText"
                                     ".includes('read-only')")  # fmt: skip
                    await page.until(
                        "[...document.querySelectorAll('#actions button')]"
                        ".some(b => b.textContent === 'Take write')"
                    )
                    await page.eval(
                        "[...document.querySelectorAll('#actions button')]"
                        ".find(b => b.textContent === 'Take write').click()"
                    )
                    await page.until("document.getElementById('state').innerText"
                                     ".includes('typing')")  # fmt: skip
                    await page.eval("document.querySelector('.xterm-helper-textarea').focus()")
                    await page.type("typed-in-browser")
                    try:
                        got = await asyncio.to_thread(real.vm_received, b"typed-in-browser")
                    except TimeoutError:
                        raise AssertionError(
                            f"VM got {bytes(real.vm.input.data)!r}; log {page.log}; state "
                            f"{await page.eval('document.body.innerText')!r}"
                        ) from None
                    assert b"WATCHKEYS" not in got
                    csp = [line for line in page.log if "Content Security Policy" in line]
                    assert not csp, csp
        finally:
            browser.terminate()
            try:
                await asyncio.to_thread(browser.wait, 10)
            except subprocess.TimeoutExpired:
                browser.kill()
                await asyncio.to_thread(browser.wait)
            shutil.rmtree(profile, ignore_errors=True)
            await runner.cleanup()

    asyncio.run(main())
