"""vspcd/service/cli.py: every flag, environment precedence, and errors (exit 2).

A bad value or combination is one line, ``vspcd: REASON``; argparse's usage text comes
only with a malformed command line (an unknown option, a missing value).

No sockets; certificates for the --ssl checks come from the `openssl` CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vspc.vspcd.service.config import (
    Config,
    LogTarget,
    build_parser,
    default_admin_socket,
    parse_args,
)

ENV: dict[str, str] = {}


def parse(*argv: str, environ: dict[str, str] | None = None, euid: int = 1000) -> Config:
    return parse_args(list(argv), ENV if environ is None else environ, euid=euid)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str, **kw: Any) -> str:
    """The last line of a malformed command line's message (after the usage text)."""
    with pytest.raises(SystemExit) as exc:
        parse(*argv, **kw)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vspcd")
    last = err.splitlines()[-1]
    assert last.startswith("vspcd: error: ")
    return last


def config_error(capsys: pytest.CaptureFixture[str], *argv: str, **kw: Any) -> str:
    """The one line a bad value or combination prints (no usage text)."""
    with pytest.raises(SystemExit) as exc:
        parse(*argv, **kw)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vspcd: ") and not lines[0].startswith("vspcd: error:")
    return lines[0]


def error_line(capsys: pytest.CaptureFixture[str], *argv: str, **kw: Any) -> str:
    """Either kind: usage errors for "unrecognized"/"expected one argument"."""
    malformed = ("--bogus", "extra")
    if any(word in malformed for word in argv) or argv[-1:] == ("--backend-args",):
        return usage_error(capsys, *argv, **kw)
    return config_error(capsys, *argv, **kw)


def test_defaults_match_vspc_py() -> None:
    config = parse()
    assert config == Config(admin_socket=Path("/tmp/vspcd-1000/vspcd.sock"))
    assert (config.proxy_iface, config.proxy_port) == ("0.0.0.0", 13370)
    assert (config.vm_iface, config.port_range_start, config.vm_ports) == ("127.0.0.1", 50000, True)
    assert config.vm_expire_time == 86400
    assert config.admin_port is None and config.admin_socket_mode == 0o660
    assert (config.client_limit, config.multi_console, config.vmotion_abandon) == (0, False, 60)
    assert (config.client_queue, config.hold_limit, config.scrollback) == (1 << 20, 1 << 20, 65536)
    assert config.log_target is LogTarget.STDERR


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--proxy-port", "2000"], "proxy_port", 2000),
        (["-p", "0"], "proxy_port", 0),
        (["--proxy-iface", "::1"], "proxy_iface", "::1"),
        (["-r", "40000"], "port_range_start", 40000),
        (["--port-range-start", "65535"], "port_range_start", 65535),
        (["-i", "0.0.0.0"], "vm_iface", "0.0.0.0"),
        (["--interface", "10.1.2.3"], "vm_iface", "10.1.2.3"),
        (["--no-vm-ports"], "vm_ports", False),
        (["--vm-expire-time", "30"], "vm_expire_time", 30.0),
        (["--vm-expire-time", "0"], "vm_expire_time", 0.0),
        (["--admin-socket", "/x/y.sock"], "admin_socket", Path("/x/y.sock")),
        (["--admin-socket-mode", "0600"], "admin_socket_mode", 0o600),
        (["--admin-socket-mode", "660"], "admin_socket_mode", 0o660),
        (["--admin-socket-group", "root"], "admin_socket_group", "root"),
        (["--admin-socket-group", "0"], "admin_socket_group", "0"),
        (["--admin-port", "13371"], "admin_port", 13371),
        (["-a", "0"], "admin_port", 0),
        (["--admin-iface", "::1"], "admin_iface", "::1"),
        (["--readonly-group", "root"], "readonly_group", "root"),
        (["--stdout"], "log_stdout", True),
        (["--daemon"], "daemon", True),
        (["--pidfile", "/run/vspcd.pid"], "pidfile", Path("/run/vspcd.pid")),
        (["-d"], "debug", True),
        (["--debug"], "debug", True),
        (["--client-limit", "3"], "client_limit", 3),
        (["--multi-console"], "multi_console", True),
        (["--vmotion-abandon", "90"], "vmotion_abandon", 90.0),
        (["--vmotion-abandon", "0.5"], "vmotion_abandon", 0.5),
        (["--client-queue", "4096"], "client_queue", 4096),
        (["--hold-limit", "0"], "hold_limit", 0),
        (["--scrollback", "1000"], "scrollback", 1000),
        (["--cert", "/nonexistent.pem"], "cert", Path("/nonexistent.pem")),  # unused w/o --ssl
    ],
)
def test_each_flag_sets_its_field(argv: list[str], field: str, value: object) -> None:
    config = parse(*argv)
    assert getattr(config, field) == value
    # ... and nothing else moves
    assert {f: getattr(config, f) for f in Config.__slots__ if f != field} == {
        f: getattr(parse(), f) for f in Config.__slots__ if f != field
    }


