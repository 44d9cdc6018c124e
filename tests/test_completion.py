"""The bash and zsh completions (packaging/completion/, made by packaging/completion.py).

The committed files must be what the generator makes from today's command table, and
the bash one is run for real: a vspcd on a temporary socket with fake ESXi VMs
(vspc-sim), the completion sourced into bash, and `_vspc` called with COMP_WORDS as
bash would for `vspc attach d<Tab>`: the console names come from the daemon.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))

import completion  # noqa: E402

BIN = Path(sys.executable).parent
BASH = REPO / "packaging" / "completion" / "bash" / "vspc"


def test_committed_files_are_generated_from_the_table() -> None:
    for name, content in completion.generate().items():
        path = REPO / "packaging" / "completion" / name
        assert path.read_text() == content, (
            f"{path} is stale: run python3 packaging/completion.py packaging/completion"
        )


def test_every_cli_command_is_offered() -> None:
    from vspc.vspctui.shell.commands import commands

    text = BASH.read_text()
    for command in commands:
        if command.cli:
            assert f"        {'|'.join([command.name, *command.aliases])})" in text


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A vspcd (loopback, temporary admin socket) with consoles db01, db02 and web01."""
    directory = tmp_path_factory.mktemp("completion")
    sock = directory / "admin.sock"
    port = _free_port()
    vspcd = subprocess.Popen(
        [str(BIN / "vspcd"), "--allow-root", "--proxy-iface", "127.0.0.1", "--proxy-port",
         str(port),
         "--no-vm-ports", "--admin-socket", str(sock), "--stdout"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    sim: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert vspcd.poll() is None and time.monotonic() < deadline, "vspcd did not start"
            time.sleep(0.05)
        vms = directory / "vms"
        vms.write_text("db01\ndb02\nweb01\n")
        sim = subprocess.Popen(
            [str(BIN / "vspc-sim"), "-p", str(port), "--vm-file", str(vms), "--shell",
             "--duration", "120"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while _names(sock) != ["db01", "db02", "web01"]:
            assert time.monotonic() < deadline, f"consoles never came: {_names(sock)}"
            time.sleep(0.1)
        yield sock
    finally:
        for process in (sim, vspcd):
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
        if vspcd.stdout is not None:
            vspcd.stdout.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _names(sock: Path) -> list[str]:
    done = subprocess.run(
        [str(BIN / "vspc"), "--socket", str(sock), "list", "--names"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return done.stdout.split()


def _complete(line: str, sock: Path, *, socket_option: bool = False) -> list[str]:
    """What `_vspc` offers for `line` (the last word is the one being completed)."""
    script = (
        f"source {BASH}\n"
        'read -ra COMP_WORDS <<<"$LINE"\n'
        '[[ "$LINE" == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
        "_vspc\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LINE": line, "HOME": str(sock.parent)}
    if not socket_option:
        env["VSPC_SOCKET"] = str(sock)
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.split()


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")


@needs_bash
def test_attach_completes_console_names_from_the_daemon(daemon: Path) -> None:
    assert _complete("vspc attach d", daemon) == ["db01", "db02"]
    assert _complete("vspc attach ", daemon) == ["db01", "db02", "web01"]
    # --socket on the command line is the daemon asked.
    assert _complete(f"vspc --socket {daemon} show w", daemon, socket_option=True) == ["web01"]
    # `vspc VM` attaches: a first word completes to commands and consoles.
    assert _complete("vspc w", daemon) == ["who", "whoami", "web01"]  # commands and a console


@needs_bash
def test_commands_options_and_lock_modes(daemon: Path) -> None:
    assert _complete("vspc at", daemon) == ["attach"]
    assert "--names" in _complete("vspc list --", daemon)
    assert _complete("vspc attach --lock free_for_all_", daemon) == ["free_for_all_or_readonly"]
    assert _complete("vspc attach db01 ", daemon) == []  # one console only


@needs_bash
def test_no_daemon_is_silent(tmp_path: Path) -> None:
    assert _complete("vspc attach d", tmp_path / "nothing.sock") == []


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_completion_parses() -> None:
    zsh = REPO / "packaging" / "completion" / "zsh" / "_vspc"
    done = subprocess.run(["zsh", "-n", str(zsh)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
