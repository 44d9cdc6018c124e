"""Typed views of what the daemon sends back: consoles, clients, hello, attach, events.

Boundary: each class reads one reply or event object (`from_json`, raising
AdminError BAD_FIELD on a malformed one and ignoring unknown keys, so an older client
keeps working with a newer daemon) and writes it back (`to_json`).  Part of the
sans-IO admin codec (`vspc.common.admin`, which re-exports it).  Spec:
docs/admin-protocol.md, "Consoles and clients", "Commands" and "Events".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vspc.common.admin import validate
from vspc.common.admin.enums import Access, ClientKind, Level, LockMode, VMotionPhase
from vspc.common.admin.messages import decode_bytes, encode_bytes, is_event

__all__ = [
    "AttachGrant",
    "ClientInfo",
    "ConsoleInfo",
    "Event",
    "Hello",
    "LatencyHistogram",
    "Stats",
    "TailChunk",
]


def _str(obj: Mapping[str, Any], name: str) -> str:
    return validate.require_str(obj, name, max_length=1 << 20, empty=True)


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return validate.optional_str(obj, name, max_length=1 << 20)


def _float(obj: Mapping[str, Any], name: str, default: float | None = None) -> float | None:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise validate.bad_field(obj, f"field {name!r} must be a number")
    return float(value)


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise validate.bad_field(obj, f"field {name!r} must be an object")


def _drop_none(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if obj.get(name) is None:
            obj.pop(name, None)
    return obj


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """One attached operator, as in `list`, `show` and `client_attached`.

    `since` is Unix time (seconds); `uid`/`user` come from SO_PEERCRED and are null
    for TCP and telnet peers.  `bytes_in` (typed by the client and accepted for the
    VM) and `bytes_out` (console output delivered to it, before any slow-reader drop)
    are optional: absent from older daemons.
    """

    id: int
    kind: ClientKind
    peer: str
    mode: LockMode
    readonly: bool
    since: float
    uid: int | None = None
    user: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ClientInfo:
        """Raises AdminError(BAD_FIELD) on a malformed object; unknown keys are ignored."""
        return cls(
            id=validate.require_int(obj, "id"),
            kind=validate.require_enum(obj, "kind", ClientKind),
            peer=_str(obj, "peer"),
            mode=validate.require_enum(obj, "mode", LockMode),
            readonly=validate.optional_bool(obj, "readonly"),
            since=_float(obj, "since", 0.0) or 0.0,
            uid=validate.optional_int(obj, "uid"),
            user=_opt_str(obj, "user"),
            bytes_in=validate.optional_int(obj, "bytes_in"),
            bytes_out=validate.optional_int(obj, "bytes_out"),
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "peer": self.peer,
            "mode": self.mode.value,
            "readonly": self.readonly,
            "since": self.since,
            "uid": self.uid,
            "user": self.user,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        return _drop_none(obj, "bytes_in", "bytes_out")


@dataclass(frozen=True, slots=True)
class ConsoleInfo:
    """One console, as a `list` row or (with the show-only fields) a `show` reply.

    `name` is the display name (VM name, or NAME_LABEL for one of several ports);
    `uuid` is in 8-4-4-4-12 form; `key` is the stable identifier to pass back as
    `vm`.  `expires_in` is null unless the console has neither VM nor clients.
    `created` and `last_output` (Unix times; `last_output` absent until the VM's
    first output) are optional: absent from older daemons.
    """

    key: str
    name: str
    uuid: str
    vm_name: str = ""
    label: str = ""
    port: int | None = None
    connected: bool = False
    clients: int = 0
    vmotion: VMotionPhase = VMotionPhase.NORMAL
    expires_in: float | None = None
    lock: LockMode | None = None
    lock_holder: ClientInfo | None = None
    attached: tuple[ClientInfo, ...] = ()
    created: float | None = None
    last_output: float | None = None
    # show only: absent from list rows
    service_uri: str | None = None
    vm_peer: str | None = None
    counters: Mapping[str, int] | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConsoleInfo:
        """Raises AdminError(BAD_FIELD) on a malformed object; unknown keys are ignored."""
        attached = obj.get("attached", [])
        if not isinstance(attached, list) or not all(isinstance(c, dict) for c in attached):
            raise validate.bad_field(obj, "field 'attached' must be a list of objects")
        holder = _object(obj, "lock_holder")
        counters = _object(obj, "counters")
        if counters is not None and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counters.values()
        ):
            raise validate.bad_field(obj, "field 'counters' must map names to integers")
        lock = validate.optional_enum(obj, "lock", LockMode)
        return cls(
            key=_str(obj, "key"),
            name=_str(obj, "name"),
            uuid=_str(obj, "uuid"),
            vm_name=validate.optional_str(obj, "vm_name", "", max_length=1 << 20) or "",
            label=validate.optional_str(obj, "label", "", max_length=1 << 20) or "",
            port=validate.optional_int(obj, "port"),
            connected=validate.optional_bool(obj, "connected"),
            clients=validate.optional_int(obj, "clients", 0, minimum=0) or 0,
            vmotion=validate.optional_enum(obj, "vmotion", VMotionPhase, VMotionPhase.NORMAL)
            or VMotionPhase.NORMAL,
            expires_in=_float(obj, "expires_in"),
            lock=lock,
            lock_holder=None if holder is None else ClientInfo.from_json(holder),
            attached=tuple(ClientInfo.from_json(c) for c in attached),
            created=_float(obj, "created"),
            last_output=_float(obj, "last_output"),
            service_uri=_opt_str(obj, "service_uri"),
            vm_peer=_opt_str(obj, "vm_peer"),
            counters=None if counters is None else dict(counters),
        )

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "vm_name": self.vm_name,
            "uuid": self.uuid,
            "label": self.label,
            "port": self.port,
            "connected": self.connected,
            "clients": self.clients,
            "vmotion": self.vmotion.value,
            "expires_in": self.expires_in,
            "lock": None if self.lock is None else self.lock.value,
            "lock_holder": None if self.lock_holder is None else self.lock_holder.to_json(),
            "attached": [c.to_json() for c in self.attached],
            "created": self.created,
            "last_output": self.last_output,
            "service_uri": self.service_uri,
            "vm_peer": self.vm_peer,
            "counters": None if self.counters is None else dict(self.counters),
        }
        return _drop_none(obj, "created", "last_output", "service_uri", "vm_peer", "counters")


@dataclass(frozen=True, slots=True)
class Hello:
    """The `hello` reply: who the daemon is, who the peer is and what it may do.

    `level` is the peer's level on a console no access rule names (docs/admin-protocol.md,
    "Access control"); `groups` its group names (gids without a name as numbers), from
    its own credentials.  Both are absent from older daemons.
    """

    protocol: int
    version: str
    capabilities: tuple[str, ...]
    access: Access
    uid: int | None = None
    user: str | None = None
    gid: int | None = None
    groups: tuple[str, ...] = ()
    level: Level | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Hello:
        caps = obj.get("capabilities", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise validate.bad_field(obj, "field 'capabilities' must be a list of strings")
        groups = obj.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise validate.bad_field(obj, "field 'groups' must be a list of strings")
        return cls(
            protocol=validate.require_int(obj, "protocol"),
            version=_str(obj, "version"),
            capabilities=tuple(caps),
            access=validate.require_enum(obj, "access", Access),
            uid=validate.optional_int(obj, "uid"),
            user=_opt_str(obj, "user"),
            gid=validate.optional_int(obj, "gid"),
            groups=tuple(groups),
            level=validate.optional_enum(obj, "level", Level, None),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "version": self.version,
            "capabilities": list(self.capabilities),
            "access": self.access.value,
            "uid": self.uid,
            "user": self.user,
        }
        if self.level is not None:
            out.update(gid=self.gid, groups=list(self.groups), level=self.level.value)
        return out


@dataclass(frozen=True, slots=True)
class AttachGrant:
    """The `attach` success reply; raw console bytes follow its line."""

    key: str
    name: str
    client: int
    mode: LockMode
    readonly: bool

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AttachGrant:
        return cls(
            key=_str(obj, "key"),
            name=_str(obj, "name"),
            client=validate.require_int(obj, "client"),
            mode=validate.require_enum(obj, "mode", LockMode),
            readonly=validate.optional_bool(obj, "readonly"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "client": self.client,
            "mode": self.mode.value,
            "readonly": self.readonly,
        }


@dataclass(frozen=True, slots=True)
class TailChunk:
    """The `tail` reply: the last bytes of a console's output."""

    key: str
    name: str
    data: bytes

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TailChunk:
        return cls(_str(obj, "key"), _str(obj, "name"), decode_bytes(obj.get("data_b64")))

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "data_b64": encode_bytes(self.data)}


