"""AdminClient and open_attach against the fake admin server (conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vspc.common.admin import (
    AdminError,
    ErrorCode,
    LockMode,
    encode_message,
    failed,
)
from vspc.vspctui.client import (
    AdminAddress,
    AdminClient,
    ConnectError,
    ProtocolError,
    open_attach,
)

DB01_KEY = "0123456789abcdeffedcba9800000000"


def test_requests_get_ids_and_concurrent_replies_match(daemon: Any) -> None:
    async def run() -> list[str]:
        async with await AdminClient.connect(daemon.path) as client:
            replies = await asyncio.gather(
                *(client.request("show", vm=name) for name in ["db01", "web02_console2"] * 10)
            )
            return [reply["console"]["name"] for reply in replies]

    assert asyncio.run(run()) == ["db01", "web02_console2"] * 10
    ids = [r["id"] for r in daemon.requests]
    assert len(set(ids)) == 20 and all(isinstance(i, int) for i in ids)


def test_typed_helpers(daemon: Any) -> None:
    async def run() -> None:
        async with await AdminClient.connect(daemon.path) as client:
            hello = await client.hello("test/1")
            assert (hello.protocol, hello.version, hello.user) == (1, "0.0-fake", "alice")
            consoles = await client.list_consoles()
            assert [c.name for c in consoles] == ["db01", "web02_console2"]
            shown = await client.show("db01")
            assert shown.counters == {"bytes_from_vm": 7, "vmotions": 2}
            chunk = await client.tail("db01", 3)
            assert chunk.data == b"n: "

    asyncio.run(run())
    assert daemon.requests[0] == {"cmd": "hello", "id": 1, "client": "test/1"}


def test_error_reply_raises_admin_error_with_code(daemon: Any) -> None:
    async def run() -> AdminError:
        async with await AdminClient.connect(daemon.path) as client:
            with pytest.raises(AdminError) as info:
                await client.request("show", vm="nosuch")
            # The connection is still usable after an error reply.
            assert (await client.request("list"))["ok"] is True
            return info.value

    error = asyncio.run(run())
    assert error.code is ErrorCode.VM_NOT_FOUND
    assert "nosuch" in error.message


def test_none_fields_are_left_out(daemon: Any) -> None:
    async def run() -> None:
        async with await AdminClient.connect(daemon.path) as client:
            await client.request("clear", vm="db01", reason=None)

    asyncio.run(run())
    assert daemon.requests == [{"cmd": "clear", "id": 1, "vm": "db01"}]


def test_events_arrive_in_order_and_end_with_the_close_reason(daemon: Any) -> None:
    daemon.push_after["subscribe"] = [
        {"event": "vm_connected", "key": DB01_KEY, "name": "db01", "peer": "10.0.0.21:1"},
        {"event": "lock_changed", "key": DB01_KEY, "name": "db01", "lock": None, "holder": None},
        {"event": "from_the_future", "x": 1},
    ]
    daemon.close_after["subscribe"] = failed(ErrorCode.OVERRUN, "you do not read")

    async def run() -> tuple[list[str], AdminError]:
        async with await AdminClient.connect(daemon.path) as client:
            snapshot = await client.subscribe()
            assert len(snapshot) == 2
            seen = []
            with pytest.raises(AdminError) as info:
                async for event in client.events():
                    seen.append(event.event)
            with pytest.raises(AdminError):  # later requests fail with the same reason
                await client.request("list")
            return seen, info.value

    seen, error = asyncio.run(run())
    assert seen == ["vm_connected", "lock_changed", "from_the_future"]
    assert error.code is ErrorCode.OVERRUN


def test_connect_error_for_a_missing_socket(tmp_path: Any) -> None:
    async def run() -> None:
        await AdminClient.connect(str(tmp_path / "nope.sock"))

    with pytest.raises(ConnectError, match="nope.sock"):
        asyncio.run(run())


def test_tcp_transport(daemon: Any) -> None:
    async def run() -> int:
        address = AdminAddress.tcp(f"127.0.0.1:{daemon.tcp_port}")
        async with await AdminClient.connect(address) as client:
            return len(await client.list_consoles())

    assert asyncio.run(run()) == 2


@pytest.mark.parametrize("text", ["localhost", "host:", ":5", "host:0", "host:99999", "h:x"])
def test_tcp_address_must_be_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        AdminAddress.tcp(text)


def test_tcp_address_parses_ipv6() -> None:
    assert AdminAddress.tcp("[::1]:7000") == AdminAddress(host="::1", port=7000)


def test_malformed_reply_is_a_protocol_error(tmp_path: Any) -> None:
    async def run() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"this is not json\n")
            await writer.drain()
            writer.close()

        path = str(tmp_path / "s")
        server = await asyncio.start_unix_server(serve, path)
        async with server:
            client = await AdminClient.connect(path)
            try:
                with pytest.raises(ProtocolError, match="malformed"):
                    await client.request("list")
            finally:
                await client.close()

    asyncio.run(run())


def test_daemon_closing_mid_request_is_a_protocol_error(tmp_path: Any) -> None:
    async def run() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.close()

        path = str(tmp_path / "s")
        server = await asyncio.start_unix_server(serve, path)
        async with server, await AdminClient.connect(path) as client:
            with pytest.raises(ProtocolError, match="closed"):
                await client.request("list")

    asyncio.run(run())


def test_attach_keeps_the_raw_bytes_that_came_with_the_reply(daemon: Any) -> None:
    async def run() -> tuple[Any, bytes]:
        session = await open_attach(daemon.path, "db01", lock=LockMode.WRITE, replay=4)
        try:
            data = await session.reader.readexactly(4)
            session.writer.write(b"ls\r")
            await session.writer.drain()
        finally:
            await session.close()
        return session.grant, data

    grant, data = asyncio.run(run())
    assert data == b"in: "  # the last 4 bytes of b"login: ", sent right after the reply
    assert (grant.name, grant.mode, grant.readonly) == ("db01", LockMode.WRITE, False)
    assert daemon.inputs.get(timeout=5) == (DB01_KEY, b"ls\r")
    assert daemon.requests[-1] == {
        "cmd": "attach",
        "id": 1,
        "vm": "db01",
        "lock": "write",
        "replay": 4,
    }


def test_attach_refusal_is_an_admin_error(daemon: Any) -> None:
    async def run() -> None:
        first = await open_attach(daemon.path, "db01", lock=LockMode.EXCLUSIVE)
        try:
            with pytest.raises(AdminError) as info:
                await open_attach(daemon.path, "db01")
            assert info.value.code is ErrorCode.LOCK_FAILED
        finally:
            await first.close()

    asyncio.run(run())


def test_connection_level_error_without_id_fails_pending_requests(tmp_path: Any) -> None:
    async def run() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(encode_message(failed(ErrorCode.FLOOD, "slow down")))
            await writer.drain()
            writer.close()

        path = str(tmp_path / "s")
        async with await asyncio.start_unix_server(serve, path):
            async with await AdminClient.connect(path) as client:
                with pytest.raises(AdminError) as info:
                    await client.request("list")
            assert info.value.code is ErrorCode.FLOOD

    asyncio.run(run())
