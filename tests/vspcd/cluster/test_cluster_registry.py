"""vspcd/cluster/registry.py against a real redis-server: the compare-and-set scripts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.vspcd.cluster.cluster_kit import RedisServer, needs_redis
from vspc.vspcd.cluster.registry import ConsoleRecord, Registry, RegistryUnavailable

pytestmark = needs_redis

KEY = "0123456789abcdeffedcba9800000000"


def run(tmp_path: Path, body: Callable[[RedisServer], Awaitable[None]]) -> None:
    async def main() -> None:
        redis = RedisServer(tmp_path)
        await redis.start()
        try:
            await body(redis)
        finally:
            redis.stop()

    asyncio.run(main())


async def claim(
    reg: Registry, key: str = KEY, bad: int | None = None
) -> tuple[bool, str, int | None]:
    c = await reg.claim(
        key, uuid=key, label="", name="vm", uri="vSPC.py", first_port=7000, bad_port=bad
    )
    return c.claimed, c.owner, c.port


def test_claims_ports_and_takeover(tmp_path: Path) -> None:
    async def body(redis: RedisServer) -> None:
        a, b = Registry(redis.url, "a"), Registry(redis.url, "b")
        assert await a.renew_lease("127.0.0.1:1", 0.3, 1) is False  # first: taken
        assert await a.renew_lease("127.0.0.1:1", 0.3, 1) is True
        await b.renew_lease("127.0.0.1:2", 30, 2)
        assert await claim(a) == (True, "a", 7000)
        assert await claim(a, "11" * 16) == (True, "a", 7001)  # ports are unique
        assert await claim(b) == (False, "a", 7000)  # a is alive: b must relay
        assert await b.node_address("a") == "127.0.0.1:1"
        await asyncio.sleep(0.4)  # a's lease runs out (a died)
        assert await b.node_address("a") is None
        taken = await b.claim(KEY, uuid=KEY, label="", name="", uri="", first_port=7000)
        assert (taken.claimed, taken.port, taken.previous) == (True, 7000, "a")  # same port
        record = await b.console(KEY)
        assert record is not None and (record.owner, record.name) == ("b", "vm")
        # A port this node cannot bind is replaced, never reused.
        assert await claim(b, KEY, bad=7000) == (True, "b", 7002)
        # Released ports come back, lowest first.
        assert await b.release(KEY) is True
        assert await b.console(KEY) is None
        assert await claim(b, "22" * 16) == (True, "b", 7002)
        for reg in (a, b):
            await reg.close()

    run(tmp_path, body)


def test_update_and_release_need_ownership(tmp_path: Path) -> None:
    async def body(redis: RedisServer) -> None:
        a, b = Registry(redis.url, "a"), Registry(redis.url, "b")
        await a.renew_lease("x:1", 30, 1)
        await claim(a)
        assert await b.update(KEY, state="connected") is False
        assert await b.release(KEY) is False
        assert await a.update(KEY, state="vmotion", name="web") is True
        record = await a.console(KEY)
        assert record is not None and (record.state, record.name) == ("vmotion", "web")
        assert record.last_seen > 0
        await a.put_cookie(b"\x01\xff", 30)
        assert await b.cookie_owner(b"\x01\xff") == "a"
        await a.drop_cookie(b"\x01\xff")
        assert await b.cookie_owner(b"\x01\xff") is None
        for reg in (a, b):
            await reg.close()

    run(tmp_path, body)


def test_republish_after_redis_lost_everything(tmp_path: Path) -> None:
    async def body(redis: RedisServer) -> None:
        a, b = Registry(redis.url, "a"), Registry(redis.url, "b")
        record = ConsoleRecord(KEY, KEY, "", "web", 7005, "a", "connected", 0.0, "vSPC.py")
        await a.renew_lease("x:1", 30, 1)
        assert await a.republish(record) == "a"
        # The port counter moved past the republished port: no new console gets it.
        await b.renew_lease("x:2", 30, 2)
        assert (await claim(b, "33" * 16))[2] == 7006
        # Another live owner wins; a port held by another console is reported.
        assert await b.republish(record) == "a"
        clash = ConsoleRecord("44" * 16, "44" * 16, "", "x", 7005, "b", "", 0.0, "")
        assert await b.republish(clash) == f"port:{KEY}"
        for reg in (a, b):
            await reg.close()

    run(tmp_path, body)


def test_orphans_of_dead_nodes_expire(tmp_path: Path) -> None:
    async def body(redis: RedisServer) -> None:
        a, b = Registry(redis.url, "a"), Registry(redis.url, "b")
        await a.renew_lease("x:1", 0.2, 1)
        await b.renew_lease("x:2", 30, 2)
        await claim(a)
        await claim(b, "55" * 16)
        assert await b.expire_orphans(0.0) == 0  # a is alive
        await asyncio.sleep(0.3)
        assert await b.expire_orphans(3600.0) == 0  # dead, but seen recently
        assert await b.expire_orphans(0.0) == 1  # dead and stale: gone, port freed
        assert [r.key for r in await b.consoles()] == ["55" * 16]
        assert (await claim(b, "66" * 16))[2] == 7000
        for reg in (a, b):
            await reg.close()

    run(tmp_path, body)


def test_unreachable_redis_is_one_exception(tmp_path: Path) -> None:
    async def body(redis: RedisServer) -> None:
        reg = Registry(redis.url, "a", timeout=0.5)
        redis.stop()
        for call in (reg.ping(), reg.consoles(), reg.cookie_owner(b"x"), reg.live_nodes()):
            try:
                await call
            except RegistryUnavailable as exc:
                assert "registry unreachable" in str(exc)
            else:
                raise AssertionError("no RegistryUnavailable")
        await reg.close()

    run(tmp_path, body)


def test_foreign_keys_under_the_prefix_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(redis: RedisServer) -> None:
        import redis.asyncio as aioredis

        a = Registry(redis.url, "a")
        await a.renew_lease("x:1", 30, 1)
        await claim(a)
        raw = aioredis.Redis.from_url(redis.url, decode_responses=True)
        await raw.set("vspc:console:junk", "x")  # a string where a console hash belongs
        await raw.sadd("vspc:consoles", "junk", "nokey")
        await raw.hset("vspc:console:nokey", "colour", "blue")  # a hash, but not a console
        await raw.hset("vspc:node:junk", "a", "b")  # a hash where a lease string belongs
        await raw.set("vspc:node:junk2", "not json")
        with caplog.at_level(logging.WARNING, logger="vspc.vspcd.cluster.registry"):
            for _ in range(3):
                assert [r.key for r in await a.consoles()] == [KEY]
                assert await a.live_nodes() == {"a": "x:1"}
                assert await a.node_address("junk") is None
                assert await a.expire_orphans(0.0) == 0
        warned = sorted(r.getMessage().split()[2] for r in caplog.records)
        # Once per key, however often it is read.
        assert warned == [
            "vspc:console:junk", "vspc:console:nokey", "vspc:node:junk", "vspc:node:junk2"
        ]  # fmt: skip
        assert await raw.get("vspc:console:junk") == "x"  # never deleted: not ours
        await raw.aclose()
        await a.close()

    run(tmp_path, body)
