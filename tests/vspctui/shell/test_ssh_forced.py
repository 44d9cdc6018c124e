"""`vspc ssh-command` behind a real sshd's ForceCommand (docs/operations.md, "Remote
operators over SSH"; vspctui/shell/forced.py).

The parsing rules are checked directly; the end-to-end test starts a private sshd
(its own config and host key in a temporary directory, a free loopback port, nothing
of the system's sshd touched), a console-only user in a `Match Group` block, and a
vspcd with two consoles of which the user may reach one, and drives it with the real
`ssh` client.  It needs root (useradd, sshd) and openssh-server (.ci/run installs it).
ForceCommand runs `vspc` from the world-readable copy of tests/userruntime.py, under
/usr/bin/python3: the user may not be able to run the venv's interpreter or read the
checkout.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.userruntime import UserRuntime
from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, free_port, identified, running
from tests.vspctui.realdaemon import RealDaemon
from vspc.vspctui.cmdtable import UsageError
from vspc.vspctui.shell.commands import commands
from vspc.vspctui.shell.forced import parse_forced

# Per test process: suites running side by side must not delete each other's accounts.
USER = f"vs{os.getpid() % 100000:05d}_ssh"
GROUP = f"vs{os.getpid() % 100000:05d}_remote"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TIMEOUT = 20.0

# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "field", "value"),
    [
        ("list", "list", "json", None),
        ("vspc", "list", "json", None),
        ("vspc db01", "attach", "vm", "db01"),
        ("vspc attach db01", "attach", "vm", "db01"),
        ("attach -r db01", "attach", "readonly", True),
        ("show 'db 01' --json", "show", "vm", "db 01"),
        ("proxy db01", "proxy", "vm", "db01"),
    ],
)
def test_accepted_lines(line: str, name: str, field: str, value: object) -> None:
    command, namespace = parse_forced(line, commands)
    assert command.name == name
    assert getattr(namespace, field) == value


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("bash", "'bash' is not a vspc command"),
        ("list; id", "'list;' is not a vspc command"),
        ("id", "not a vspc command"),
        ("ssh-command", "not a vspc command"),
        ("vspc ssh-command", "not a vspc command"),
        ("list --socket /tmp/other.sock", "unrecognized arguments"),
        ("--socket /tmp/other.sock list", "not a vspc command"),
        ("vspc --tcp 10.0.0.1:1 list", "not a vspc command"),
        ("attach db01 --tcp=10.0.0.1:1", "unrecognized arguments"),
        ("list\nid", "control characters"),
        ("show @/etc/shadow", "starting with '@'"),
        ("list 'unbalanced", "cannot parse"),
        ("", "empty command"),
        ("x" * 5000, "longer than"),
    ],
)
def test_refused_lines(line: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_forced(line, commands)
    assert caught.value.status != 0
    assert why in str(caught.value)


# --- a real sshd -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account(request: pytest.FixtureRequest) -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a user and runs a private sshd")
    if not os.path.exists(SSHD) or not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        pytest.skip("needs openssh-server and openssh-client (.ci/run installs them)")
    for tool in ("useradd", "groupadd", "userdel", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    user_runtime: UserRuntime = request.getfixturevalue("user_runtime")  # may skip: says why
    made_group = made_user = False
    try:
        try:
            grp.getgrnam(GROUP)
        except KeyError:
            subprocess.run(["groupadd", GROUP], check=True)
            made_group = True
        try:
            pwd.getpwnam(USER)
        except KeyError:
            # A real shell (sshd runs ForceCommand through it), a password that is not
            # a lock ("*": no password login, but not a locked account either).
            subprocess.run(
                ["useradd", "-M", "-d", "/nonexistent", "-g", GROUP, "-s", "/bin/sh",
                 "-p", "*", USER],
                check=True,
            )  # fmt: skip
            made_user = True
        entry = pwd.getpwnam(USER)
        # Through a shell, as sshd runs ForceCommand (a direct exec from setpriv may
        # still get past a directory only root may search).  The copy is built to be
        # runnable by anyone: if it is not, that is a failure, not a reason to skip.
        probe = subprocess.run(
            ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
             "/bin/sh", "-c", f"{user_runtime.vspc} --version"],
            capture_output=True, text=True, timeout=TIMEOUT, cwd="/",
        )  # fmt: skip
        assert probe.returncode == 0, f"{USER} cannot run {user_runtime.vspc}: {probe.stderr}"
        yield entry
    finally:
        if made_user:
            # userdel refuses while the user has processes: the sessions' `vspc` end
            # once sshd and the daemon are gone, a moment after the tests.
            deadline = time.monotonic() + TIMEOUT
            while subprocess.run(["userdel", USER], capture_output=True).returncode == 8:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        if made_group:
            subprocess.run(["groupdel", GROUP], check=False)


class SshDaemon(RealDaemon):
    """vspcd with db01 (the user may write) and web01 (it does not exist for them)."""

    async def _start(self) -> None:
        config = self.directory / "vspcd.toml"
        config.write_text(
            f'access_default = "none"\n[[access]]\nconsoles = ["db01"]\n'
            f'users = ["{USER}"]\nlevel = "write"\n'
        )
        self.daemon, self.events = await self._stack.enter_async_context(
            running(
                self.directory, "--config", str(config), "--admin-socket-mode", "0660",
                "--admin-socket-group", GROUP,
            )
        )  # fmt: skip
        assert self.daemon.proxy_port is not None
        self.vm = await FakeEsxi.connect(self.daemon.proxy_port, UUID_A, "db01")
        await identified(self.events, UUID_A)
        self.vm2 = await FakeEsxi.connect(self.daemon.proxy_port, UUID_B, "web01")
        await identified(self.events, UUID_B)
        await self._vm_prints(b"login: ")


@contextlib.contextmanager
def private_sshd(directory: Path, socket_path: str, vspc: str) -> Iterator[int]:
    """sshd on a free loopback port, ForceCommand `vspc ... ssh-command` for `GROUP`;
    yields the port."""
    if not Path("/run/sshd").is_dir():  # sshd's privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, parents=True)
    key = directory / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    forced = f"{vspc} --socket {socket_path} ssh-command"
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory}/keys/%u\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"AllowUsers {USER}\nPermitUserRC no\nPermitUserEnvironment no\n"
        "Subsystem sftp internal-sftp\n"
        f"Match Group {GROUP}\n    ForceCommand {forced}\n    DisableForwarding yes\n"
        "    PermitTTY yes\n"
    )
    log = (directory / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {(directory / 'sshd.log').read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class Ssh:
    def __init__(self, directory: Path, port: int) -> None:
        self.key = directory / "client_ed25519"
        self.port = port

    def argv(self, *extra: str) -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            *extra, f"{USER}@127.0.0.1",
        ]  # fmt: skip

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv(), *command], capture_output=True, text=True, timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip


@pytest.fixture
def remote(
    account: pwd.struct_passwd, user_runtime: UserRuntime
) -> Iterator[tuple[SshDaemon, Ssh]]:
    directory = Path(tempfile.mkdtemp(prefix="vspc-ssh-"))
    directory.chmod(0o755)  # the user must reach the socket and its key
    daemon = SshDaemon(directory)
    try:  # a start that fails still closes the daemon's loop
        daemon.start()
        ssh_dir = directory / "ssh"
        ssh_dir.mkdir()
        client_key = ssh_dir / "client_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True
        )
        (ssh_dir / "keys").mkdir()
        (ssh_dir / "keys" / USER).write_text(client_key.with_suffix(".pub").read_text())
        (ssh_dir / "keys").chmod(0o755)
        (ssh_dir / "keys" / USER).chmod(0o644)
        with private_sshd(ssh_dir, daemon.path, user_runtime.vspc) as port:
            yield daemon, Ssh(ssh_dir, port)
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def read_until(proc: subprocess.Popen[bytes], wanted: bytes) -> bytes:
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + TIMEOUT
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} in {got!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"closed before {wanted!r}: {got!r}"
            got += chunk
    return got


def test_console_only_account_over_ssh(remote: tuple[SshDaemon, Ssh]) -> None:
    daemon, ssh = remote
    # `list` (and the documented `vspc` spelling) shows only what the rules allow.
    for command in (("list",), ("vspc", "list"), ("vspc",)):
        done = ssh.run(*command)
        assert done.returncode == 0, done.stderr
        assert "db01" in done.stdout and "web01" not in done.stdout, done.stdout
    done = ssh.run("whoami")
    assert done.returncode == 0 and f"user: {USER}" in done.stdout, done
    # A console the rules hide is vm_not_found, as on the local socket.
    done = ssh.run("show", "web01")
    assert done.returncode == 4 and "vm_not_found" in done.stderr, done
    # No shell, no second command, no other socket.
    for command in (("bash",), ("list; id",), ("id",), ("sh", "-c", "id")):
        done = ssh.run(*command)
        assert done.returncode == 2 and "refused" in done.stderr + done.stdout, (command, done)
        assert "uid=" not in done.stdout
    done = ssh.run("list", "--socket", "/tmp/x.sock")
    assert done.returncode == 2 and "unrecognized arguments: --socket" in done.stderr
    # Port forwarding is off for the group (DisableForwarding): -W fails.
    done = subprocess.run(
        [*ssh.argv("-W", f"127.0.0.1:{daemon.port}")], capture_output=True, timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0
    # attach with a terminal: the scrollback arrives, typing reaches the VM.
    with subprocess.Popen(
        [*ssh.argv("-tt"), "vspc", "db01"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:  # fmt: skip
        try:
            read_until(proc, b"login: ")
            assert proc.stdin is not None
            proc.stdin.write(b"root\r")
            proc.stdin.flush()
            daemon.vm_received(b"root")
        finally:
            proc.kill()