def test_no_fork_is_accepted_and_changes_nothing() -> None:
    assert parse("--no-fork") == parse()


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        parse().proxy_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        ([], LogTarget.STDERR),
        (["--stdout"], LogTarget.STDOUT),
        (["--daemon", "--stdout"], LogTarget.SYSLOG),
    ],
)
def test_log_target(argv: list[str], target: LogTarget) -> None:
    assert parse(*argv).log_target is target


@pytest.mark.parametrize(
    ("euid", "environ", "expected"),
    [
        (0, {"XDG_RUNTIME_DIR": "/run/user/0"}, "/run/vspcd/vspcd.sock"),
        (1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/vspcd.sock"),
        (1000, {}, "/tmp/vspcd-1000/vspcd.sock"),
        (1000, {"XDG_RUNTIME_DIR": ""}, "/tmp/vspcd-1000/vspcd.sock"),
    ],
)
def test_admin_socket_default(euid: int, environ: dict[str, str], expected: str) -> None:
    assert default_admin_socket(environ, euid) == Path(expected)
    assert parse(environ=environ, euid=euid).admin_socket == Path(expected)


@pytest.mark.parametrize(
    ("environ", "argv", "multi", "limit"),
    [
        ({"SUPPORT_MULTI_CONSOLE": "true"}, [], True, 0),
        ({"SUPPORT_MULTI_CONSOLE": "TRUE"}, [], True, 0),
        ({"SUPPORT_MULTI_CONSOLE": "false"}, [], False, 0),
        ({"SUPPORT_MULTI_CONSOLE": ""}, [], False, 0),
        ({"SUPPORT_MULTI_CONSOLE": "true"}, ["--no-multi-console"], False, 0),
        ({"SUPPORT_MULTI_CONSOLE": "false"}, ["--multi-console"], True, 0),
        ({"VM_CLIENT_LIMIT": "5"}, [], False, 5),
        ({"VM_CLIENT_LIMIT": "0"}, [], False, 0),
        ({"VM_CLIENT_LIMIT": ""}, [], False, 0),
        ({"VM_CLIENT_LIMIT": "5"}, ["--client-limit", "2"], False, 2),
        ({"VM_CLIENT_LIMIT": "5"}, ["--client-limit", "0"], False, 0),
        # a flag wins outright: the overridden variable is not even looked at
        ({"VM_CLIENT_LIMIT": "lots"}, ["--client-limit", "1"], False, 1),
        ({"SUPPORT_MULTI_CONSOLE": "maybe"}, ["--multi-console"], True, 0),
    ],
)
def test_environment_and_flag_precedence(
    environ: dict[str, str], argv: list[str], multi: bool, limit: int
) -> None:
    config = parse(*argv, environ=environ)
    assert (config.multi_console, config.client_limit) == (multi, limit)


def test_environment_is_read_only_from_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_CLIENT_LIMIT", "7")
    monkeypatch.setenv("SUPPORT_MULTI_CONSOLE", "true")
    config = parse()
    assert (config.client_limit, config.multi_console) == (0, False)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
        (["extra"], {}, "unrecognized arguments: extra"),
        (["--proxy-port", "-1"], {}, "--proxy-port: must be between 0 and 65535"),
        (["--proxy-port", "65536"], {}, "--proxy-port: must be between 0 and 65535"),
        (["--proxy-port", "x"], {}, "--proxy-port: not an integer"),
        (["-r", "0"], {}, "--port-range-start: must be between 1 and 65535"),
        (["-r", "70000"], {}, "--port-range-start: must be between 1 and 65535"),
        (["--admin-port", "-5"], {}, "--admin-port: must be between 0 and 65535"),
        (["--admin-socket-mode", "0668"], {}, "not an octal file mode: '0668'"),
        (["--admin-socket-mode", "rw"], {}, "not an octal file mode"),
        (["--admin-socket-mode", "7777"], {}, "out of range"),
        (["--admin-socket-group", "no-such-group-xyz"], {}, "no such group"),
        (["--readonly-group", "no-such-group-xyz"], {}, "no such group"),
        (["--vm-expire-time", "-1"], {}, "--vm-expire-time: must be >= 0"),
        (["--vm-expire-time", "nan"], {}, "not a finite number"),
        (["--vmotion-abandon", "0"], {}, "--vmotion-abandon: must be > 0"),
        (["--client-limit", "-1"], {}, "--client-limit: must be >= 0"),
        (["--client-queue", "0"], {}, "--client-queue: must be >= 1"),
        (["--hold-limit", "-1"], {}, "--hold-limit: must be >= 0"),
        (["--scrollback", "1k"], {}, "--scrollback: not an integer"),
        (["--proxy-iface", ""], {}, "must not be empty"),
        (["--ssl"], {}, "--ssl requires --cert FILE"),
        (
            ["--ssl", "--cert", "/nonexistent/cert.pem"],
            {},
            "--cert /nonexistent/cert.pem: cannot read",
        ),
        (
            [],
            {"SUPPORT_MULTI_CONSOLE": "maybe"},
            "SUPPORT_MULTI_CONSOLE='maybe': expected true or false",
        ),
        ([], {"VM_CLIENT_LIMIT": "many"}, "VM_CLIENT_LIMIT='many': expected an integer >= 0"),
        ([], {"VM_CLIENT_LIMIT": "-2"}, "VM_CLIENT_LIMIT='-2': expected an integer >= 0"),
    ],
)
def test_bad_values_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], message: str
) -> None:
    assert message in error_line(capsys, *argv, environ=environ)


