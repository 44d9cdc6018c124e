"""The shared registry of cluster mode: Redis keys and the compare-and-set scripts.

Spec: docs/cluster.md ("Registry schema").  This is
the only module that talks to Redis; it imports `redis` (the optional extra
`vspc[cluster]`), so only cluster mode imports it.

Schema (every key under `prefix`, default "vspc:"; standalone Redis or Valkey):

    node:<id>        string, JSON {"address", "pid", "since"}, TTL = the lease
    console:<key>    hash: uuid label name port owner state last_seen uri
    consoles         set of console keys
    port:<n>         the console key holding telnet port n (cluster-wide unique)
    next_port        counter: the highest telnet port ever handed out
    free_ports       sorted set of released ports, reused lowest first
    cookie:<hex>     the node owning an in-flight vMotion, TTL = abandon grace

Every change of ownership is one Lua script, so it is atomic against every other
node: a console is claimed only if it has no owner, is already ours, or its owner's
lease key has expired (the owner is dead).  Nothing is ever wiped at start (the bug
docs/protocol.md §5 blames node-vspc for); a node that finds the registry empty, after a
Redis restart, republishes what it serves (`Node.reconcile`).

Every method raises `RegistryUnavailable` when Redis cannot be reached, so callers
handle one exception type whatever the client library's is.  A key under the prefix
that is not what the schema says (another program's, or a hand-made one: a string
where a console hash belongs, a hash where a lease belongs) is skipped with a warning,
at most one per key per `FOREIGN_WARN_PERIOD`: it must not make `list` fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

__all__ = [
    "Claim",
    "ConsoleRecord",
    "Registry",
    "RegistryUnavailable",
]


POOL_SIZE = 8  # Redis connections per node
FOREIGN_WARN_PERIOD = 300.0  # seconds between warnings about one foreign key
_FOREIGN_REMEMBERED = 1000  # keys whose last warning time is kept (bounded memory)

log = logging.getLogger(__name__)


class RegistryUnavailable(Exception):
    """Redis could not be reached or answered with an error; the reason is the text."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of `Registry.claim`: ours (with the console's sticky port), or
    owned by another live node."""

    claimed: bool
    owner: str
    port: int | None
    previous: str  # the former owner when we took it over from a dead node, else ""


@dataclass(frozen=True, slots=True)
class ConsoleRecord:
    key: str
    uuid: str
    label: str
    name: str
    port: int | None
    owner: str
    state: str
    last_seen: float
    uri: str


# KEYS: none (standalone Redis: the scripts build key names from the prefix).
# ARGV: prefix, key, me, now, first_port, uuid, label, name, uri, bad_port, offer_port
_CLAIM = """
local p, key, me = ARGV[1], ARGV[2], ARGV[3]
local c = p .. 'console:' .. key
local owner = redis.call('HGET', c, 'owner')
if owner and owner ~= me and redis.call('EXISTS', p .. 'node:' .. owner) == 1 then
  return {0, owner, redis.call('HGET', c, 'port') or '', ''}
end
local port = redis.call('HGET', c, 'port')
if port and port == ARGV[10] then
  -- this node could not bind it: leave that port out of circulation
  redis.call('HDEL', c, 'port')
  port = false
end
if not port and ARGV[11] ~= '' then
  -- a port the claiming node has bound itself (the one handed out is busy there):
  -- taken unless another console holds it
  local holder = redis.call('GET', p .. 'port:' .. ARGV[11])
  if not holder or holder == key then
    port = ARGV[11]
    redis.call('SET', p .. 'port:' .. port, key)
    redis.call('ZREM', p .. 'free_ports', port)
    local top = tonumber(redis.call('GET', p .. 'next_port') or '0')
    if tonumber(port) > top then redis.call('SET', p .. 'next_port', port) end
  end
end
if not port then
  local free = redis.call('ZPOPMIN', p .. 'free_ports')
  if #free > 0 then
    port = free[1]
  else
    redis.call('SETNX', p .. 'next_port', tonumber(ARGV[5]) - 1)
    port = tostring(redis.call('INCR', p .. 'next_port'))
  end
  redis.call('SET', p .. 'port:' .. port, key)
