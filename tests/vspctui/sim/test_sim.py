"""vspc-sim end to end against a real vspcd (docs/vspc-sim.md; a CI smoke run).

vspcd and vspc-sim both run as subprocesses through their real entry points; the
tests read vspc-sim's JSON report and, in interactive mode, drive its login shell
with a raw-socket telnet client through vspcd's telnet port.  No timing assertions:
waits are for events (bytes arriving, a process ending), bounded by timeouts.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import start_vspcd

HOST = "127.0.0.1"
TIMEOUT = 30.0
SIM = [sys.executable, "-m", "vspc.vspctui.sim"]


def free_run(count: int) -> int:
    """The first of `count` consecutive free ports below the ephemeral range, so
    vspcd's `-r` hands them out in order and vspc-sim's --clients can name them.

    The search starts at a random place: suites running side by side on one machine
    must not all try the same run first.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    starts = list(range(10000, low - count, 7))
    random.shuffle(starts)
    for start in starts:
        try:
            for port in range(start, start + count):
                with socket.socket() as sock:
                    sock.bind((HOST, port))
        except OSError:
            continue
        return start
    raise RuntimeError("no run of free ports")


class Vspcd:
    def __init__(
        self, directory: Path, ports: int, *extra: str, same_as: Vspcd | None = None
    ) -> None:
        # `same_as`: a restart on the ports of a vspcd that was stopped.
        self.admin = directory / "a.sock"

        def argv() -> list[str]:  # fresh ports on each attempt unless restarting
            self.range_start = same_as.range_start if same_as else free_run(ports)
            proxy = same_as.proxy_port if same_as else 0
            return [
                *("--proxy-iface", HOST, "-p", str(proxy), "-i", HOST),
                *("-r", str(self.range_start), "--admin-socket", str(self.admin)),
                *("--vmotion-abandon", "30"),
                *extra,
            ]

        log = directory / ("vspcd-2.log" if same_as else "vspcd.log")
        self.daemon = start_vspcd(argv, log, timeout=TIMEOUT * 2)
        assert self.daemon.proxy_port is not None
        self.proxy_port = self.daemon.proxy_port
        self.proc = self.daemon.proc

    def stop(self) -> None:
        self.daemon.close()


