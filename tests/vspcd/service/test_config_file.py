"""The TOML configuration file, `--check-config` and the reload rules (docs/operations.md §3a).

Keys come from the flag table (vspcd/service/flags.py), so every long option is a key
with no other change.  Every rejected file names the file, the key and the reason, one
line per problem, with exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.vspcd.service.config import (
    Config,
    ConfigError,
    build_parser,
    file_keys,
    parse_args,
    reload_config,
)
from vspc.vspcd.service.main import main
from vspc.vspcd.service.reload import LIVE, Outcome, describe

ENV: dict[str, str] = {}


def load(tmp_path: Path, text: str, *argv: str) -> Config:
    path = tmp_path / "vspcd.toml"
    path.write_text(text)
    return parse_args(["--config", str(path), *argv], ENV, euid=1000)


def test_file_values_become_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        proxy_port = 13371
        client_limit = 4
        interface = "127.0.0.2"
        no_vm_ports = true
        multi_console = true
        admin_socket = "/run/x/admin.sock"
        admin_socket_mode = "0640"
        vmotion_abandon = 90
        debug = true
        """,
    )
    assert config.proxy_port == 13371
    assert config.client_limit == 4
    assert config.vm_iface == "127.0.0.2"
    assert config.vm_ports is False
    assert config.multi_console is True
    assert config.admin_socket == Path("/run/x/admin.sock")
    assert config.admin_socket_mode == 0o640
    assert config.vmotion_abandon == 90.0
    assert config.debug is True
    assert config.config == tmp_path / "vspcd.toml"


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    text = "client_limit = 4\nmulti_console = true\nproxy_port = 13371\n"
    config = load(tmp_path, text, "--client-limit", "2", "--no-multi-console")
    assert (config.client_limit, config.multi_console, config.proxy_port) == (2, False, 13371)


def test_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("client_limit = 4\n")
    config = parse_args(["--config", str(path)], {"VM_CLIENT_LIMIT": "9"}, euid=1000)
    assert config.client_limit == 4
    assert parse_args([], {"VM_CLIENT_LIMIT": "9"}, euid=1000).client_limit == 9


def test_false_switch_keeps_the_default(tmp_path: Path) -> None:
    config = load(tmp_path, "no_vm_ports = false\nssl = false\n")
    assert config.vm_ports is True and config.ssl is False


def test_default_file_is_read_only_if_present(tmp_path: Path) -> None:
    default = tmp_path / "vspcd.toml"
    assert parse_args([], ENV, euid=1000, default_config=default).config is None
    default.write_text("client_limit = 3\n")
    config = parse_args([], ENV, euid=1000, default_config=default)
    assert config.config == default and config.client_limit == 3


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("colour = 3", "key 'colour': unknown key"),
        ("client-limit = 3", "key 'client-limit': unknown key"),
        ("config = '/etc/other.toml'", "key 'config': unknown key"),
        ("client_limit = -1", "key 'client_limit': must be >= 0, got -1"),
        ("client_limit = 'many'", "key 'client_limit': not an integer: 'many'"),
        ("client_limit = true", "key 'client_limit': expected a string or a number, got true"),
        ("client_limit = 2.5", "key 'client_limit': not an integer: '2.5'"),
        ("proxy_port = 70000", "key 'proxy_port': must be between 0 and 65535, got 70000"),
        ("debug = 'yes'", "key 'debug': expected true or false, got 'yes'"),
        ("multi_console = 1", "key 'multi_console': expected true or false, got 1"),
        ("admin_socket_mode = 0o640", "key 'admin_socket_mode': write file modes as a quoted"),
        ("admin_socket_mode = '0999'", "key 'admin_socket_mode': not an octal file mode"),
        ("vmotion_abandon = 0", "key 'vmotion_abandon': must be > 0"),
        ("proxy_iface = ''", "key 'proxy_iface': must not be empty"),
        ("log_prefix = 'a/b'", "key 'log_prefix': must not contain '/'"),
        ("[client_limit]\nx = 1", "key 'client_limit': expected a string or a number, got a table"),
        ("client_limit = ", "not valid TOML"),
        ("user = 'no-such-user-here'", "--user no-such-user-here: no such user"),
    ],
)
def test_bad_files_name_file_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load(tmp_path, text)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert reason in err, err
    if "--user" not in reason:
        assert str(tmp_path / "vspcd.toml") in err


def test_missing_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(tmp_path / "nope.toml")], ENV, euid=1000)
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read" in capsys.readouterr().err


def test_every_long_option_is_a_key() -> None:
    keys = file_keys()
    for action in build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or longs[0] in ("--help", "--version", "--config", "--check-config"):
            continue
        assert longs[0][2:].replace("-", "_") in keys, longs[0]
    assert keys["interface"].dest == "vm_iface"  # -i/--interface: the long name counts


