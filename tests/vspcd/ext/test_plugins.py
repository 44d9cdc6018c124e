"""Plugin backends: the sample plugin by each of the three
spellings in a real vspcd process, pre-seeded ports, a plugin that raises, and the
broken plugins that must fail the start with status 2.

The fixture plugins live in tests/vspcd/ext/plugins/ (put on PYTHONPATH or sys.path, as
an operator would); the entry point comes from a tiny `*.dist-info` directory with
an `entry_points.txt`, made in tmp_path and put on PYTHONPATH, so nothing is
installed into the test environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    free_port,
    identified,
    make_config,
    running,
)
from vspc.vspcd.ext.plugins import PluginError
from vspc.vspcd.service.server import Daemon

PLUGINS = Path(__file__).resolve().parent / "plugins"
SAMPLE = PLUGINS / "vSPCBackendSample.py"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"
DEADLINE = 10.0
BASE = ["--proxy-iface", "127.0.0.1", "--proxy-port", "0"]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    # A separate process: there is no event to await, so poll with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def entry_point_dir(tmp_path: Path) -> Path:
    """A directory holding an installed-looking distribution with one entry point."""
    site = tmp_path / "site"
    info = site / "vspc_sample_backend-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vspc-sample-backend\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[vspc.backends]\nsample = vSPCBackendSample:vSPCBackendSample\n"
    )
    return site


def start(tmp_path: Path, argv: list[str], pythonpath: list[Path]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    errlog = tmp_path / "vspcd.err"
    with errlog.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "vspc.vspcd", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            text=True,
        )


@pytest.mark.parametrize(
    ("spelling", "extra_path"),
    [
        ("Sample", False),  # vSPC.py: module vSPCBackendSample, class vSPCBackendSample
        ("vSPCBackendSample:vSPCBackendSample", False),
        ("sample", True),  # entry point in group vspc.backends
    ],
)
def test_sample_plugin_by_each_spelling(tmp_path: Path, spelling: str, extra_path: bool) -> None:
    out = tmp_path / "plugin.jsonl"
    path = [PLUGINS, entry_point_dir(tmp_path)] if extra_path else [PLUGINS]
    argv = [*BASE, "-r", str(free_port()), "--admin-socket", str(tmp_path / "s")]
    argv += ["--backend", spelling, "--backend-args", f"-o {out}"]
    child = start(tmp_path, argv, path)
    errlog = tmp_path / "vspcd.err"
    try:
        pattern = re.compile(r"listening for ESXi on 127\.0\.0\.1:(\d+)")
        wait_for(lambda: pattern.search(errlog.read_text()) is not None, "the proxy port")
        match = pattern.search(errlog.read_text())
        assert match is not None, errlog.read_text()

        def seen(what: str) -> Callable[[], bool]:
            return lambda: any(r["what"] == what for r in records(out))

        async def vm_session() -> None:
            esx = await FakeEsxi.connect(int(match.group(1)), UUID_A, "db01")
            await asyncio.to_thread(wait_for, seen("console_up"), "console_up")
            esx.send(b"hello plugin\r\n")
            await asyncio.to_thread(wait_for, seen("console_output"), "console_output")
            await esx.close()
            await asyncio.to_thread(wait_for, seen("console_down"), "console_down")

        asyncio.run(vm_session())
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=DEADLINE) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    got = records(out)
    assert got[0] == {"what": "start", "consoles": []}
    up = next(r for r in got if r["what"] == "console_up")
    assert (up["key"], up["name"]) == (UUID_A, vm_name_or_uuid(up["name"]))
    assert isinstance(up["port"], int)
    output = "".join(r["data"] for r in got if r["what"] == "console_output")
    assert output == "hello plugin\r\n"
    assert {"what": "console_down", "key": UUID_A, "why": "VmDisconnected"} in got
    assert got[-1] == {"what": "close"}
    assert f"backend {spelling} loaded from" in errlog.read_text()


def vm_name_or_uuid(name: str) -> str:
    """VmConnected may come before VM-NAME: the display name is then the UUID."""
    return name if name in ("db01", "01234567-89ab-cdef-fedc-ba9800000000") else "?"


def test_load_preseeds_consoles_and_their_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    out, seed = tmp_path / "plugin.jsonl", tmp_path / "seed"
    port = free_port()
    seed.write_text(f"{UUID_B} web01 {port}\n")
    args = f"-o {out} -s {seed}"

    async def main() -> None:
        flags = ("-r", str(port), "--backend", "Sample", "--backend-args", args)
        async with running(tmp_path, *flags) as (daemon, events):
            # Before any VM: the console exists on the remembered port, and the plugin
            # saw it in the hub at start().
            assert console_port(daemon, UUID_B) == port
            assert records(out)[0] == {"what": "start", "consoles": [["web01", port]]}
            op = await Operator.connect(port)
            await events.wait("client_attached")
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "web01")
            await identified(events, UUID_B)
            esx.send(b"seeded\r\n")
            await op.output.expect(b"seeded\r\n")
            assert console_port(daemon, UUID_B) == port  # the VM found its port
            await op.close()
            await esx.close()

    asyncio.run(main())
    kinds = [r["kind"] for r in records(out) if r["what"] == "client_changed"]
    assert kinds == ["ClientAttached", "ClientDetached"]


def test_a_plugin_that_raises_never_reaches_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    caplog.set_level(logging.INFO, logger="vspc.vspcd.ext.plugins")

    async def main() -> None:
        async with running(tmp_path, "--backend", "raising_backend:Raising") as (daemon, events):
            assert daemon.plugin is not None
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            for n in range(12):
                esx.send(b"line %d\r\n" % n)
                await op.output.expect(b"line %d\r\n" % n)  # operators still get output
            op.type(b"typed\r")
            await esx.input.expect(b"typed\r")  # and input still reaches the VM
            assert daemon.plugin.errors["console_output"] == 12
            plugin = daemon.plugin.plugin
            await op.close()
            await esx.close()
            await events.wait("vm_disconnected")
        assert plugin.closed  # close() still ran at shutdown

    asyncio.run(main())
    text = caplog.text
    # Each kind logged once with its traceback, then counted.
    assert text.count("console_output raised (further errors") == 1
    assert "ValueError: cannot take" in text
    assert text.count("console_up raised (further errors") == 1
    assert "backend raising_backend:Raising: console_output has raised 10 times" in text
    assert "console_output raised 12 time(s) in all" in text
    assert "client_changed raised 2 time(s) in all" in text


@pytest.mark.parametrize(
    ("spelling", "message"),
    [
        (
            "Nope",
            "--backend 'Nope': unknown backend (choose Memory, File or Logging, or a plugin: "
            "no vspc.backends entry point named 'Nope' and no module vSPCBackendNope on sys.path",
        ),
        ("Broken", "--backend Broken: importing vSPCBackendBroken failed: No module named"),
        ("no_such_module:Thing", "--backend no_such_module:Thing: no module named"),
        ("broken_backends:Missing", "module broken_backends has no attribute 'Missing'"),
        ("broken_backends:Incomplete", "is not a backend: no method console_output, close"),
        ("broken_backends:NoArgs", "must take one argument, the --backend-args string"),
    ],
)
def test_a_broken_plugin_is_a_usage_error(tmp_path: Path, spelling: str, message: str) -> None:
    argv = [*BASE, "--no-vm-ports", "--admin-socket", str(tmp_path / "s"), "--backend", spelling]
    result = subprocess.run(
        [sys.executable, "-m", "vspc.vspcd", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "PYTHONPATH": str(PLUGINS)},
    )
    assert result.returncode == 2
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("spelling", "args", "message"),
    [
        ("broken_backends:FailingStart", "", "start() failed: OSError: cannot reach the CMDB"),
        (
            "Sample",
            "--bogus",
            "vSPCBackendSample.vSPCBackendSample('--bogus') failed: SystemExit: 2",
        ),
    ],
)
def test_a_plugin_failing_at_start_exits_2(
    tmp_path: Path, spelling: str, args: str, message: str
) -> None:
    argv = [*BASE, "--no-vm-ports", "--admin-socket", str(tmp_path / "s")]
    argv += ["--backend", spelling, "--backend-args", args]
    result = subprocess.run(
        [sys.executable, "-m", "vspc.vspcd", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "PYTHONPATH": str(PLUGINS)},
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot start: --backend {spelling}: {message}" in result.stderr
    assert not (tmp_path / "s").exists()  # nothing left behind


def test_plugin_start_failure_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    daemon = Daemon(make_config(tmp_path, "--backend", "broken_backends:FailingStart"))

    async def main() -> None:
        with pytest.raises(PluginError, match="cannot reach the CMDB"):
            await daemon.start()

    asyncio.run(main())
    assert daemon.hub is not None and daemon.hub.connection_count() == 0


def test_docs_ship_the_sample_backend() -> None:
    """docs/plugins.md shows the sample exactly as tested here."""
    code = SAMPLE.read_text()
    body = code[code.index("from __future__") :]
    assert body in DOCS.read_text()


def test_a_slow_plugin_offloads_and_never_stalls_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    caplog.set_level(logging.WARNING, logger="vspc.vspcd.ext.plugins")

    async def main() -> None:
        flags = ("--backend", "slow_backend:Slow", "--backend-args", "2")
        async with running(tmp_path, *flags) as (daemon, events):
            assert daemon.plugin is not None
            plugin = daemon.plugin.plugin
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            # The plugin's "database" is stuck; output still flows to operators.
            for n in range(20):
                esx.send(b"line %d\r\n" % n)
                await op.output.expect(b"line %d\r\n" % n)
            assert plugin.offload.dropped > 0  # bounded: the rest was dropped
            await op.close()
            await esx.close()
        # close() unblocked it and waited for the queue to drain.
        stored = b"".join(plugin.stored)
        assert stored.startswith(b"line 0\r\n") and plugin.offload.errors == 0

    asyncio.run(main())
    assert "vspc-offload: queue full; dropping work" in caplog.text
