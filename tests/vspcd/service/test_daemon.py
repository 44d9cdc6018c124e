"""vspcd/service/daemon.py: pidfile rules and the ready pipe (the double fork itself is
exercised end to end in test_main.py, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vspc.vspcd.service.daemon import (
    PidfileError,
    ReadyPipe,
    check_pidfile,
    pid_alive,
    read_pidfile,
    remove_pidfile,
    write_pidfile,
)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it (reuse this soon is vanishingly rare)


@pytest.mark.parametrize(
    ("text", "pid"),
    [("1234\n", 1234), ("  77  ", 77), ("", None), ("abc", None), ("0", None), ("-5", None)],
)
def test_read_pidfile(tmp_path: Path, text: str, pid: int | None) -> None:
    path = tmp_path / "vspcd.pid"
    path.write_text(text)
    assert read_pidfile(path) == pid


def test_read_missing_pidfile(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path / "none.pid") is None


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(os.getppid())
    assert not pid_alive(dead_pid())


def test_live_pid_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.pid"
    path.write_text(f"{os.getppid()}\n")  # our parent is certainly alive
    with pytest.raises(PidfileError, match="already running"):
        check_pidfile(path)


@pytest.mark.parametrize("content", ["dead", "garbage", "self", "missing"])
def test_stale_pidfile_is_accepted(tmp_path: Path, content: str) -> None:
    path = tmp_path / "vspcd.pid"
    match content:
        case "dead":
            path.write_text(f"{dead_pid()}\n")
        case "garbage":
            path.write_text("not a pid")
        case "self":  # e.g. pid 1 again after a container restart
            path.write_text(f"{os.getpid()}\n")
    check_pidfile(path)  # does not raise: the start goes on and takes the file over
    write_pidfile(path)
    assert read_pidfile(path) == os.getpid()


def test_write_then_remove(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.pid"
    write_pidfile(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
    remove_pidfile(path)
    assert not path.exists()
    remove_pidfile(path)  # already gone: fine


def test_remove_leaves_someone_elses_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.pid"
    write_pidfile(path, 4242)
    remove_pidfile(path)
    assert read_pidfile(path) == 4242


def test_unwritable_pidfile_raises(tmp_path: Path) -> None:
    with pytest.raises(PidfileError, match="cannot write pidfile"):
        write_pidfile(tmp_path / "missing-dir" / "vspcd.pid")


def test_ready_pipe_reports_once_then_hangs_up() -> None:
    read_fd, write_fd = os.pipe()
    pipe = ReadyPipe(write_fd)
    pipe.ready()
    pipe.ready()
    pipe.close()
    assert os.read(read_fd, 16) == b"R"
    assert os.read(read_fd, 16) == b""  # closed after reporting
    os.close(read_fd)


def test_ready_pipe_close_without_ready_sends_nothing() -> None:
    read_fd, write_fd = os.pipe()
    ReadyPipe(write_fd).close()
    assert os.read(read_fd, 16) == b""
    os.close(read_fd)
    ReadyPipe(None).ready()  # foreground: a no-op
