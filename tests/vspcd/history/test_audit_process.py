"""The audit log of a real `python -m vspc.vspcd` process (docs/security.md "Audit
trail", docs/operations.md "Audit log"): a real SIGHUP reopens the file logrotate moved
(and the reload it triggers is itself recorded, `peer` `SIGHUP`), and
`--audit-max-size`/`--audit-keep` keep exactly that many rotated generations.

Records are produced over the admin socket with requests the daemon refuses (a `clear`
of a console that does not exist is always recorded as `denied`), so no VM is needed.
Waits poll the file with a deadline, never sleep a fixed time.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 10.0
BASE = ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "--no-vm-ports"]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def request(admin: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """One request on its own admin connection (no error streak builds up)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(str(admin))
        sock.sendall(json.dumps(obj).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def denied_clear(admin: Path, name: str) -> None:
    reply = request(admin, {"cmd": "clear", "id": 1, "vm": name})
    assert reply["error"]["code"] == "vm_not_found", reply


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vspc-audit-"))  # short: a Unix socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def vspcd(directory: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        admin = directory / "admin.sock"
        child = subprocess.Popen(
            [sys.executable, "-m", "vspc.vspcd", *BASE, "--admin-socket", str(admin), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(child)
        wait_for(lambda: admin.exists() or child.poll() is not None, "the admin socket")
        assert child.poll() is None, child.communicate()[1]
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()


def test_sighup_reopens_the_audit_log_after_a_rename(
    directory: Path, vspcd: Callable[..., subprocess.Popen[str]]
) -> None:
    admin = directory / "admin.sock"
    path = directory / "audit.log"
    child = vspcd("--audit-log", str(path))
    assert (path.stat().st_mode & 0o777) == 0o600  # created private
    denied_clear(admin, "before")
    wait_for(lambda: [r["console"] for r in records(path)] == ["before"], "the first record")
    first = records(path)[0]
    assert (first["action"], first["result"], first["peer"]) == ("clear", "denied", "unix")
    assert first["key"] == "" and first["reason"].startswith("vm_not_found: ")

    moved = directory / "audit.log.1"
    path.rename(moved)  # logrotate's move; vspcd still holds the old file open
    child.send_signal(signal.SIGHUP)
    # The reload SIGHUP runs is recorded after the reopen, so it is in the new file.
    wait_for(lambda: any(r["action"] == "reload" for r in records(path)), "the reload record")
    reload = next(r for r in records(path) if r["action"] == "reload")
    assert reload["peer"] == "SIGHUP" and reload["uid"] is None and reload["result"] == "ok"
    denied_clear(admin, "after")
    wait_for(lambda: any(r.get("console") == "after" for r in records(path)), "a new record")
    assert [r["console"] for r in records(moved)] == ["before"]  # nothing more went there


def test_rotation_keeps_audit_keep_generations(
    directory: Path, vspcd: Callable[..., subprocess.Popen[str]]
) -> None:
    admin = directory / "admin.sock"
    path = directory / "audit.log"
    vspcd("--audit-log", str(path), "--audit-max-size", "1K", "--audit-keep", "2")
    total = 40  # about 200 bytes each: several rotations of a 1 KiB file
    for n in range(total):
        denied_clear(admin, f"vm{n:03d}")

    wait_for(lambda: any(r["console"] == f"vm{total - 1:03d}" for r in records(path)), "the last")
    logs = sorted(p.name for p in directory.glob("audit.log*"))
    assert len(logs) == 3 and logs[0] == "audit.log", logs  # the live file and 2 generations
    for p in directory.glob("audit.log*"):
        assert p.stat().st_size <= 1024, p
    # The oldest records were dropped with the generations beyond --audit-keep; what
    # is kept is the newest, without gaps, oldest in the lowest-numbered generation.
    rotated = sorted(directory.glob("audit.log.*"), key=lambda p: int(p.suffix[1:]))
    kept = [r["console"] for p in [*rotated, path] for r in records(p)]
    assert kept == [f"vm{n:03d}" for n in range(total - len(kept), total)]
    assert 0 < len(kept) < total
