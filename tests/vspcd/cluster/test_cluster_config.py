"""Cluster-mode flags (vspcd/service/config.py) and the stdlib-only promise without them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from vspc.vspcd.service.config import parse_args


def secret(tmp_path: Path, value: bytes = b"0123456789abcdef0123") -> Path:
    path = tmp_path / "secret"
    path.write_bytes(value)
    return path


def cluster_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--cluster", "redis://127.0.0.1:6379/0",
        "--node-id", "n1",
        "--node-address", "127.0.0.1:13380",
        "--cluster-secret-file", str(secret(tmp_path)),
        "--admin-socket", str(tmp_path / "a.sock"),
        *extra,
    ]  # fmt: skip


def test_cluster_flags_reach_the_config(tmp_path: Path) -> None:
    config = parse_args(cluster_args(tmp_path, "--cluster-lease", "2.5", "--reuse-port"), {})
    assert config.cluster == "redis://127.0.0.1:6379/0"
    assert (config.node_id, config.node_address) == ("n1", "127.0.0.1:13380")
    assert config.cluster_lease == 2.5 and config.reuse_port


def test_without_cluster_nothing_changes(tmp_path: Path) -> None:
    config = parse_args(["--admin-socket", str(tmp_path / "a.sock")], {})
    assert config.cluster is None and not config.reuse_port


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("--node-id", "--cluster needs --node-id"),
        ("--node-address", "--cluster needs --node-address"),
        ("--cluster-secret-file", "--cluster needs --cluster-secret-file"),
    ],
)
def test_cluster_needs_its_companions(
    tmp_path: Path, drop: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cluster_args(tmp_path)
    at = args.index(drop)
    del args[at : at + 2]
    with pytest.raises(SystemExit) as exc:
        parse_args(args, {})
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--node-id", "bad name"], "letters, digits"),
        (["--node-address", "nohost"], "HOST:PORT"),
        (["--cluster", "http://x"], "expected redis://"),
        (["--persist-file", "/tmp/x.db"], "registry replaces it"),
    ],
)
def test_bad_cluster_values_are_usage_errors(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args([*cluster_args(tmp_path), *extra], {})
    assert message in capsys.readouterr().err


def test_short_secret_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cluster_args(tmp_path)
    secret(tmp_path, b"short")
    with pytest.raises(SystemExit):
        parse_args(args, {})
    assert "at least 16 bytes" in capsys.readouterr().err


def test_companion_without_cluster_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--node-id", "n1", "--admin-socket", str(tmp_path / "a.sock")], {})
    assert "--node-id needs --cluster" in capsys.readouterr().err


def test_missing_redis_client_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    with pytest.raises(SystemExit):
        parse_args(cluster_args(tmp_path), {})
    assert "pip install 'vspc[cluster]'" in capsys.readouterr().err


def test_a_plain_daemon_never_imports_redis() -> None:
    code = (
        "import sys, vspc.vspcd.service.main, vspc.vspcd.service.server, vspc.vspcd.faces.admin\n"
        "assert not any(m == 'redis' or m.startswith('redis.') for m in sys.modules), 'redis'\n"
        "assert 'vspc.vspcd.cluster.node' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
