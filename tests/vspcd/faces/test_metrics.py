"""Metrics end to end: `/metrics` scraped over a real socket and parsed
with prometheus-client's text parser during a vMotion loop with a typing client, the
counters matching what the test did; `/healthz`; the admin `stats` command; the
`--metrics` flag.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    make_config,
    running,
)
from vspc.common import esxi
from vspc.common.admin import Stats
from vspc.vspcd.service.config import ConfigError, parse_args
from vspc.vspcd.service.server import Daemon

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(daemon: Daemon) -> Samples:
    """GET /metrics and parse it with the reference parser: every sample by name+labels."""
    assert daemon.http is not None
    status, ctype, body = await asyncio.to_thread(
        _get, f"http://127.0.0.1:{daemon.http.port}/metrics"
    )
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def vmotions(samples: Samples, outcome: str, reason: str = "") -> float:
    return value(samples, "vspcd_vmotions_total", outcome=outcome, reason=reason)


SEQS = [bytes([0x10 + i, 0x22, 0xFF, 0x01]) for i in range(8)]


def test_metrics_follow_a_vmotion_loop_with_a_typing_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--no-notices", "--http", "0", "--metrics") as (
            daemon,
            events,
        ):
            assert daemon.hub is not None
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            before = await scrape(daemon)
            assert value(before, "vspcd_consoles", state="connected") == 1
            assert value(before, "vspcd_clients", kind="telnet") == 1
            sent = typed = 0
            done = {"completed": 0, "aborted": 0, "notnow": 0}
            for i, outcome in enumerate(["completed", "aborted", "notnow", "completed"]):
                out = f"out{i}\r\n".encode()
                vm.send(out)
                await op.output.expect(out)
                sent += len(out)
                key = f"<{i}>".encode()
                if outcome == "notnow":
                    daemon.hub.refuse_next_vmotion(daemon.hub.find(UUID_A))
                    vm.session.begin(SEQS[i])
                    vm._flush()
                    await vm.wait_for(esxi.NotNow)
                    op.type(key)
                    await vm.input.expect(key)
                elif outcome == "aborted":
                    await vm.begin(SEQS[i])
                    op.type(key)  # held during the vMotion
                    mid = await scrape(daemon)
                    assert value(mid, "vspcd_consoles", state="pending") == 1
                    vm.abort()
                    await events.wait("vmotion_abort")
                    await vm.input.expect(key)  # the hold goes back to the source
                else:
                    cookie = await vm.begin(SEQS[i])
                    op.type(key)
                    dst = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
                    await dst.wait_for(esxi.PeerOk)
                    mid = await scrape(daemon)
                    assert value(mid, "vspcd_consoles", state="peered") == 1
                    assert value(mid, "vspcd_held_input_bytes") == len(key)
                    dst.complete(SEQS[i])
                    await events.wait("vmotion_complete", count=done["completed"] + 1)
                    await vm.close()
                    await dst.input.expect(key)
                    vm = dst
                typed += len(key)
                done[outcome] += 1
                now = await scrape(daemon)
                assert vmotions(now, "completed") == done["completed"]
                assert vmotions(now, "aborted", "source_aborted") == done["aborted"]
                assert vmotions(now, "notnow", "operator") == done["notnow"]
                assert vmotions(now, "abandoned") == 0
                direction = "vspcd_console_bytes_total"
                assert value(now, direction, direction="vm_to_clients") == sent
                assert value(now, direction, direction="clients_to_vm") == typed
            after = await scrape(daemon)
            # One GOAHEAD per BEGIN that was not refused, every one observed.
            goaheads = done["completed"] + done["aborted"]
            assert value(after, "vspcd_vmotion_goahead_seconds_count") == goaheads
            inf = value(after, "vspcd_vmotion_goahead_seconds_bucket", le="+Inf")
            assert inf == goaheads
            assert value(after, "vspcd_vmotion_goahead_seconds_bucket", le="5.0") == goaheads
            assert value(after, "vspcd_held_input_bytes") == 0
            assert value(after, "vspcd_consoles", state="connected") == 1
            # A vMotion moves the console to a new connection: not a new VM connection.
            assert value(after, "vspcd_vm_connections_total") == 1
            assert value(after, "vspcd_open_fds") > 0
            assert value(after, "vspcd_max_fds") >= value(after, "vspcd_open_fds")
            # The admin `stats` command reports the same numbers.
            assert daemon._admin is not None and daemon._admin.stats is not None
            stats = daemon._admin.stats()
            assert stats.vmotions_completed == done["completed"]
            assert stats.bytes_clients_to_vm == typed and stats.bytes_vm_to_clients == sent
            await op.close()
            await vm.close()

    asyncio.run(main())


def test_healthz_ok_then_503_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--metrics", "0") as (daemon, _events):
            assert daemon.http is not None
            base = f"http://127.0.0.1:{daemon.http.port}"
            status, _, body = await asyncio.to_thread(_get, f"{base}/healthz")
            assert (status, body) == (200, "ok\n")
            daemon.config.admin_socket.unlink()  # e.g. a tmpfiles cleaner removed it
            status, _, body = await asyncio.to_thread(_get, f"{base}/healthz")
            assert status == 503 and "admin socket" in body

    asyncio.run(main())


def test_metrics_routes_follow_the_live_setting(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--http", "0") as (daemon, _events):
            assert daemon.http is not None
            url = f"http://127.0.0.1:{daemon.http.port}/metrics"
            status, _, _ = await asyncio.to_thread(_get, url)
            assert status == 404  # --http without --metrics
            from vspc.vspcd.service import reload

            new = make_config(tmp_path, "--http", f"127.0.0.1:{daemon.http.port}", "--metrics")
            outcome = reload.apply(daemon, new)
            assert [key for key, _, _ in outcome.applied] == ["metrics"]
            status, _, body = await asyncio.to_thread(_get, url)
            assert status == 200 and "vspcd_vmotions_total" in body

    asyncio.run(main())


def test_admin_stats_over_the_real_socket(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            vm.send(b"hello")
            reader, writer = await asyncio.open_unix_connection(str(daemon.admin_path))
            writer.write(b'{"cmd": "stats", "id": 7}\n')
            reply: dict[str, Any] = json.loads(await reader.readline())
            while reply.get("event"):
                reply = json.loads(await reader.readline())
            assert reply["ok"] is True and reply["id"] == 7
            stats = Stats.from_json(reply)
            assert stats.consoles["connected"] == 1
            assert stats.vm_connections == 1
            assert stats.to_json() == {k: v for k, v in reply.items() if k not in ("ok", "id")}
            writer.close()
            await vm.close()

    asyncio.run(main())


def test_metrics_flag_keeps_one_http_listener(tmp_path: Path) -> None:
    sock = ["--admin-socket", str(tmp_path / "a.sock")]
    config = parse_args([*sock, "--metrics", "9180"], {})
    assert config.metrics and config.http == ("127.0.0.1", 9180)
    config = parse_args([*sock, "--http", "[::1]:9180", "--metrics"], {})
    assert config.metrics and config.http == ("::1", 9180)
    assert not parse_args(sock, {}).metrics
    for argv in (["--metrics"], ["--http", "9180", "--metrics", "9181"]):
        with pytest.raises((SystemExit, ConfigError)):
            parse_args([*sock, *argv], {})


def test_metrics_true_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "vspcd.toml"
    path.write_text('http = "127.0.0.1:9180"\nmetrics = true\n')
    config = parse_args(["--admin-socket", str(tmp_path / "a.sock"), "--config", str(path)], {})
    assert config.metrics and config.http == ("127.0.0.1", 9180)


def test_tls_handshakes_and_refusals_are_counted(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    cert, key = cert_pair

    async def main() -> None:
        args = ("--ssl", "--cert", str(cert), "--key", str(key), "--proxy-allow", "127.0.0.1")
        async with running(tmp_path, *args, "--metrics", "0") as (daemon, events):
            assert daemon.metrics is not None
            stats = daemon.metrics.snapshot
            secure = await FakeEsxi.connect(daemon.proxy_port, tls=True)
            await identified(events, UUID_A)
            # A TLS record header, then nonsense: the handshake fails.
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.proxy_port)
            writer.write(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
            assert await reader.read() == b""
            writer.close()
            # Not in the allow list: closed at accept.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", daemon.proxy_port, local_addr=("127.0.0.2", 0)
            )
            assert await reader.read() == b""
            writer.close()
            # The failure is counted by the listener's task for that connection, which
            # may end just after the peer saw the close: wait for the listener's tasks.
            assert daemon.proxy_listener is not None
            await daemon.proxy_listener.wait_closed()
            now = stats()
            assert now.tls_handshakes["started"] == 2
            assert now.tls_handshakes["completed"] == 1
            assert now.connections_refused == {"allow_list": 1, "unidentified_limit": 0}
            samples = await scrape(daemon)
            assert value(samples, "vspcd_tls_handshakes_total", result="failed") == 1
            assert value(samples, "vspcd_connections_refused_total", reason="allow_list") == 1
            await secure.close()

    asyncio.run(main())
