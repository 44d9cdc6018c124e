"""vspcd/service/main.py: exit codes, logging targets, pidfile, --daemon, signals.

Process-level behaviour runs in subprocesses.  Most of them substitute a stand-in
`vspc.vspcd.service.run` that keeps serve()'s contract (bind the proxy port, install
SIGTERM/SIGINT handlers, call `ready`, return after a signal), so __main__'s plumbing
is tested on its own; one test runs the real server when it is importable.
Everything binds 127.0.0.1 port 0; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vspc.vspcd.service.config import build_parser, parse_args
from vspc.vspcd.service.main import _absolute_paths, configure_logging, new_event_loop

DEADLINE = 10.0

# serve() stand-in: writes "<proxy port> <selector class>" to $FAKE_MARKER once it is
# listening, or raises OSError when $FAKE_FAIL is set.
FAKE_SERVER = """
import asyncio, os, signal, sys, types
from pathlib import Path

async def serve(config, *, ready=None, **_later):  # reload=, notifier=
    from vspc.vspcd.net.listeners import start_proxy_listener
    if os.environ.get("FAKE_FAIL"):
        raise OSError(98, "Address already in use")
    listener = await start_proxy_listener(
        config.proxy_iface, config.proxy_port, None, asyncio.Protocol)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    selector = type(loop._selector).__name__
    marker = Path(os.environ["FAKE_MARKER"])
    # Write then rename, so the test never reads a created-but-empty marker.
    marker.with_suffix(".tmp").write_text(f"{listener.port} {selector}")
    marker.with_suffix(".tmp").rename(marker)
    if ready is not None:
        ready(object())
    await stop.wait()
    listener.close()