end
redis.call('HSET', c, 'owner', me, 'port', port, 'uuid', ARGV[6], 'label', ARGV[7],
  'last_seen', ARGV[4])
if ARGV[8] ~= '' then redis.call('HSET', c, 'name', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', c, 'uri', ARGV[9]) end
redis.call('SADD', p .. 'consoles', key)
local previous = ''
if owner and owner ~= me then previous = owner end
return {1, me, port, previous}
"""

# Republish one console after the registry lost it (Redis restart) or to confirm it.
# ARGV: prefix, key, me, now, port, uuid, label, name, uri, state
_ASSERT = """
local p, key, me = ARGV[1], ARGV[2], ARGV[3]
local c = p .. 'console:' .. key
local owner = redis.call('HGET', c, 'owner')
if owner and owner ~= me and redis.call('EXISTS', p .. 'node:' .. owner) == 1 then
  return owner
end
local port = ARGV[5]
if port ~= '' then
  local holder = redis.call('GET', p .. 'port:' .. port)
  if holder and holder ~= key then return 'port:' .. holder end
  redis.call('SET', p .. 'port:' .. port, key)
  redis.call('ZREM', p .. 'free_ports', port)
  local top = tonumber(redis.call('GET', p .. 'next_port') or '0')
  if tonumber(port) > top then redis.call('SET', p .. 'next_port', port) end
  redis.call('HSET', c, 'port', port)
end
redis.call('HSET', c, 'owner', me, 'uuid', ARGV[6], 'label', ARGV[7], 'name', ARGV[8],
  'uri', ARGV[9], 'state', ARGV[10], 'last_seen', ARGV[4])
redis.call('SADD', p .. 'consoles', key)
return me
"""

# ARGV: prefix, key, me, field1, value1, ...
_UPDATE = """
local p, key, me = ARGV[1], ARGV[2], ARGV[3]
local c = p .. 'console:' .. key
if redis.call('HGET', c, 'owner') ~= me then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', c, ARGV[i], ARGV[i + 1]) end
return 1
"""

# Forget consoles whose owner is dead and which nobody has seen since `cutoff`
# (the cluster's counterpart of a single node's console expiry).
# ARGV: prefix, cutoff
_EXPIRE_ORPHANS = """
local p, cutoff = ARGV[1], tonumber(ARGV[2])
local gone = 0
for _, key in ipairs(redis.call('SMEMBERS', p .. 'consoles')) do
  local c = p .. 'console:' .. key
  -- A key that is not a console hash (another program's) is skipped, as `consoles()` does.
  local ours = redis.call('TYPE', c).ok == 'hash' and redis.call('HEXISTS', c, 'uuid') == 1
  local owner = ours and redis.call('HGET', c, 'owner')
  local seen = ours and tonumber(redis.call('HGET', c, 'last_seen') or '0') or 0
  if ours and (not owner or redis.call('EXISTS', p .. 'node:' .. owner) == 0) and seen < cutoff then
    local port = redis.call('HGET', c, 'port')
    if port and redis.call('GET', p .. 'port:' .. port) == key then
      redis.call('DEL', p .. 'port:' .. port)
      redis.call('ZADD', p .. 'free_ports', tonumber(port), port)
    end
    redis.call('DEL', c)
    redis.call('SREM', p .. 'consoles', key)
    gone = gone + 1
  end
end
return gone
"""

# ARGV: prefix, key, me
_RELEASE = """
local p, key, me = ARGV[1], ARGV[2], ARGV[3]
local c = p .. 'console:' .. key
if redis.call('HGET', c, 'owner') ~= me then return 0 end
local port = redis.call('HGET', c, 'port')
if port then
  if redis.call('GET', p .. 'port:' .. port) == key then
    redis.call('DEL', p .. 'port:' .. port)
    redis.call('ZADD', p .. 'free_ports', tonumber(port), port)
  end
end
redis.call('DEL', c)
redis.call('SREM', p .. 'consoles', key)
return 1
"""


class Registry:
    """Typed, async access to the registry of one cluster.

    Args:
        url: redis://HOST:PORT/DB (--cluster).
        node: this node's id (--node-id).
        prefix: key prefix; tests use one per cluster.
        timeout: seconds any one Redis call may take before it counts as unreachable.
    """

    def __init__(self, url: str, node: str, *, prefix: str = "vspc:", timeout: float = 1.0):
        self.node = node
        self.prefix = prefix
        # A bounded pool: a burst of claims (hundreds of VMs reconnecting after a
        # node died) queues for a few connections instead of opening one each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=timeout * 5,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._claim = self._redis.register_script(_CLAIM)
        self._assert = self._redis.register_script(_ASSERT)
        self._update = self._redis.register_script(_UPDATE)
        self._release = self._redis.register_script(_RELEASE)
        self._expire_orphans = self._redis.register_script(_EXPIRE_ORPHANS)
        self._warned: dict[str, float] = {}  # foreign key -> when it was last warned about

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose(close_connection_pool=True)

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"registry unreachable ({what}): {exc}") from None

    # -- node leases ------------------------------------------------------------------

    async def renew_lease(self, address: str, ttl: float, pid: int) -> bool:
        """Extend this node's lease; False if it had expired (or Redis lost it), in which
        case it is taken again here and the caller should reconcile."""
        key = f"{self.prefix}node:{self.node}"
        ms = max(1, int(ttl * 1000))
        if await self._call("lease", self._redis.pexpire(key, ms)):
            return True
        value = json.dumps({"address": address, "pid": pid, "since": time.time()})
        await self._call("lease", self._redis.set(key, value, px=ms))
        return False

    async def drop_lease(self) -> None:
        """A clean shutdown: other nodes may take our consoles over at once."""
        await self._call("lease", self._redis.delete(f"{self.prefix}node:{self.node}"))

    async def node_address(self, node: str) -> str | None:
        """Where `node` listens for inter-node links, or None if its lease expired."""
        key = f"{self.prefix}node:{node}"
        try:
            value = await self._redis.get(key)
        except ResponseError as exc:  # WRONGTYPE: not a lease
            value = exc
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"registry unreachable (lease): {exc}") from None
        return _lease_address(value)

    async def live_nodes(self) -> dict[str, str]:
        """Every node whose lease is current -> its inter-node address."""
        nodes: dict[str, str] = {}
        try:
            keys = [k async for k in self._redis.scan_iter(match=f"{self.prefix}node:*", count=200)]
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"registry unreachable (nodes): {exc}") from None
        if not keys:
            return nodes
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await self._call("nodes", pipe.execute(raise_on_error=False))
        for key, value in zip(keys, values, strict=True):
            address = _lease_address(value)
            if address is None:
                if value is not None:  # None: the lease expired since the scan
                    self._foreign(key, "not a node lease")
                continue
            nodes[key[len(self.prefix) + 5 :]] = address
        return nodes

    # -- consoles ---------------------------------------------------------------------

    async def claim(
        self,
        key: str,
        *,
        uuid: str,
        label: str,
        name: str,
        uri: str,
        first_port: int,
        bad_port: int | None = None,
        offer_port: int | None = None,
    ) -> Claim:
        """Take `key` for this node unless another live node owns it; a console new to
        the cluster gets a telnet port no other console has (`bad_port`: the one this
        node just failed to bind, to be replaced, by `offer_port` if no other console
        holds that one: a port this node has bound)."""
        args: list[str | int] = [self.prefix, key, self.node, f"{time.time():.3f}", first_port]
        args += [uuid, label, name, uri, "" if bad_port is None else str(bad_port)]
        args += ["" if offer_port is None else str(offer_port)]
        claimed, owner, port, previous = await self._call("claim", self._claim(args=args))
        return Claim(bool(claimed), owner, int(port) if port else None, previous)

    async def republish(self, record: ConsoleRecord) -> str:
        """Assert that this node serves `record` (reconciliation); returns the owner
        (us) or another live owner that won it meanwhile, or "port:KEY" when its
        telnet port is held by another console."""
        r = record
        port = "" if r.port is None else str(r.port)
        args = [self.prefix, r.key, self.node, f"{time.time():.3f}", port, r.uuid, r.label]
        args += [r.name, r.uri, r.state]
        return str(await self._call("republish", self._assert(args=args)))

    async def update(self, key: str, **fields: str) -> bool:
        """Set fields of a console we own (and its last_seen); False if we do not own
        it any more."""
        args: list[str] = [self.prefix, key, self.node, "last_seen", f"{time.time():.3f}"]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._call("update", self._update(args=args)))

    async def release(self, key: str) -> bool:
        """Forget a console we own (it expired); its port goes back to the pool."""
        return bool(await self._call("release", self._release(args=[self.prefix, key, self.node])))

    async def expire_orphans(self, older_than: float) -> int:
        """Forget consoles of dead nodes not seen for `older_than` seconds (their VMs
        never came back); returns how many.  Any node may run it: it is idempotent."""
        cutoff = f"{time.time() - older_than:.3f}"
        return int(await self._call("expire", self._expire_orphans(args=[self.prefix, cutoff])))

    async def console(self, key: str) -> ConsoleRecord | None:
        fields = await self._call("read", self._redis.hgetall(f"{self.prefix}console:{key}"))
        return _record(key, fields) if fields else None

    async def consoles(self) -> list[ConsoleRecord]:
        """Every console in the cluster, in key order."""
        keys = sorted(await self._call("read", self._redis.smembers(f"{self.prefix}consoles")))
        if not keys:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(f"{self.prefix}console:{key}")
        rows = await self._call("read", pipe.execute(raise_on_error=False))
        records = []
        for key, fields in zip(keys, rows, strict=True):
            if isinstance(fields, dict) and fields.get("uuid"):
                records.append(_record(key, fields))
            elif fields:  # a string, a list, a hash without a uuid: not a console of ours
                self._foreign(f"{self.prefix}console:{key}", "not a console hash")
        return records

    def _foreign(self, key: str, what: str) -> None:
        """Warn that `key` is skipped, once per FOREIGN_WARN_PERIOD per key."""
        now = time.monotonic()
        last = self._warned.get(key)
        if last is not None and now - last < FOREIGN_WARN_PERIOD:
            return
        if len(self._warned) >= _FOREIGN_REMEMBERED:
            self._warned.clear()
        self._warned[key] = now
        log.warning(
            "registry key %s is %s (another program's?); skipped, warned again in %g s",
            key,
            what,
            FOREIGN_WARN_PERIOD,
        )

    # -- vMotion cookies ----------------------------------------------------------------

    async def put_cookie(self, cookie: bytes, ttl: float) -> None:
        key = f"{self.prefix}cookie:{cookie.hex()}"
        await self._call("cookie", self._redis.set(key, self.node, px=max(1, int(ttl * 1000))))

    async def cookie_owner(self, cookie: bytes) -> str | None:
        return await self._call("cookie", self._redis.get(f"{self.prefix}cookie:{cookie.hex()}"))  # type: ignore[no-any-return]

    async def drop_cookie(self, cookie: bytes) -> None:
        await self._call("cookie", self._redis.delete(f"{self.prefix}cookie:{cookie.hex()}"))

    async def ping(self) -> None:
        await self._call("ping", self._redis.ping())


def _lease_address(value: object) -> str | None:
    """The address in a node lease's JSON; None for anything else (no live node)."""
    if not isinstance(value, str):
        return None
    try:
        return str(json.loads(value)["address"])
    except (ValueError, KeyError, TypeError):
        return None


def _record(key: str, fields: dict[str, str]) -> ConsoleRecord:
    port = fields.get("port", "")
    try:
        seen = float(fields.get("last_seen", "0"))
    except ValueError:
        seen = 0.0
    return ConsoleRecord(
        key=key,
        uuid=fields.get("uuid", ""),
        label=fields.get("label", ""),
        name=fields.get("name", ""),
        port=int(port) if port.isdigit() else None,
        owner=fields.get("owner", ""),
        state=fields.get("state", ""),
        last_seen=seen,
        uri=fields.get("uri", ""),
    )
