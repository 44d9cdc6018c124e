"""common/paths.py: how clients find the daemon's admin socket (docs/vspc.md, "Which daemon")."""

from __future__ import annotations

from pathlib import Path

from vspc.common.paths import (
    SYSTEM_SOCKET,
    client_socket,
    configured_socket,
    daemon_socket,
    user_socket,
)


def test_daemon_defaults() -> None:
    assert daemon_socket({}, 0) == SYSTEM_SOCKET
    assert daemon_socket({"XDG_RUNTIME_DIR": "/run/user/7"}, 7) == Path("/run/user/7/vspcd.sock")
    assert daemon_socket({"XDG_RUNTIME_DIR": ""}, 7) == Path("/tmp/vspcd-7/vspcd.sock")
    assert user_socket({}, 9) == Path("/tmp/vspcd-9/vspcd.sock")


def test_env_wins(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('admin_socket = "/srv/x.sock"\n')
    env = {"VSPC_SOCKET": "/a.sock", "VSPC_CONFIG": str(config)}
    assert client_socket(env, 0) == Path("/a.sock")


def test_config_file_names_the_socket(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('admin_socket = "/srv/x.sock"\nclient_limit = 3\n')
    assert configured_socket(config) == Path("/srv/x.sock")
    assert client_socket({"VSPC_CONFIG": str(config)}, 0) == Path("/srv/x.sock")
    assert client_socket({"VSPC_CONFIG": str(config)}, 1000) == Path("/srv/x.sock")


def test_broken_or_missing_config_falls_back(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("admin_socket = [\n")
    assert configured_socket(bad) is None
    assert configured_socket(tmp_path / "missing.toml") is None
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("admin_socket = 5\n")
    assert configured_socket(wrong) is None
    assert client_socket({"VSPC_CONFIG": str(bad)}, 0) == SYSTEM_SOCKET


def test_user_daemon_found_when_no_system_one(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "VSPC_CONFIG": str(tmp_path / "none.toml")}
    assert client_socket(env, 4242) == SYSTEM_SOCKET  # no user daemon yet
    (tmp_path / "vspcd.sock").touch()
    if not SYSTEM_SOCKET.exists():
        assert client_socket(env, 4242) == tmp_path / "vspcd.sock"