def test_pidfile_that_is_a_directory_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert "is a directory" in config_error(capsys, "--pidfile", str(tmp_path))


def test_ssl_with_cert_and_key(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    config = parse("--ssl", "--cert", str(cert), "--key", str(key))
    assert (config.ssl, config.cert, config.key) == (True, cert, key)


def test_ssl_with_combined_pem(cert_pair: tuple[Path, Path], tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(cert_pair[0].read_bytes() + cert_pair[1].read_bytes())
    assert parse("--ssl", "--cert", str(both)).key is None


def test_ssl_with_missing_key_file(
    capsys: pytest.CaptureFixture[str], cert_pair: tuple[Path, Path]
) -> None:
    last = config_error(capsys, "--ssl", "--cert", str(cert_pair[0]), "--key", "/nonexistent/k")
    assert "--key /nonexistent/k: cannot read" in last


def test_ssl_with_cert_but_no_key_anywhere(
    capsys: pytest.CaptureFixture[str], cert_pair: tuple[Path, Path]
) -> None:
    last = config_error(capsys, "--ssl", "--cert", str(cert_pair[0]))
    assert "cannot load certificate and key" in last


def test_ssl_with_garbage_cert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert "cannot load certificate and key" in config_error(capsys, "--ssl", "--cert", str(junk))


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in out
        assert action.help, f"{action.option_strings} has no help text"


# -- vSPC.py's backends: --persist-file, --log-dir, --context, --backend(-args) -----------


def test_backend_defaults_are_off() -> None:
    config = parse()
    assert (config.persist_file, config.log_dir, config.context) == (None, None, 0)
    assert (config.log_prefix, config.log_mode) == ("vmlog", 0o600)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--persist-file", "/var/lib/vspcd/c.db"], {"persist_file": Path("/var/lib/vspcd/c.db")}),
        (["-f", "c.db"], {"persist_file": Path("c.db")}),
        (["--log-dir", "/var/log/consoles"], {"log_dir": Path("/var/log/consoles")}),
        (
            ["--log-dir", "/l", "--log-prefix", "con", "--log-mode", "640"],
            {"log_dir": Path("/l"), "log_prefix": "con", "log_mode": 0o640},
        ),
        (["--log-dir", "/l", "--log-prefix", ""], {"log_dir": Path("/l"), "log_prefix": ""}),
        (["--context", "4096"], {"context": 4096}),
        (["--context", "100", "--scrollback", "100"], {"context": 100, "scrollback": 100}),
    ],
)
def test_backend_flags_set_their_fields(argv: list[str], expected: dict[str, object]) -> None:
    config, default = parse(*argv), parse()
    for field in Config.__slots__:
        assert getattr(config, field) == expected.get(field, getattr(default, field)), field


