"""The HTTP listener: sans-IO request parsing (fuzzed), routing, limits and errors over
real loopback sockets, and OpenStack Nova's two ways of reading a console log.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, running
from vspc.common import vmware as vm
from vspc.vspcd.faces.http.parse import HttpError, Request, RequestParser
from vspc.vspcd.faces.http.server import HttpServer, Response, Route, Router
from vspc.vspcd.history.lineformat import strip_timestamps

GOOD = b"GET /console_log/abc?x=1 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"


# -- parser ---------------------------------------------------------------------------


def test_a_request_head_parses() -> None:
    request = RequestParser().feed(GOOD)
    assert request == Request(
        "GET",
        "/console_log/abc?x=1",
        "/console_log/abc",
        "x=1",
        (("host", "localhost"), ("accept", "*/*")),
    )
    assert request.header("HOST") == "localhost" and request.header("x") is None


def test_bare_lf_and_percent_escapes_are_understood() -> None:
    request = RequestParser().feed(b"GET /a%20b HTTP/1.0\nHost: x\n\n")
    assert request is not None and request.path == "/a b"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET noslash HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET /%ff HTTP/1.1\r\n\r\n", 400),
        (b"GET /%00 HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
        (b"GET /" + b"a" * 9000, 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 431),
    ],
)
def test_bad_requests_get_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(data)
    assert caught.value.status == status


@given(st.lists(st.integers(min_value=1, max_value=len(GOOD)), max_size=8))
def test_chunking_never_changes_the_result(cuts: list[int]) -> None:
    parser, result = RequestParser(), None
    points = sorted(set(cuts)) + [len(GOOD)]
    start = 0
    for point in points:
        if point > start:
            result = parser.feed(GOOD[start:point]) or result
            start = point
    assert result == RequestParser().feed(GOOD)


@given(st.lists(st.binary(max_size=300), max_size=40))
@settings(max_examples=300)
def test_any_bytes_give_a_request_more_needed_or_an_http_error(chunks: list[bytes]) -> None:
    parser = RequestParser()
    for chunk in chunks:
        try:
            result = parser.feed(chunk)
        except HttpError as exc:
            assert exc.status in (400, 413, 414, 431)
            return
        if result is not None:
            assert result.path.startswith("/")
            return


@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).map(
        lambda t: "/" + "".join(f"%{b:02X}" for b in t.encode())
    )
)
def test_percent_decoding_round_trips_or_refuses_controls(path: str) -> None:
    try:
        request = RequestParser().feed(f"GET {path} HTTP/1.1\r\n\r\n".encode())
    except HttpError as exc:
        assert exc.status == 400
        return
    assert request is not None and not any(ord(c) < 0x20 for c in request.path)


# -- routing --------------------------------------------------------------------------------


def _echo(request: Request, params: Mapping[str, str]) -> Response:
    return Response(200, repr(sorted(params.items())).encode())


def _boom(request: Request, params: Mapping[str, str]) -> Response:
    raise RuntimeError("handler bug")


def test_routes_capture_segments_and_a_bug_is_a_500() -> None:
    router = Router([Route("/console_log/{uuid}", _echo), Route("/boom", _boom)])
    get = RequestParser().feed(b"GET /console_log/xyz HTTP/1.1\r\n\r\n")
    assert get is not None and router.dispatch(get).body == b"[('uuid', 'xyz')]"
    for target, status in [(b"/console_log/", 404), (b"/console_log/a/b", 404), (b"/boom", 500)]:
        request = RequestParser().feed(b"GET " + target + b" HTTP/1.1\r\n\r\n")
        assert request is not None and router.dispatch(request).status == status
    post = RequestParser().feed(b"POST /boom HTTP/1.1\r\n\r\n")
    assert post is not None
    reply = router.dispatch(post)
    assert reply.status == 405 and ("Allow", "GET, HEAD") in reply.headers


# -- the listener over loopback -----------------------------------------------------------


async def _exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    async with asyncio.timeout(5):
        reply = await reader.read()  # the server closes after one reply
    writer.close()
    return reply


def test_the_listener_answers_and_closes() -> None:
    async def main() -> None:
        server = HttpServer(Router([Route("/hello/{who}", _echo)]), request_timeout=0.2)
        await server.start("127.0.0.1", 0)
        assert server.port is not None
        try:
            ok = await _exchange(server.port, b"GET /hello/you HTTP/1.1\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in ok
            assert ok.endswith(b"\r\n\r\n[('who', 'you')]")
            head = await _exchange(server.port, b"HEAD /hello/you HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            assert b"Content-Length: 16" in head  # the GET body's length
            missing = await _exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n")
            assert missing.startswith(b"HTTP/1.1 404 ")
            post = await _exchange(server.port, b"POST /hello/x HTTP/1.1\r\n\r\n")
            assert post.startswith(b"HTTP/1.1 405 ")
            big = await _exchange(server.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000)
            assert big.startswith(b"HTTP/1.1 431 ")
            cut = await _exchange(server.port, b"GET /hel", half_close=True)
            assert cut.startswith(b"HTTP/1.1 400 ")
            slow = await _exchange(server.port, b"GET /hello")  # then nothing: the timer
            assert slow.startswith(b"HTTP/1.1 408 ")
            assert not server.connections
        finally:
            await server.close()

    asyncio.run(main())


# -- OpenStack Nova reads the console log -----------------------------------------------------


def test_nova_reads_uuid_named_logs_from_the_directory_and_over_http(tmp_path: Path) -> None:
    """`--log-name uuid` is Nova's serial_log_dir layout; `/console_log/{uuid}` its
    serial_log_uri.  Both are read here exactly as nova/virt/vmwareapi/driver.py does."""
    logs = tmp_path / "serial"
    instance_uuid = vm.display_uuid(UUID_A)  # Nova's instance.uuid: 8-4-4-4-12
    boot = b"".join(b"[%6d.000] booting\r\n" % i for i in range(8000))  # > 100 KiB

    def nova_serial_log_dir() -> bytes:
        # fname = instance.uuid.replace('-', ''); path = os.path.join(dir, fname)
        path = os.path.join(str(logs), instance_uuid.replace("-", ""))
        with open(path, "rb") as stream:  # nova.privsep.path.last_bytes(path, 100 KiB)
            stream.seek(max(0, os.path.getsize(path) - 100 * 1024))
            return stream.read()

    def nova_serial_log_uri(base: str, uuid: str) -> bytes:
        # url = f"{serial_log_uri}/console_log/{instance.uuid}"; urlopen(url).read()
        try:
            with urllib.request.urlopen(f"{base}/console_log/{uuid}", timeout=5) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the connection
            raise

    async def main() -> None:
        flags = ("--log-dir", str(logs), "--log-name", "uuid", "--log-timestamps")
        async with running(tmp_path, *flags, "--http", "0", "--http-console-log") as (
            daemon,
            events,
        ):
            assert daemon.http is not None and daemon.logs is not None
            base = f"http://127.0.0.1:{daemon.http.port}"
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "instance-0001")
            await events.wait("vm_connected")
            for i in range(0, len(boot), 4096):
                esx.send(boot[i : i + 4096])
            await esx.close()
            await events.wait("vm_disconnected")  # flushed and closed
            over_http = await asyncio.to_thread(nova_serial_log_uri, base, instance_uuid)
            assert over_http == boot[-100 * 1024 :]  # raw bytes, stamps removed
            same = await asyncio.to_thread(nova_serial_log_uri, base, UUID_A.upper())
            assert same == over_http
            for unknown in (vm.display_uuid(UUID_B), "not-a-uuid"):
                with pytest.raises(urllib.error.HTTPError) as caught:
                    await asyncio.to_thread(nova_serial_log_uri, base, unknown)
                assert caught.value.code == 404

    asyncio.run(main())
    assert strip_timestamps(nova_serial_log_dir()[-50_000:].split(b"\n", 1)[1]) in boot
    assert sorted(p.name for p in logs.iterdir() if not p.name.startswith(".")) == [UUID_A]


def test_without_the_flag_there_is_no_console_log_route(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--log-dir", str(tmp_path / "l"), "--http", "0") as (
            daemon,
            _,
        ):
            assert daemon.http is not None and daemon.http.port is not None
            reply = await _exchange(
                daemon.http.port, f"GET /console_log/{UUID_A} HTTP/1.1\r\n\r\n".encode()
            )
            assert reply.startswith(b"HTTP/1.1 404 ")

    asyncio.run(main())


def test_connections_past_the_cap_are_turned_away() -> None:
    from vspc.vspcd.faces.http.server import MAX_CONNECTIONS

    async def main() -> None:
        # One address may hold them all here, so the global cap is what turns it away.
        server = HttpServer(Router([Route("/hello/{who}", _echo)]), max_per_address=MAX_CONNECTIONS)
        await server.start("127.0.0.1", 0)
        assert server.port is not None
        idle = [
            await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS)
        ]
        try:
            # The kernel queues connections in order and asyncio accepts them in
            # order, so this one arrives after the 64 idle ones.
            turned_away = await _exchange(server.port, b"GET /hello/x HTTP/1.1\r\n\r\n")
            assert turned_away.startswith(b"HTTP/1.1 503 ")
        finally:
            for _, writer in idle:
                writer.close()
            await server.close()

    asyncio.run(main())


async def _idle(port: int, local: str, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
        writers.append(writer)
    return writers


async def _served(server: HttpServer, count: int) -> None:
    async with asyncio.timeout(5):
        while len(server.connections) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_slowloris_from_one_address_does_not_starve_the_others() -> None:
    from vspc.vspcd.faces.http.server import MAX_PER_ADDRESS

    async def main() -> None:
        server = HttpServer(Router([Route("/hello/{who}", _echo)]))
        await server.start("127.0.0.1", 0)
        assert server.port is not None
        idle = await _idle(server.port, "127.0.0.2", 70)  # more than the global cap
        try:
            await _served(server, MAX_PER_ADDRESS)
            reply = await _exchange(server.port, b"GET /hello/x HTTP/1.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert len(server.connections) <= MAX_PER_ADDRESS
        finally:
            for writer in idle:
                writer.close()
            await server.close()

    asyncio.run(main())


def test_at_the_global_cap_the_busiest_address_gives_way() -> None:
    async def main() -> None:
        server = HttpServer(Router([Route("/hello/{who}", _echo)]), max_connections=16)
        await server.start("127.0.0.1", 0)
        assert server.port is not None
        idle = await _idle(server.port, "127.0.0.2", 8)
        idle += await _idle(server.port, "127.0.0.3", 8)
        try:
            await _served(server, 16)
            for _ in range(3):  # each takes the place of a holder's oldest idle one
                reply = await _exchange(server.port, b"GET /hello/x HTTP/1.1\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 200 ")
        finally:
            for writer in idle:
                writer.close()
            await server.close()

    asyncio.run(main())
