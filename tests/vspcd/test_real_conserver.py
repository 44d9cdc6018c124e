"""conserver in front of vspcd's telnet ports (docs/esxi.md, "conserver"): the real
`conserver` daemon connects to a console's port with `protocol telnet`, logs what the
VM prints, and its `console` client, run in tmux, types into the VM.

vspcd runs by its real entry point (`python -m vspc.vspcd`), a fake ESXi host
(common/esxi.py) is the VM.  Skipped, saying why, where conserver, its client or tmux
is missing (.ci/run installs them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.vspcd.harness import FakeEsxi, free_port
from tests.vspcd.test_real_telnet import _admin, _tmux, _vspcd, _wait_for

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("conserver", "console", "tmux")),
    reason="needs conserver, its console client and tmux "
    "(apt-get install conserver-server conserver-client tmux)",
)


def _conserver_config(directory: Path, console_port: int) -> Path:
    config = directory / "conserver.cf"
    config.write_text(
        "config * { }\n"
        "default full { rw *; }\n"
        f'default * {{ logfile {directory}/&.log; timestamp ""; include full; }}\n'
        "console db01 { master localhost; type host; host 127.0.0.1; "
        f"port {console_port}; protocol telnet; }}\n"
        "access * { trusted 127.0.0.1; }\n"
    )
    (directory / "conserver.passwd").write_text("*any*:\n")
    return config


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _raw(tty: str) -> bool:
    """The terminal is in raw mode (the console client has attached)."""
    modes = subprocess.run(["stty", "-F", tty, "-a"], capture_output=True, text=True).stdout
    return "-icanon" in modes.split()


def test_conserver_logs_and_types_through_a_telnet_port(tmp_path: Path) -> None:
    session = f"vspc-conserver-{os.getpid()}"
    cons_port = free_port()
    with _vspcd(tmp_path) as (proxy_port, admin):

        async def scenario() -> None:
            vm = await FakeEsxi.connect(proxy_port, name="db01")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, _wait_for, lambda: bool(_admin(admin, {"cmd": "list"}).get("vms")), "db01"
            )
            rows = _admin(admin, {"cmd": "list"})["vms"]
            assert isinstance(rows, list)
            config = _conserver_config(tmp_path, rows[0]["port"])
            # Without -d conserver stays in the foreground, so the test owns the process
            # (Popen does not wait for it).
            server = subprocess.Popen(  # noqa: ASYNC220
                ["conserver", "-C", str(config), "-P", str(tmp_path / "conserver.passwd"),
                 "-p", str(cons_port), "-M", "127.0.0.1", "-L", str(tmp_path / "server.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:

                def attached() -> bool:
                    rows = _admin(admin, {"cmd": "list"})["vms"]
                    return isinstance(rows, list) and rows[0]["clients"] == 1

                await loop.run_in_executor(None, _wait_for, attached, "conserver to attach")
                # VM -> conserver's console log, byte for byte apart from telnet framing.
                vm.send(b"db01 login: \xff marker\r\n")
                log = tmp_path / "db01.log"
                await loop.run_in_executor(
                    None,
                    _wait_for,
                    lambda: log.exists() and b"db01 login: \xff marker" in log.read_bytes(),
                    "the VM's output in conserver's log",
                )
                # An operator on conserver's client types into the VM, once conserver's
                # master port answers (it listens after starting its console children).
                await loop.run_in_executor(
                    None, _wait_for, lambda: _accepts(cons_port), "conserver's master port"
                )
                _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "20",
                      f"console -M 127.0.0.1 -p {cons_port} -l root db01")  # fmt: skip
                await loop.run_in_executor(
                    None,
                    _wait_for,
                    lambda: "[Enter" in _tmux("capture-pane", "-p", "-t", session),
                    "the console client's banner",
                )
                # The client prints its banner before it puts the terminal in raw mode;
                # keys typed before that would be the tty's (echoed, Enter as LF).
                tty = _tmux("display", "-p", "-t", session, "#{pane_tty}").strip()
                await loop.run_in_executor(None, _wait_for, lambda: _raw(tty), "raw mode")
                _tmux("send-keys", "-t", session, "uptime", "Enter")
                await vm.input.expect(b"uptime\r")
            finally:
                subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)  # noqa: ASYNC221
                server.terminate()
                server.wait(10)  # noqa: ASYNC221
            await vm.close()

        asyncio.run(scenario())