@dataclass(frozen=True, slots=True)
class Event:
    """A pushed message: ``{"event": ..., "key": ..., "name": ..., **fields}``.

    `event` stays a plain string so a client keeps working when a newer daemon adds
    events (compare with `EventName` members, which are strings).  The typed
    accessors decode the payloads docs/admin-protocol.md defines.
    """

    event: str
    key: str | None = None
    name: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        """Raises AdminError(BAD_FIELD) if "event", "key" or "name" have the wrong type."""
        if not is_event(obj):
            raise validate.bad_field(obj, "an event has a string 'event' and no 'ok'")
        rest = {k: v for k, v in obj.items() if k not in ("event", "key", "name")}
        return cls(_str(obj, "event"), _opt_str(obj, "key"), _opt_str(obj, "name"), rest)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"event": self.event}
        if self.key is not None:
            obj["key"] = self.key
        if self.name is not None:
            obj["name"] = self.name
        obj.update(self.fields)
        return obj

    @property
    def data(self) -> bytes:
        """The console bytes of an `output` event.

        Raises:
            AdminError: BAD_FIELD if there is no valid "data_b64".
        """
        return decode_bytes(self.fields.get("data_b64"))

    @property
    def client(self) -> ClientInfo | None:
        """The client object of `client_attached` (None for other events)."""
        value = self.fields.get("client")
        return ClientInfo.from_json(value) if isinstance(value, dict) else None

    @property
    def console(self) -> ConsoleInfo | None:
        """The console row of `vm_connected` (None for other events)."""
        value = self.fields.get("console")
        return ConsoleInfo.from_json(value) if isinstance(value, dict) else None


