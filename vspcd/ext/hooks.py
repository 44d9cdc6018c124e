"""Hooks: run `--hook-command` on console events (docs/operations.md §6, hooks).

Boundary: a hub observer (`hub.subscribe(runner)`, docs/architecture.md "Hub events")
that turns selected typed events into `VSPC_*` environments (vspcd/ext/hookenv.py) and runs
the command for each as an asyncio subprocess.  It never blocks the event loop and
never changes hub state; the hub only sees an observer that returns at once.

Theory of operation:

- The command is split with `shlex` once, at configuration time (by the service,
  vspcd/service/settings.py), and run with
  `create_subprocess_exec`: no shell unless the operator writes ``sh -c '...'``.  The
  daemon's environment is passed on (PATH, ...) with any inherited `VSPC_*` removed
  and the event's variables added.  stdin is /dev/null.
- At most `concurrency` hooks run at once; further events wait in a FIFO of at most
  `queue` entries.  When it is full, new events are dropped: one warning when dropping
  starts and one with the count once the queue has drained again (never a line per
  event: a flapping VM must not flood the log).
- Each run has `timeout` seconds.  Hooks start in their own session (process group),
  so on timeout the whole group gets SIGKILL, including a shell's children.
- stdout and stderr are read as they come (a chatty hook never blocks on a full pipe)
  and only their last `TAIL` bytes are kept.  A failure -- exit status, signal,
  timeout, or a command that cannot be started -- is logged with the stderr tail
  rendered by `safe_bytes` (a hook may echo a VM name).
- `close(grace)` (orderly shutdown) drops what is queued, waits up to `grace` seconds
  for running hooks, then kills the process groups of those still running.
- `reconfigure(settings)` (SIGHUP reload) applies at once to new events; a larger
  `concurrency` starts queued hooks immediately.  Hooks already queued keep the
  command they were queued with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vspc.common.display import safe, safe_bytes
from vspc.vspcd.ext.hookenv import PREFIX, environment, hook_event
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import HubEvent

log = logging.getLogger(__name__)

__all__ = [
    "HOOK_CONCURRENCY",
    "HOOK_QUEUE",
    "HOOK_TIMEOUT",
    "HookRunner",
    "HookSettings",
]

HOOK_TIMEOUT = 30.0
HOOK_CONCURRENCY = 4
HOOK_QUEUE = 256
TAIL = 2048  # bytes of stdout/stderr kept per run
_REAP = 2.0  # seconds to wait for a killed group's pipes to close


@dataclass(frozen=True, slots=True)
class HookSettings:
    """What runs, for which events, and within which bounds."""

    argv: tuple[str, ...] = ()  # empty: hooks off
    events: frozenset[str] | None = None  # None: every hook event
    timeout: float = HOOK_TIMEOUT
    concurrency: int = HOOK_CONCURRENCY
    queue: int = HOOK_QUEUE


# ----------------------------------------------------------------- running


class _Tail:
    """The last `TAIL` bytes read from a pipe (read to EOF so the hook never blocks)."""

    def __init__(self) -> None:
        self.data = b""

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.data = (self.data + chunk)[-TAIL:]

    def text(self) -> str:
        data = self.data.strip()
        return safe_bytes(data) if data else "(nothing)"


@dataclass(frozen=True, slots=True)
class _Job:
    argv: tuple[str, ...]
    event: str
    key: ConsoleKey
    env: dict[str, str]
    timeout: float


class HookRunner:
    """A hub observer running `settings.argv` for each selected console event.

    Args:
        settings: what to run (argv empty: the runner ignores every event).
        port_of: the console's telnet port now (the hub's view), for VSPC_PORT.
        wall_clock: Unix time for VSPC_TIME (tests pass a fake).
        environ: the environment hooks inherit (default os.environ).
    """

    def __init__(
        self,
        settings: HookSettings,
        *,
        port_of: Callable[[ConsoleKey], int | None],
        wall_clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._port_of = port_of
        self._wall_clock = wall_clock
        self._environ = os.environ if environ is None else environ
        self._queue: deque[_Job] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._dropped = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = 0  # hooks started (tests)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Wait until no hook runs and none is queued (tests; nothing in the daemon
        waits for hooks except `close`)."""
        await self._idle.wait()

    def reconfigure(self, settings: HookSettings) -> None:
        """Apply reloaded settings (new events use them; queued jobs keep theirs)."""
        self.settings = settings
        self._start_waiting()

    def __call__(self, event: HubEvent) -> None:
        """Hub observer: queue a hook run for `event` if it is selected.  O(1)."""
        settings = self.settings
        if not settings.argv or self._closing:
            return
        name = hook_event(event)
        if name is None or (settings.events is not None and name not in settings.events):
            return
        env = environment(event, self._wall_clock(), self._port_of(event.key))
        assert env is not None  # hook_event() said it is a hook event
        job = _Job(settings.argv, name, event.key, env, settings.timeout)
        if len(self._running) < settings.concurrency:
            self._start(job)
        elif len(self._queue) < settings.queue:
            self._queue.append(job)
        else:
            if not self._dropped:
                log.warning(
                    "hooks: %d running and %d queued (--hook-concurrency, --hook-queue); "
                    "dropping events until the queue drains",
                    len(self._running),
                    len(self._queue),
                )
            self._dropped += 1

    def _start(self, job: _Job) -> None:
        self.started += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # _run handles every expected failure; this is a bug, but not the loop's.
            log.error("hooks: runner failed", exc_info=task.exception())
        self._start_waiting()

    def _start_waiting(self) -> None:
        if self._closing:
            if not self._running:
                self._idle.set()
            return
        while self._queue and len(self._running) < self.settings.concurrency:
            self._start(self._queue.popleft())
        if self._dropped and not self._queue:
            log.warning("hooks: %d event(s) dropped while the queue was full", self._dropped)
            self._dropped = 0
        if not self._running and not self._queue:
            self._idle.set()

    def _environment(self, job: _Job) -> dict[str, str]:
        env = {k: v for k, v in self._environ.items() if not k.startswith(PREFIX)}
        env.update(job.env)
        return env

    async def _run(self, job: _Job) -> None:
        what = f"hook {safe(job.argv[0])} ({job.event} {job.key})"
        try:
            proc = await asyncio.create_subprocess_exec(
                *job.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._environment(job),
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:  # not found, not executable, fork failed
            log.error("%s: cannot run: %s", what, safe(exc.strerror or exc))
            return
        out, err = _Tail(), _Tail()
        pumps = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
        try:
            async with asyncio.timeout(job.timeout):
                await pumps
                status = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await _reap(proc, pumps)
            log.warning(
                "%s: timed out after %g s; killed its process group; stderr: %s",
                what,
                job.timeout,
                err.text(),
            )
            return
        except asyncio.CancelledError:  # close() gave up waiting
            _kill_group(proc.pid)
            await _reap(proc, pumps)
            raise
        if status == 0:
            log.debug("%s: done; stdout: %s", what, out.text())
        elif status < 0:
            log.warning("%s: killed by signal %d; stderr: %s", what, -status, err.text())
        else:
            log.warning("%s: exit status %d; stderr: %s", what, status, err.text())

    async def close(self, grace: float = 2.0) -> None:
        """Orderly shutdown: drop what is queued, give running hooks `grace` seconds,
        then kill their process groups."""
        self._closing = True
        if self._queue:
            log.info("hooks: %d queued event(s) not run (shutting down)", len(self._queue))
            self._queue.clear()
        if self._dropped:
            log.warning("hooks: %d event(s) dropped while the queue was full", self._dropped)
            self._dropped = 0
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=grace)
        if pending:
            log.warning("hooks: %d still running after %g s; killing them", len(pending), grace)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_REAP + 1.0)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process, pumps: asyncio.Future[Any]) -> None:
    """Collect a killed hook.  A grandchild that left the group may still hold the
    pipes, so stop reading them rather than wait for their EOF."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP):
            await proc.wait()
    if not pumps.done():
        pumps.cancel()