module = types.ModuleType("vspc.vspcd.service.run")
module.serve = serve
sys.modules["vspc.vspcd.service.run"] = module
from vspc.vspcd.service.main import main
sys.exit(main(sys.argv[1:]))
"""

BASE = ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "--no-vm-ports"]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def vspcd(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vspc.vspcd", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        **kw,  # type: ignore[call-overload]
    )


def fake_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAKE_FAIL", "JOURNAL_STREAM")}
    env["FAKE_MARKER"] = str(tmp_path / "marker")
    env.update(extra)
    return env


def start_fake(tmp_path: Path, *argv: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER, *BASE, "--admin-socket", str(tmp_path / "s"), *argv],
        env=fake_env(tmp_path, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: nobody may reap it here)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# -- usage -----------------------------------------------------------------------------


def test_unknown_flag_exits_2_with_message() -> None:
    result = vspcd("--bogus")
    assert result.returncode == 2
    assert "vspcd: error: unrecognized arguments: --bogus" in result.stderr


def test_bad_value_exits_2_with_message() -> None:
    result = vspcd("--proxy-port", "-1")
    assert result.returncode == 2
    assert result.stderr == "vspcd: --proxy-port: must be between 0 and 65535, got -1\n"


def test_bad_value_is_one_line_without_usage() -> None:
    result = vspcd("--log-dir", "/tmp", "--log-max-size", "12Q")
    assert result.returncode == 2
    assert result.stderr == "vspcd: --log-max-size: not a size: '12Q' (e.g. 4096, 64K, 10M)\n"


def test_bad_file_is_one_line_per_key(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("porrt = 1\nscrollback = 'lots'\n")
    result = vspcd("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"vspcd: {path}: key 'porrt': unknown key (keys are the long options with '_' for "
        "'-'; see vspcd --help)",
        f"vspcd: {path}: key 'scrollback': not an integer: 'lots'",
    ]


def test_check_config_prints_each_error_as_one_line(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("client_limt = 2\nlog_keep = -1\n")
    result = vspcd("--check-config", "--config", str(path))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "usage" not in result.stderr
    assert lines[0].startswith(f"vspcd: {path}: key 'client_limt': unknown key")
    assert lines[1] == f"vspcd: {path}: key 'log_keep': must be between 0 and 1000, got -1"
    # Even a malformed command line is one line under --check-config (ExecStartPre).
    result = vspcd("--check-config", "--bogus")
    assert (result.returncode, result.stderr) == (2, "vspcd: unrecognized arguments: --bogus\n")
    path.write_text("client_limit = 2\n")
    result = vspcd("--check-config", "--config", str(path))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"vspcd: {path}: configuration OK\n"


def test_bad_environment_exits_2(tmp_path: Path) -> None:
    result = vspcd(env={**os.environ, "VM_CLIENT_LIMIT": "many"})
    assert result.returncode == 2
    assert "VM_CLIENT_LIMIT='many'" in result.stderr


def test_help_lists_every_option() -> None:
    result = vspcd("--help")
    assert result.returncode == 0
    brief = [
        *("--proxy-port", "--proxy-iface", "-r", "--port-range-start", "-i", "--interface"),
        *("--no-vm-ports", "--vm-expire-time", "--ssl", "--cert", "--key", "--admin-socket"),
        *("--admin-socket-mode", "--admin-socket-group", "--admin-port", "--admin-iface"),
        *("--readonly-group", "--stdout", "--no-fork", "--daemon", "--pidfile", "-d"),
        *("--debug", "--client-limit", "--multi-console", "--vmotion-abandon"),
        *("--client-queue", "--hold-limit", "--scrollback"),
    ]
    declared = [o for a in build_parser()._actions for o in a.option_strings]
    for option in brief + declared:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), option
    assert "SUPPORT_MULTI_CONSOLE" in result.stdout and "VM_CLIENT_LIMIT" in result.stdout


def test_live_pidfile_refuses_to_start(tmp_path: Path) -> None:
    pidfile = tmp_path / "vspcd.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process: alive
    result = vspcd(*BASE, "--admin-socket", str(tmp_path / "s"), "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert pidfile.read_text() == f"{os.getpid()}\n"


# -- in process ------------------------------------------------------------------------


def test_event_loop_is_epoll() -> None:
    loop = new_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, selectors.EpollSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("argv", "stream", "level"),
    [
        ([], "stderr", logging.INFO),
        (["--stdout"], "stdout", logging.INFO),
        (["-d"], "stderr", logging.DEBUG),
    ],
)
def test_configure_logging(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stream: str, level: int
) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logger = logging.getLogger("test_main.private")
    logger.propagate = False
    try:
        configure_logging(parse_args([*argv, "--admin-socket", "/x"], {}), logger)
        configure_logging(parse_args([*argv, "--admin-socket", "/x"], {}), logger)  # replaces
        assert len(logger.handlers) == 1 and logger.level == level
        logging.getLogger("test_main.private.child").info("hello %s", "world")
        written = (out if stream == "stdout" else err).getvalue()
        assert "INFO    test_main.private.child: hello world" in written
        assert (err if stream == "stdout" else out).getvalue() == ""
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


def test_syslog_target_for_daemon() -> None:
    logger = logging.getLogger("test_main.syslog")
    logger.propagate = False
    try:
        handler = configure_logging(parse_args(["--daemon", "--admin-socket", "/x"], {}), logger)
        assert isinstance(handler, logging.handlers.SysLogHandler)
    finally:
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()


def test_daemon_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_args(["--pidfile", "p.pid", "--admin-socket", "a.sock"], {})
    pinned = _absolute_paths(config)
    assert pinned.pidfile == tmp_path / "p.pid"
    assert pinned.admin_socket == tmp_path / "a.sock"
    assert pinned.cert is None


# -- foreground, with the serve() stand-in -----------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_with_status_0(tmp_path: Path, signum: int) -> None:
    pidfile = tmp_path / "vspcd.pid"
    marker = tmp_path / "marker"
    child = start_fake(tmp_path, "--pidfile", str(pidfile))
    try:
        wait_for(marker.exists, "the daemon to listen")
        port, selector = marker.read_text().split()
        assert selector == "EpollSelector"
        assert int(port) > 0
        assert pidfile.read_text() == f"{child.pid}\n"
        child.send_signal(signum)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert "vspcd stopped" in err
    assert not pidfile.exists()


def test_startup_failure_exits_1(tmp_path: Path) -> None:
    pidfile = tmp_path / "vspcd.pid"
    child = start_fake(tmp_path, "--pidfile", str(pidfile), FAKE_FAIL="1")
    _, err = child.communicate(timeout=DEADLINE)
    assert child.returncode == 1
    assert "cannot start: [Errno 98] Address already in use" in err
    assert not pidfile.exists()


def test_stdout_flag_moves_logs_to_stdout(tmp_path: Path) -> None:
    child = start_fake(tmp_path, "--stdout")
    try:
        wait_for((tmp_path / "marker").exists, "the daemon to listen")
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0
    assert "vspcd stopped" in out and "vspcd stopped" not in err


# -- --daemon, with the serve() stand-in ----------------------------------------------


def run_daemon(tmp_path: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FAKE_SERVER, *BASE, "--daemon", *argv],
        env=fake_env(tmp_path, **extra),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_daemon_detaches_after_ready_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    # relative paths: the daemon chdirs to "/" and must have pinned them first
    launcher = run_daemon(tmp_path, "--pidfile", "vspcd.pid", "--admin-socket", "s")
    assert launcher.returncode == 0, launcher.stderr
    pidfile = tmp_path / "vspcd.pid"
    assert (tmp_path / "marker").exists()  # the launcher returned only once it was serving
    pid = int(pidfile.read_text())
    assert pid != os.getpid() and not gone(pid)
    second = run_daemon(tmp_path, "--pidfile", "vspcd.pid", "--admin-socket", "s2")
    assert second.returncode == 1 and "already running" in second.stderr
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), "the pidfile to be removed")
    wait_for(lambda: gone(pid), "the daemon to exit")


def test_daemon_startup_failure_fails_the_launcher(tmp_path: Path) -> None:
    launcher = run_daemon(tmp_path, "--pidfile", "vspcd.pid", "--admin-socket", "s", FAKE_FAIL="1")
    assert launcher.returncode == 1
    assert "daemon failed to start" in launcher.stderr
    wait_for(lambda: not (tmp_path / "vspcd.pid").exists(), "the pidfile to be removed")


# -- the real server ---------------------------------------------------------------------


def _server_importable() -> bool:
    try:
        importlib.import_module("vspc.vspcd.service.server")
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _server_importable(), reason="vspc.vspcd.service.server not importable yet")
def test_real_server_starts_and_stops_on_sigterm(tmp_path: Path) -> None:
    admin = tmp_path / "admin.sock"
    child = subprocess.Popen(
        [sys.executable, "-m", "vspc.vspcd", *BASE, "--admin-socket", str(admin)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(admin.exists, "the admin socket")
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert "listening for ESXi on 127.0.0.1:" in err
    assert not admin.exists()  # removed on the way out


@pytest.mark.parametrize(
    ("flags", "what"),
    [
        (["--proxy-port", "{port}"], "the ESXi proxy port"),
        (["-a", "{port}", "--admin-iface", "127.0.0.1"], "the admin port"),
        (["--http", "127.0.0.1:{port}"], "the HTTP port"),
    ],
    ids=["proxy", "admin", "http"],
)
def test_a_busy_address_is_named_in_the_start_error(
    tmp_path: Path, flags: list[str], what: str
) -> None:
    with socket.socket() as holder:  # a port the kernel gave us, held for the test
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        argv = [f.format(port=port) for f in flags]
        result = vspcd(*BASE, "--admin-socket", str(tmp_path / "s"), *argv)
    assert result.returncode == 1, result.stderr
    expected = f"cannot start: cannot bind 127.0.0.1:{port}: address already in use ({what})"
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_admin_socket_path_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "admin.sock"  # its directory is a file
    result = vspcd(*BASE, "--admin-socket", str(path))
    assert result.returncode == 1, result.stderr
    assert re.search(rf"cannot start: cannot bind {re.escape(str(path))}: .+ \(the admin socket\)",
                     result.stderr), result.stderr  # fmt: skip
    assert "Traceback" not in result.stderr


def _ephemeral_range() -> tuple[int, int] | None:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def _limit_files() -> None:  # in the child: 1024 descriptors, so at most 1024 console ports
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.mark.parametrize("distance", [2000, 500])
def test_ephemeral_warning_counts_only_the_ports_vspcd_can_use(
    tmp_path: Path, distance: int
) -> None:
    """`-r` below the ephemeral range warns only if start + fd limit reaches into it."""
    span = _ephemeral_range()
    if span is None or span[0] - distance < 1024:
        pytest.skip("no usable /proc/sys/net/ipv4/ip_local_port_range here")
    start = span[0] - distance
    admin = tmp_path / "admin.sock"
    child = subprocess.Popen(
        [sys.executable, "-m", "vspc.vspcd", "--proxy-iface", "127.0.0.1", "--proxy-port", "0",
         "--admin-socket", str(admin), "-i", "127.0.0.1", "-r", str(start)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_files,
    )  # fmt: skip
    try:
        wait_for(admin.exists, "the admin socket")
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    warned = "overlap the kernel's ephemeral port range" in err
    assert warned == (distance < 1024), err
    if warned:
        assert f"telnet ports {start}-{start + 1023} " in err