@pytest.mark.parametrize(
    ("vspc_py", "native"),
    [
        (["--backend", "File", "--backend-args", "-f /s/c.db"], ["--persist-file", "/s/c.db"]),
        (["--backend", "FILE", "--backend-args=--file /s/c.db"], ["-f", "/s/c.db"]),
        (["--backend", "file", "--backend-args", "-f '/a b/c.db'"], ["-f", "/a b/c.db"]),
        (["--backend", "Logging"], ["--log-dir", "/var/log/consoles"]),
        (
            ["--backend", "logging", "--backend-args", "-l /l -p con -m 0640 --context 9"],
            ["--log-dir", "/l", "--log-prefix", "con", "--log-mode", "0640", "--context", "9"],
        ),
        (
            ["--backend", "Logging", "--backend-args", "--logdir=/l --prefix=p --mode=600"],
            ["--log-dir", "/l", "--log-prefix", "p", "--log-mode", "600"],
        ),
        (["--backend", "Memory"], []),
        (["--backend", "memory", "--backend-args", " "], []),
        # the same value on both spellings is no conflict
        (
            ["--backend", "File", "--backend-args", "-f /c.db", "--persist-file", "/c.db"],
            ["--persist-file", "/c.db"],
        ),
        # native flags combine with the other backend
        (
            ["--backend", "File", "--backend-args", "-f /c.db", "--log-dir", "/l"],
            ["--persist-file", "/c.db", "--log-dir", "/l"],
        ),
    ],
)
def test_vspc_py_backend_spellings_mean_the_native_flags(
    vspc_py: list[str], native: list[str]
) -> None:
    assert parse(*vspc_py) == parse(*native)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "Redis"], "--backend 'Redis': unknown backend (choose Memory, File or"),
        (["--backend", "File"], "the following arguments are required: -f/--file"),
        (["--backend", "File", "--backend-args", "-f"], "argument -f/--file: expected one"),
        (["--backend", "File", "--backend-args", "-f a -f"], "expected one argument"),
        (["--backend", "File", "--backend-args", "-f a -l /x"], "unrecognized arguments: -l /x"),
        (["--backend", "File", "--backend-args", "-f 'x"], "No closing quotation"),
        (["--backend", "Memory", "--backend-args", "-f x"], "takes no --backend-args"),
        (["--backend-args", "-f x"], "--backend-args needs --backend File or --backend Logging"),
        (["--backend", "Logging", "--backend-args", "-m 0699"], "not an octal file mode"),
        (["--backend", "Logging", "--backend-args", "--context -1"], "must be >= 0"),
        (["--backend", "Logging", "--backend-args", "-p a/b"], "must not contain '/'"),
        (
            ["--persist-file", "/a.db", "--backend", "File", "--backend-args", "-f /b.db"],
            "--persist-file /a.db conflicts with --backend-args '-f /b.db'",
        ),
        (
            ["--log-dir", "/a", "--backend", "Logging", "--backend-args", "-l /b"],
            "--log-dir /a conflicts with --backend-args '-l /b'",
        ),
        (["--log-prefix", "x"], "--log-prefix and --log-mode need --log-dir"),
        (["--log-mode", "600"], "--log-prefix and --log-mode need --log-dir"),
        (["--log-dir", "/l", "--log-prefix", "../x"], "must not contain '/'"),
        (["--log-dir", "/l", "--log-mode", "rw"], "not an octal file mode"),
        (["--context", "-1"], "--context: must be >= 0"),
        (["--context", "70000"], "--context 70000 is more than the 65536 bytes --scrollback"),
        (["--backend-args"], "argument --backend-args: expected one argument"),
    ],
)
def test_bad_backend_settings_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in error_line(capsys, *argv)


def test_persist_file_or_log_dir_of_the_wrong_kind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert "is a directory" in config_error(capsys, "--persist-file", str(tmp_path))
    plain = tmp_path / "plain"
    plain.write_text("")
    assert "not a directory" in config_error(capsys, "--log-dir", str(plain))


def test_backend_paths_are_pinned_before_detaching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vspc.vspcd.service.main import _absolute_paths

    monkeypatch.chdir(tmp_path)
    pinned = _absolute_paths(parse("-f", "c.db", "--log-dir", "logs"))
    assert (pinned.persist_file, pinned.log_dir) == (tmp_path / "c.db", tmp_path / "logs")