@pytest.fixture
def vspcd() -> Iterator[Vspcd]:
    directory = Path(tempfile.mkdtemp(prefix="vspc-sim-"))  # short: Unix socket path
    daemon = Vspcd(directory, ports=4)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def run_sim(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([*SIM, *args, "--json"], capture_output=True, timeout=TIMEOUT * 2)
    assert done.stdout, done.stderr.decode()[-2000:]
    return done.returncode, json.loads(done.stdout)


def test_stream_type_and_every_kind_of_vmotion_lose_nothing(vspcd: Vspcd) -> None:
    start = vspcd.range_start
    code, report = run_sim(
        *("-p", str(vspcd.proxy_port), "-n", "3", "--stream", "100", "--duration", "1"),
        *("--clients", f"{start}-{start + 2}", "--type-rate", "20"),
        *("--vmotion", "success,abort,notnow,abandon", "--rounds", "4", "--abandon-wait", "0.05"),
    )
    counts = report["counts"]
    assert report["failures"] == [] and code == 0, (report["failures"], report["counts"])
    assert counts["connected"] == 3 and counts["clients"] == 3
    for kind in ("success", "abort", "notnow", "abandon"):
        assert counts[f"started_{kind}"] == 3
    assert counts["vmotions_ok"] == counts["vmotions_started"] == 12
    # The clients typed during the vMotions; the VMs' streams reached the clients.
    assert counts["typed_markers"] > 0 and counts["typed_markers_never_arrived"] == 0
    assert counts["markers_received"] > counts["typed_markers"]
    assert counts["lost_bytes"] == counts["repeated_bytes"] == 0
    assert counts["lost_markers"] == counts["repeated_markers"] == 0
    assert report["latency_ms"]["begin_answer"]["n"] == 12
    assert report["latency_ms"]["typed"]["n"] == counts["typed_markers"]


def test_a_run_that_ends_mid_vmotion_finishes_it_first(vspcd: Vspcd) -> None:
    start = vspcd.range_start
    code, report = run_sim(
        *("-p", str(vspcd.proxy_port), "-n", "1", "--ports-per-vm", "2"),
        *("--clients", f"{start}-{start + 1}"),
        *("--vmotion", "abandon", "--loop", "--abandon-wait", "0.3", "--duration", "0.5"),
    )
    counts = report["counts"]
    assert code == 0, (report["failures"], report["counts"])  # failures first: not truncated
    # The run ended while the VMs were away; they came back before the tally.
    assert counts["vmotions_done"] == counts["vmotions_started"] == counts["vmotions_ok"]
    assert counts["typed_markers"] > 0 and counts["lost_bytes"] == 0


def test_a_vm_file_the_text_report_and_a_replay(vspcd: Vspcd, tmp_path: Path) -> None:
    path = tmp_path / "vms"
    path.write_text("db01 01234567-89ab-cdef-fedc-ba9800000000\nweb02 - console2\n")
    done = subprocess.run(
        [*SIM, "-p", str(vspcd.proxy_port), "--vm-file", str(path), "--vmotion", "success"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    text = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "vms: 2" in text and "vmotions_ok" in text and "begin_answer" in text
    # Every byte value, 0xff included (the session doubles it on the wire).
    capture = bytes(range(256)) * 40
    (tmp_path / "replay").write_bytes(capture)
    args = ("-p", str(vspcd.proxy_port), "--vm-file", str(path))
    code, report = run_sim(*args, "--replay", str(tmp_path / "replay"), "--replay-rate", "200000")
    assert code == 0 and report["counts"]["replays_done"] == 2, report
    assert report["counts"]["bytes_out"] == 2 * len(capture)


def test_commands_from_a_file(vspcd: Vspcd, tmp_path: Path) -> None:
    script = tmp_path / "commands"
    script.write_text("vmotion notnow\nvmotion bogus\nvmotion success sim-00001\nfly\nquit\n")
    with script.open("rb") as stdin:
        done = subprocess.run(
            [*SIM, "-p", str(vspcd.proxy_port), "-n", "2", "--commands", "--json"],
            stdin=stdin,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode().splitlines() == [
        "vmotion notnow: 2 ok",
        "unknown vMotion kind bogus",
        "vmotion success: 1 ok",
        "unknown command fly; try help",
    ]
    counts = json.loads(done.stdout)["counts"]
    assert counts["started_notnow"] == 2 and counts["started_success"] == 1


@contextlib.contextmanager
def prompting_sim(vspcd: Vspcd, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """vspc-sim with --commands on a pipe; killed at the end if still running."""
    sim = subprocess.Popen(
        [*SIM, "-p", str(vspcd.proxy_port), *args, "--commands", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield sim
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


def command(sim: subprocess.Popen[bytes], line: bytes) -> bytes:
    """Send one command line; the first line of its reply (stderr)."""
    assert sim.stdin is not None and sim.stderr is not None
    sim.stdin.write(line + b"\n")
    sim.stdin.flush()
    reply = sim.stderr.readline()
    assert reply, "vspc-sim ended early"
    return reply


def test_sigusr1_moves_every_vm_and_sigterm_ends_with_the_report(vspcd: Vspcd) -> None:
    with prompting_sim(vspcd, "-n", "2") as sim:
        assert command(sim, b"list").startswith(b"sim-00000")  # once the VMs are up
        sim.send_signal(signal.SIGUSR1)
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=TIMEOUT)
    counts = json.loads(out)["counts"]
    assert sim.returncode == 0 and counts["started_success"] == counts["vmotions_ok"] == 2


def test_tls_with_a_verified_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "1", "-subj", "/CN=vspcd", "-addext", f"subjectAltName=IP:{HOST}"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    directory = Path(tempfile.mkdtemp(prefix="vspc-sim-"))
    daemon = Vspcd(directory, 2, "--ssl", "--cert", str(cert), "--key", str(key))
    try:
        args = ("-p", str(daemon.proxy_port), "-n", "2", "--tls", "--ca", str(cert))
        code, report = run_sim(*args, "--vmotion", "success,abort", "--rounds", "2")
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert code == 0 and report["counts"]["vmotions_ok"] == 4, report


def test_no_proxy_is_exit_status_2() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind((HOST, 0))
        port = str(bound.getsockname()[1])
        done = subprocess.run([*SIM, "-p", port], capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 2 and b"no VM could connect" in done.stderr


class Telnet:
    """A raw-socket telnet client that never negotiates, reading until a pattern."""

    def __init__(self, port: int) -> None:
        # vspcd binds the port once the VM has identified itself, a moment after the
        # VM saw WILL-PROXY (when vspc-sim counts it connected): retry until then.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.buf = b""

    def expect(self, pattern: bytes) -> bytes:
        while pattern not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed before {pattern!r}; got {self.buf!r}"
            self.buf += chunk
        before, _, self.buf = self.buf.partition(pattern)
        return before + pattern

    def type(self, data: bytes) -> None:
        self.sock.sendall(data)


def test_interactive_shell_through_vspcd_survives_a_vmotion(vspcd: Vspcd) -> None:
    with prompting_sim(vspcd, "--shell") as sim:
        assert command(sim, b"list").startswith(b"sim-00000 5eed")  # connected
        telnet = Telnet(vspcd.range_start)
        telnet.expect(b"\xff\xfb\x01")  # vspcd's WILL ECHO: attached
        telnet.type(b"\r\n")
        telnet.expect(b"sim-00000 login: ")
        telnet.type(b"root\r\n")
        telnet.expect(b"Password: ")
        telnet.type(b"hunter2\r\n")
        assert b"hunter2" not in telnet.expect(b"root@sim-00000:~$ ")
        assert command(sim, b"vmotion success") == b"vmotion success: 1 ok\n"
        telnet.type(b"echo after the move\r\n")  # reaches the VM on its new connection
        assert telnet.expect(b"root@sim-00000:~$ ").endswith(
            b"echo after the move\r\nafter the move\r\nroot@sim-00000:~$ "
        )
        telnet.sock.close()
        out, err = sim.communicate(b"quit\n", timeout=TIMEOUT)
    report = json.loads(out)
    assert sim.returncode == 0, err.decode()
    assert report["counts"]["vmotions_ok"] == 1 and report["counts"]["connected"] == 1


@pytest.mark.parametrize(
    "reply",
    [
        b"\xff\xfa\xe8\xff\xff\xff\xf0garbage\xff",  # a broken option-232 frame
        b"\xff\xfd\xe8\xff\xfa\xe8\x29\xff\xf0",  # DO 232, then a GOAHEAD nobody asked for
        b"HTTP/1.1 400 Bad Request\r\n\r\n",  # not a vSPC at all
    ],
)
def test_a_proxy_that_talks_nonsense_is_a_clean_failure(reply: bytes) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_everyone() -> None:
            with contextlib.suppress(OSError):
                while True:
                    peer, _ = listener.accept()
                    with peer:
                        peer.sendall(reply)
                        peer.recv(4096)

        threading.Thread(target=answer_everyone, daemon=True).start()
        done = subprocess.run(
            [*SIM, "-p", str(port), "-n", "2", "--timeout", "0.5"],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 2
    assert b"no VM could connect" in done.stderr and b"Traceback" not in done.stderr


def connected_vms(daemon: Vspcd) -> int:
    """How many consoles vspcd's admin `list` shows with a VM connected (0 if down)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(daemon.admin))
            sock.sendall(b'{"cmd": "list", "id": 1}\n')
            reply = sock.makefile("rb").readline()
    except OSError:
        return 0
    return sum(row["connected"] for row in json.loads(reply)["vms"])


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT * 2
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_vms_reconnect_with_back_off_when_vspcd_restarts(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="vspc-sim-"))  # short: Unix socket path
    first = Vspcd(directory, ports=4)
    notes = tmp_path / "sim.stderr"
    with notes.open("wb") as err:
        sim = subprocess.Popen(
            [*SIM, "-p", str(first.proxy_port), "-n", "3", "--duration", "60",
             "--reconnect-max", "0.5", "--json"],
            stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    second: Vspcd | None = None
    try:
        wait_until(lambda: connected_vms(first) == 3, "the 3 VMs are up")
        first.stop()
        wait_until(lambda: b"connection(s) lost" in notes.read_bytes(), "vspc-sim says so")
        time.sleep(0.3)  # a few refused reconnects while vspcd is down
        second = Vspcd(directory, 4, same_as=first)
        wait_until(lambda: connected_vms(second) == 3, "the 3 VMs are back")
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=TIMEOUT)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        if second is not None:
            second.stop()
        shutil.rmtree(directory, ignore_errors=True)
    counts = json.loads(out)["counts"]
    assert counts["disconnects"] == 3 and counts["reconnects"] == 3, counts
    assert counts["connected"] == 6  # each VM twice
    assert b"VM(s) reconnected; 3 of 3 connected" in notes.read_bytes()
