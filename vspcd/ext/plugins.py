"""Custom backends, as vSPC.py had them: loading and isolation.

Boundary: finds a plugin class (`resolve`), builds it with `--backend-args`, and
connects it to the hub as one more hub observer and output listener (`PluginHost`);
docs/plugins.md is the plugin author's page, docs/architecture.md "Hub events" the
mechanism.  A plugin reads the hub through `HubView` and never changes it.

Spellings of `--backend NAME`, tried in this order after the built-ins (Memory, File,
Logging; vspcd/service/config.py):

1. ``module:Class`` (``module:outer.Inner`` also works) -- import `module`, take the
   attribute;
2. ``NAME`` -- the entry point `NAME` in group ``vspc.backends`` of an installed
   distribution (``[project.entry-points."vspc.backends"]``);
3. ``NAME`` -- vSPC.py's spelling: module ``vSPCBackendNAME`` on sys.path (PYTHONPATH),
   class ``vSPCBackendNAME`` in it.

A spelling that finds nothing, a module that fails to import, a missing class, a class
without the `Backend` methods, or one whose constructor does not take the one
`--backend-args` string are all `PluginError`: a usage error at start-up (exit status
2) naming what was tried.  So is an exception from the constructor, `load()` or
`start()`.  Afterwards the plugin cannot hurt the daemon: every callback runs inside
a guard that logs the first exception of each kind (callback name) with its
traceback, then counts (a summary line at 10, 100, 1000, ... and at shutdown), and
never lets it reach the hub.

Callbacks run on the event loop, synchronously, in the VM's data path for
`console_output`: they must be quick.  A plugin with slow work (a database, HTTP)
hands it to `Offload` (a bounded queue drained by a thread of its own) or to an
asyncio task; docs/plugins.md shows both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from vspc.common import vmware as vm
from vspc.common.admin import ConsoleInfo
from vspc.common.display import safe
from vspc.vspcd.hub.console import Console, ConsoleKey
from vspc.vspcd.hub.events import (
    ClientAttached,
    ClientDetached,
    ConsoleExpired,
    HubEvent,
    VmConnected,
    VmDisconnected,
)

if TYPE_CHECKING:
    from vspc.vspcd.hub.hub import Hub

log = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "HubView",
    "Offload",
    "PluginError",
    "PluginHost",
    "REQUIRED",
    "resolve",
]

ENTRY_POINT_GROUP = "vspc.backends"
VSPC_PY_PREFIX = "vSPCBackend"
REQUIRED = ("start", "console_up", "console_down", "console_output", "client_changed", "close")


class PluginError(Exception):
    """A plugin could not be loaded or started (a usage error: exit status 2)."""


class HubView:
    """What a plugin may read of the hub: consoles as the admin protocol's typed
    `ConsoleInfo` rows (times on the hub's monotonic clock).  No method changes
    anything."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def consoles(self) -> list[ConsoleInfo]:
        """Every console, in key order."""
        return [self._hub.console_info(c) for c in self._hub.consoles()]

    def console(self, key: ConsoleKey | str) -> ConsoleInfo | None:
        """One console by key (`ConsoleKey` or its string form), or None."""
        found = self._hub.console(key) if isinstance(key, ConsoleKey) else None
        if found is None and isinstance(key, str):
            found = next((c for c in self._hub.consoles() if str(c.key) == key), None)
        return None if found is None else self._hub.console_info(found)


@runtime_checkable
class Backend(Protocol):
    """The interface of a plugin backend; docs/plugins.md explains each method.

    The constructor takes one positional argument, the `--backend-args` string ("" if
    not given), which the plugin parses itself (vSPC.py did the same).  Optional
    methods, called if present: ``load() -> Iterable[tuple[str, str, int | None]]``
    (uuid, VM name, telnet port) once before `start`, to pre-seed consoles and their
    sticky ports; ``hub_event(event)`` with every typed hub event.
    """

    def start(self, hub: HubView) -> None:
        """Called once, after `load`, before any notification."""

    def console_up(self, event: VmConnected) -> None:
        """A VM connection became a console's active one (`event.info.port`...)."""

    def console_down(self, event: VmDisconnected | ConsoleExpired) -> None:
        """The console's VM left (`VmDisconnected`) or the console was forgotten."""

    def console_output(self, key: ConsoleKey, name: str, data: bytes) -> None:
        """Console output, as the VM sent it (the data path: be quick)."""

    def client_changed(self, event: ClientAttached | ClientDetached) -> None:
        """An operator attached or left."""

    def close(self) -> None:
        """Orderly shutdown, after every connection has gone."""


# ----------------------------------------------------------------- finding the class


def _import(module: str, spelling: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module or module.startswith(f"{exc.name}."):
            return None
        raise PluginError(f"--backend {spelling}: importing {module} failed: {exc}") from exc
    except Exception as exc:  # the plugin's own module is broken
        raise PluginError(
            f"--backend {spelling}: importing {module} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _attribute(module: Any, path: str, spelling: str, where: str) -> Any:
    found = module
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise PluginError(f"--backend {spelling}: {where} has no attribute {path!r}")
    return found


def _entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return next((p for p in points if p.name == name), None)


def _find(spelling: str) -> tuple[Any, str]:
    """(the plugin's class, where it came from)."""
    if ":" in spelling:
        module_name, _, path = spelling.partition(":")
        if not module_name or not path:
            raise PluginError(f"--backend {spelling}: expected module:Class")
        module = _import(module_name, spelling)
        if module is None:
            raise PluginError(f"--backend {spelling}: no module named {module_name!r}")
        return _attribute(module, path, spelling, f"module {module_name}"), spelling
    point = _entry_point(spelling)
    if point is not None:
        try:
            return point.load(), f"entry point {spelling} = {point.value}"
        except Exception as exc:
            raise PluginError(
                f"--backend {spelling}: entry point {ENTRY_POINT_GROUP}:{spelling} = "
                f"{point.value} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    name = VSPC_PY_PREFIX + spelling
    module = _import(name, spelling) if name.isidentifier() else None
    if module is None:
        raise PluginError(
            f"--backend {spelling!r}: unknown backend (choose Memory, File or Logging, or a "
            f"plugin: no {ENTRY_POINT_GROUP} entry point named {spelling!r} and no module "
            f"{name} on sys.path; module:Class names a class directly)"
        )
    return _attribute(module, name, spelling, f"module {name}"), f"{name}.{name}"


def resolve(spelling: str) -> tuple[Callable[[str], Any], str]:
    """The plugin class `spelling` names and a description of where it was found.

    Raises:
        PluginError: nothing found, a broken import, or not a `Backend` class.
    """
    cls, where = _find(spelling)
    if not callable(cls):
        raise PluginError(f"--backend {spelling}: {where} is not a class")
    missing = [m for m in REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise PluginError(
            f"--backend {spelling}: {where} is not a backend: no method {', '.join(missing)} "
            "(docs/plugins.md)"
        )
    try:
        inspect.signature(cls).bind("")
    except TypeError as exc:
        raise PluginError(
            f"--backend {spelling}: {where} must take one argument, the --backend-args "
            f"string: {exc}"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): the call will tell
        pass
    return cls, where


# ----------------------------------------------------------------- running it


class PluginHost:
    """One loaded plugin, wired to the hub as an observer and output listener.

    Args:
        spelling: the `--backend` value (for messages).
        args: the `--backend-args` string.
        hub: the hub to observe.
        bind: binds a telnet port for a pre-seeded console, preferring the one given
            (the daemon's `_bind_restored`, as the persist file uses).

    Raises:
        PluginError: resolving, constructing, `load()` or `start()` failed.
    """

    def __init__(
        self, spelling: str, args: str, hub: Hub, bind: Callable[[int | None], int | None]
    ) -> None:
        self.spelling = spelling
        self.errors: Counter[str] = Counter()
        cls, where = resolve(spelling)
        try:
            self.plugin = cls(args)
        except (Exception, SystemExit) as exc:  # SystemExit: the plugin's argparse
            raise PluginError(
                f"--backend {spelling}: {where}({args!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._hub = hub
        self._hub_event = getattr(self.plugin, "hub_event", None)
        seeded = self._load(bind)
        try:
            self.plugin.start(HubView(hub))
        except Exception as exc:
            raise PluginError(
                f"--backend {spelling}: start() failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._unsubscribe: Callable[[], None] | None = hub.subscribe(self._observe)
        self._remove_listener = hub.add_output_listener(self._output)
        log.info("backend %s loaded from %s (%d console(s) pre-seeded)", spelling, where, seeded)

    def _load(self, bind: Callable[[int | None], int | None]) -> int:
        load = getattr(self.plugin, "load", None)
        if load is None:
            return 0
        try:
            rows = list(load())
        except Exception as exc:
            raise PluginError(
                f"--backend {self.spelling}: load() failed: {type(exc).__name__}: {exc}"
            ) from exc
        seeded = 0
        for row in rows:
            try:
                uuid, name, port = row
                key = ConsoleKey(vm.canonical_uuid(str(uuid)))
                if port is not None and not isinstance(port, int):
                    raise ValueError(f"port {port!r} is not an integer")
            except (TypeError, ValueError) as exc:
                log.warning("backend %s: load(): skipping %s: %s", self.spelling, safe(row), exc)
                continue
            if self._hub.console(key) is not None:
                continue  # already known (the persist file restored it)
            self._hub.restore(key, str(name), bind(port), None)
            seeded += 1
        return seeded

    def _call(self, kind: str, method: Callable[..., object], *args: object) -> None:
        """Call a plugin method; its exceptions are logged (first of each kind) and
        counted, never raised."""
        try:
            method(*args)
        except Exception:
            self.errors[kind] += 1
            count = self.errors[kind]
            if count == 1:
                log.exception(
                    "backend %s: %s raised (further errors in %s are counted, not logged)",
                    self.spelling,
                    kind,
                    kind,
                )
            elif _is_power_of_ten(count):
                log.warning("backend %s: %s has raised %d times", self.spelling, kind, count)

    def _observe(self, event: HubEvent) -> None:
        plugin = self.plugin
        match event:
            case VmConnected():
                self._call("console_up", plugin.console_up, event)
            case VmDisconnected() | ConsoleExpired():
                self._call("console_down", plugin.console_down, event)
            case ClientAttached() | ClientDetached():
                self._call("client_changed", plugin.client_changed, event)
        if self._hub_event is not None:
            self._call("hub_event", self._hub_event, event)

    def _output(self, console: Console, data: bytes) -> None:
        self._call(
            "console_output", self.plugin.console_output, console.key, console.display_name, data
        )

    def close(self) -> None:
        """Disconnect from the hub, then `close()` the plugin (idempotent)."""
        if self._unsubscribe is None:
            return
        self._unsubscribe()
        self._remove_listener()
        self._unsubscribe = None
        self._call("close", self.plugin.close)
        for kind, count in sorted(self.errors.items()):
            log.warning("backend %s: %s raised %d time(s) in all", self.spelling, kind, count)


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


# ----------------------------------------------------------------- a helper for plugins

T = TypeVar("T")
_STOP = object()


class Offload(Generic[T]):
    """Run a plugin's slow `work(item)` on a thread of its own, never on the loop.

    `put(item)` is O(1) and never blocks: with `limit` items already waiting it drops
    the item and counts it in `dropped` (logged when dropping starts).  Exceptions
    from `work` are logged once, then counted in `errors`.  `close(timeout)` lets the
    thread finish what is queued, waiting at most `timeout` seconds.
    """

    def __init__(
        self, work: Callable[[T], object], *, limit: int = 10_000, name: str = "vspc-offload"
    ) -> None:
        self._work = work
        self._queue: queue.Queue[object] = queue.Queue(maxsize=limit)
        self.dropped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> bool:
        """Queue `item`; False if it was dropped (the queue is full)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not self.dropped:
                log.warning("%s: queue full; dropping work", self._thread.name)
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._work(item)  # type: ignore[arg-type]  # only put() adds items
            except Exception:
                self.errors += 1
                if self.errors == 1:
                    log.exception("%s: work failed (further failures counted)", self._thread.name)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued (at most `timeout` seconds), then stop the thread.

        Called from the plugin's `close()`, at shutdown: the only place a plugin may
        keep the loop waiting, and only this long."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("%s: still busy after %g s; abandoning it", self._thread.name, timeout)
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: still busy after %g s; abandoning it", self._thread.name, timeout)