def _counts(obj: Mapping[str, Any], name: str) -> dict[str, int]:
    """An object of non-negative integer counts keyed by label (`{"telnet": 3}`)."""
    value = _object(obj, name) or {}
    for key, count in value.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise validate.bad_field(obj, f"field {name!r}: {key!r} must be a non-negative integer")
    return dict(value)


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """A histogram as in Prometheus: cumulative counts at each upper bound (seconds).

    `buckets` holds `(le, count)` pairs in increasing `le` order, each count the
    observations <= le (so non-decreasing); the implicit `+Inf` bucket is `count`.
    """

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LatencyHistogram:
        raw = obj.get("buckets", [])
        if not isinstance(raw, list):
            raise validate.bad_field(obj, "field 'buckets' must be a list")
        buckets: list[tuple[float, int]] = []
        for pair in raw:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or isinstance(pair[0], bool)
                or not isinstance(pair[0], int | float)
                or isinstance(pair[1], bool)
                or not isinstance(pair[1], int)
            ):
                raise validate.bad_field(
                    obj, "field 'buckets' must hold [upper bound, count] pairs"
                )
            buckets.append((float(pair[0]), pair[1]))
        return cls(
            tuple(buckets), _float(obj, "sum", 0.0) or 0.0, validate.require_int(obj, "count")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": [[le, count] for le, count in self.buckets],
            "sum": self.sum,
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class Stats:
    """The `stats` reply: the daemon's counters and gauges (docs/admin-protocol.md).

    The same numbers `GET /metrics` exposes (docs/operations.md, "Metrics" maps each
    field to its Prometheus series).  Counters count since the daemon started
    (`uptime` seconds ago); the `*_by_*` style objects are keyed by the label value
    (`consoles` by state, `clients` by kind, vMotion outcomes by reason).
    """

    uptime: float
    consoles: dict[str, int]  # connected, disconnected, pending, peered
    clients: dict[str, int]  # telnet, attach
    bytes_vm_to_clients: int
    bytes_clients_to_vm: int
    vmotions_completed: int
    vmotions_abandoned: int
    vmotions_aborted: dict[str, int]  # by AbortReason name
    vmotions_notnow: dict[str, int]  # by RefusalReason name
    goahead_latency: LatencyHistogram
    client_bytes_dropped: int  # console output lost to slow readers
    input_bytes_dropped: dict[str, int]  # typed bytes that never reached the VM, by reason
    held_input_bytes: int
    fds_in_use: int
    fd_limit: int
    admin_refused: int
    tls_handshakes: dict[str, int]  # started, completed, failed, slot_timeouts, ...
    listener_backoffs: int
    connections_refused: dict[str, int]  # allow_list, unidentified_limit
    unidentified_dropped: int  # not identified within --ident-timeout / bytes
    takeovers_refused: int
    vms_replaced: int
    vm_connections: int
    vm_disconnections: int
    loop_lag: float  # seconds the event loop's last heartbeat came late
    console_alerts: dict[str, int] = field(default_factory=dict)  # by alert rule name

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Stats:
        """Each field read by its declared type: `int` a non-negative counter, `float`
        seconds (0.0 if absent), `dict[str, int]` counts by label."""
        latency = _object(obj, "goahead_latency")
        if latency is None:
            raise validate.bad_field(obj, "field 'goahead_latency' is required")
        values: dict[str, Any] = {"goahead_latency": LatencyHistogram.from_json(latency)}
        for name, spec in cls.__dataclass_fields__.items():
            match spec.type:  # a string: this module has `from __future__ import annotations`
                case "int":
                    values[name] = validate.require_int(obj, name, minimum=0)
                case "float":
                    values[name] = _float(obj, name, 0.0) or 0.0
                case "dict[str, int]":
                    values[name] = _counts(obj, name)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            obj[name] = value.to_json() if isinstance(value, LatencyHistogram) else value
        return obj
