"""The flag table (vspcd/service/flags.py) against everything made from it: `Config`,
argparse, the TOML keys, the SIGHUP live keys, and docs/operations.md §3."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from vspc.vspcd.service.config import Config, build_parser, file_keys, parse_args
from vspc.vspcd.service.configdata import FILE_ONLY
from vspc.vspcd.service.flags import FLAGS, Flag, Kind, by_dest, markdown_table
from vspc.vspcd.service.reload import _APPLY, LIVE

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"
BEGIN = "<!-- generated from vspcd/service/flags.py"
END = "<!-- end of generated table -->"


def test_dests_and_spellings_are_unique() -> None:
    assert len(by_dest()) == len(FLAGS)
    spellings = [option for flag in FLAGS for option in flag.options]
    assert len(spellings) == len(set(spellings))
    keys = [flag.key for flag in FLAGS if flag.key is not None]
    assert len(keys) == len(set(keys))


def test_every_config_field_is_a_flag() -> None:
    dests = set(by_dest())
    for field in dataclasses.fields(Config):
        assert field.name in dests or field.name in FILE_ONLY, f"Config.{field.name} has no flag"


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.kind is not Kind.VERSION], ids=str)
def test_every_flag_is_a_config_field_or_compat_only(flag: Flag) -> None:
    names = {field.name for field in dataclasses.fields(Config)}
    assert flag.dest in names or flag.compat, flag.dest


def test_table_defaults_are_the_config_defaults() -> None:
    # A default of None in the table means "computed" (environment, log settings
    # given only with --log-dir); everything else must agree with Config.
    config = parse_args([], {}, euid=1000, default_config=Path("/nonexistent"))
    for flag in FLAGS:
        if flag.default is None or not hasattr(config, flag.dest):
            continue
        value = flag.default
        if isinstance(value, str) and flag.convert is not None:
            value = flag.convert(value)  # as argparse converts a string default
        assert getattr(Config(), flag.dest) == value, flag.dest
        assert getattr(config, flag.dest) == value, flag.dest


def test_parser_has_every_flag_and_help() -> None:
    actions = {
        option: action for action in build_parser()._actions for option in action.option_strings
    }
    for flag in FLAGS:
        for option in flag.options:
            assert actions[option].dest == flag.dest, option
        assert flag.help and flag.doc, flag.dest


def test_file_keys_are_the_table_keys() -> None:
    assert set(file_keys()) == {flag.key for flag in FLAGS if flag.key is not None}
    assert "config" not in file_keys() and "check_config" not in file_keys()


def test_live_keys_come_from_the_table() -> None:
    assert set(LIVE) == {flag.dest for flag in FLAGS if flag.live} | FILE_ONLY
    assert set(_APPLY) == set(LIVE), "an apply function for a key the table says restarts"


def test_operations_md_table_is_generated_from_the_flags() -> None:
    text = OPERATIONS.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    assert text[start : text.index(END)] == markdown_table(), (
        "docs/operations.md §3 differs from the flag table; regenerate it with "
        "python -m vspc.vspcd.service.flags --markdown"
    )


def test_markdown_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vspc.vspcd.service.flags", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == markdown_table()
    assert "| `-p`, `--proxy-port PORT` | 13370 |" in result.stdout
    assert "| `--multi-console` / `--no-multi-console` | off |" in result.stdout
