"""Flags of console log history and the HTTP listener (vspcd/service/flags.py, docs/operations.md
§6): values, defaults, and the errors of combinations that make no sense."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vspc.common.convert import address_port as parse_http
from vspc.common.convert import size as parse_size
from vspc.vspcd.history.consolelog import LogSettings
from vspc.vspcd.history.naming import LogNaming
from vspc.vspcd.service.config import parse_args
from vspc.vspcd.service.settings import log_settings


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("4096", 4096),
        ("64K", 65536),
        ("64k", 65536),
        ("10M", 10 << 20),
        ("1GiB", 1 << 30),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "-1", "1T", "1.5M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("8088", ("127.0.0.1", 8088)),
        ("0.0.0.0:8088", ("0.0.0.0", 8088)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_http_addresses_default_to_loopback(text: str, address: tuple[str, int]) -> None:
    assert parse_http(text) == address


@pytest.mark.parametrize("text", ["", "host:", "1:99999", ":80", "a b:80"])
def test_bad_http_addresses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_http(text)


def test_defaults_and_settings(tmp_path: Path) -> None:
    config = parse_args(["--log-dir", str(tmp_path)], {})
    assert log_settings(config) == LogSettings(tmp_path)
    assert config.http is None and config.http_console_log is False
    config = parse_args(
        ["--log-dir", str(tmp_path), "--log-name", "uuid", "--log-timestamps", "--log-events"]
        + ["--log-flush", "0", "--log-max-size", "1M", "--log-keep", "3", "--log-compress"]
        + ["--http", "8088", "--http-console-log"],
        {},
    )
    assert log_settings(config) == LogSettings(
        tmp_path,
        flush_interval=0.0,
        naming=LogNaming.UUID,
        timestamps=True,
        events=True,
        max_size=1 << 20,
        keep=3,
        compress=True,
    )
    assert config.http == ("127.0.0.1", 8088) and config.http_console_log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-timestamps"], "--log-timestamps: only with --log-dir"),
        (["--log-flush", "0", "--log-keep", "2"], "--log-flush, --log-keep: only with --log-dir"),
        (["--log-dir", "L", "--log-compress"], "--log-compress needs --log-max-size"),
        (["--http-console-log", "--log-dir", "L"], "--http-console-log needs --http"),
        (["--log-dir", "L", "--log-flush", "-1"], "between 0 and 3600"),
        (["--log-dir", "L", "--log-name", "mac"], "invalid choice"),
    ],
)
def test_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path / "L") if a == "L" else a for a in argv]
    with pytest.raises(SystemExit) as caught:
        parse_args(argv, {})
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