def test_array_values_are_comma_separated_lists(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text('hook_events = ["vm_connected", "vm_disconnected"]\n')
    from vspc.vspcd.service.config import read_config_file

    assert read_config_file(path) == {"hook_events": ("vm_connected", "vm_disconnected")}


def test_every_bad_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("proxy_prot = 1\nclient_limit = -1\nproxy_port = 13371\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)], ENV, euid=1000)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vspcd: {path}: key 'proxy_prot': unknown key (keys are the long options with '_' "
        "for '-'; did you mean 'proxy_port'?)",
        f"vspcd: {path}: key 'client_limit': must be >= 0, got -1",
    ]


def test_the_proxy_allow_list_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text('proxy_allow = ["10.0.0.0/8", "2001:db8::/32"]\n')
    config = reload_config(["--config", str(path)], ENV, euid=1000)
    assert config.proxy_allow is not None
    assert config.proxy_allow.allows("10.1.2.3") and config.proxy_allow.allows("2001:db8::1")
    assert not config.proxy_allow.allows("192.0.2.1")
    path.write_text('proxy_allow = ["10.0.0.1/8"]\n')  # host bits set: refused
    with pytest.raises(ConfigError, match="proxy_allow"):
        reload_config(["--config", str(path)], ENV, euid=1000)


def test_reload_raises_instead_of_exiting(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("client_limit = 2\n")
    argv = ["--config", str(path)]
    assert reload_config(argv, ENV, euid=1000).client_limit == 2
    path.write_text("client_limit = -2\n")
    with pytest.raises(ConfigError, match=r"key 'client_limit': must be >= 0"):
        reload_config(argv, ENV, euid=1000)


def test_check_config_exits_0_for_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("client_limit = 2\nproxy_port = 13370\n")
    assert main(["--config", str(path), "--check-config"]) == 0
    assert f"{path}: configuration OK" in capsys.readouterr().out


def test_check_config_exits_2_for_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text("client_limt = 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), "--check-config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "key 'client_limt': unknown key" in err and "did you mean 'client_limit'" in err
    assert len(err.splitlines()) == 1 and "usage" not in err


def test_group_without_user_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--group", "root"], ENV, euid=1000)
    assert "--group needs --user" in capsys.readouterr().err


def test_live_table_names_only_config_fields() -> None:
    names = {field.name for field in dataclasses.fields(Config)}
    assert set(LIVE) <= names, set(LIVE) - names


def test_reload_log_line_says_what_changed_and_what_needs_a_restart() -> None:
    outcome = Outcome(
        Config(),
        applied=(("client_limit", 1, 3), ("debug", False, True)),
        restart=(("proxy_port", 13370, 13371),),
        failed=(),
    )
    assert describe(outcome, "/etc/vspcd/vspcd.toml") == (
        "reloaded /etc/vspcd/vspcd.toml: applied client_limit 1 -> 3, debug false -> true; "
        "needs a restart (still running the old value): proxy_port 13370 -> 13371"
    )
    nothing = Outcome(Config(), (), (), ())
    assert describe(nothing, "x") == "reloaded x: nothing changed"


def test_parser_is_plain_argparse() -> None:
    assert isinstance(build_parser(), argparse.ArgumentParser)


def test_hub_settings_follow_config_fields() -> None:
    from vspc.vspcd.hub.hub import HubSettings
    from vspc.vspcd.service.settings import hub_settings

    config = Config(client_limit=3, vmotion_abandon=5.0, vm_expire_time=7.0, scrollback=99)
    settings = hub_settings(config)
    assert settings.client_limit == 3
    assert settings.abandon_time == 5.0  # the one field spelled differently
    assert settings.vm_expire_time == 7.0 and settings.scrollback == 99
    names = {field.name for field in dataclasses.fields(Config)}
    for field in dataclasses.fields(HubSettings):
        if field.name in names:
            assert getattr(settings, field.name) == getattr(config, field.name), field.name


def test_daemon_reload_pins_relative_paths_to_the_start_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vspc.vspcd.service.main import _absolute_paths, _reloader

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vspcd.toml").write_text("persist_file = 'state/consoles.db'\n")
    argv = ["--config", "vspcd.toml", "--daemon", "--admin-socket", "admin.sock"]
    config = _absolute_paths(parse_args(argv, ENV, euid=1000))
    reload = _reloader(argv, config)
    monkeypatch.chdir("/")  # what --daemon does after forking
    again = reload()
    assert again == config
    assert again.persist_file == tmp_path / "state" / "consoles.db"
    assert again.config == tmp_path / "vspcd.toml"


_KEYS = sorted(file_keys())
_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.one_of(st.text(max_size=10), st.integers(), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=12)), _VALUES))
def test_any_table_is_accepted_or_rejected_cleanly(table: dict[str, object]) -> None:
    # Whatever the file holds, the outcome is values or a ConfigError naming the file:
    # never another exception (a reload must not take the daemon down).
    from vspc.vspcd.service.config import read_config_file

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "vspcd.toml"
        path.write_text(_toml(table))
        try:
            read_config_file(path)
        except ConfigError as exc:
            assert str(path) in str(exc)


def _toml(table: dict[str, object]) -> str:
    # json.dumps writes valid TOML basic strings and arrays for these scalar types;
    # NaN/inf and nested tables get TOML's own spellings.
    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, float):
            if item != item:
                return "nan"
            if item in (float("inf"), float("-inf")):
                return "inf" if item > 0 else "-inf"
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item) + "]"
        if isinstance(item, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(v)}" for k, v in item.items()) + "}"
        return json.dumps(item)

    return "".join(f"{json.dumps(key)} = {value(item)}\n" for key, item in table.items())
