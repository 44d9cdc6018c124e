"""Which event loop the daemon runs on: `--event-loop auto|asyncio|uvloop`.

vspcd is stdlib-only and the stdlib loop (a `SelectorEventLoop` on epoll) is the
first-class path: CI runs every test on it, and the end-to-end tests a second time
on uvloop (`VSPC_TEST_LOOP=uvloop`, tests/conftest.py).  uvloop is an optional extra
(`pip install 'vspc[uvloop]'`) for sites that want less of the daemon's CPU per
vMotion and per connection (docs/benchmarks.md).  The daemon uses public asyncio API
only, so it behaves the same on both.  `auto`, the default, uses
uvloop when it is importable and the stdlib loop otherwise, so installing the
extra is the whole opt-in; `asyncio` pins the stdlib loop, `uvloop` insists on it.

uvloop is imported by name at run time (never at module import), so neither the
daemon nor mypy needs it installed.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import selectors
from collections.abc import Callable, Mapping

__all__ = ["EVENT_LOOPS", "LoopChoice", "choose", "stdlib_loop", "uvloop_available"]

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
UVLOOP_HINT = "pip install 'vspc[uvloop]'"

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def stdlib_loop() -> asyncio.AbstractEventLoop:
    """A selector loop on epoll (asyncio's default on Linux, made explicit)."""
    selector_class = getattr(selectors, "EpollSelector", selectors.DefaultSelector)
    return asyncio.SelectorEventLoop(selector_class())


def uvloop_available() -> bool:
    """True if `import uvloop` would find a module (without importing it)."""
    return importlib.util.find_spec("uvloop") is not None


class LoopChoice:
    """The loop factory for `asyncio.Runner` and how to name it in the log."""

    __slots__ = ("description", "factory", "name")

    def __init__(self, name: str, factory: LoopFactory, description: str) -> None:
        self.name = name  # "asyncio" or "uvloop"
        self.factory = factory
        self.description = description  # e.g. "uvloop 0.21.0"


def choose(choice: str, environ: Mapping[str, str] = os.environ) -> LoopChoice:
    """The loop `choice` (one of `EVENT_LOOPS`) means on this installation.

    For "auto", `VSPCD_EVENT_LOOP` in `environ` may name the loop instead: a test rig
    or a unit file can pin one without touching the configuration (the test suite
    pins its loop this way, tests/conftest.py).  An explicit choice wins.

    Raises:
        ValueError: `choice` (or the variable) is unknown, or "uvloop" and uvloop is
            not installed (the message says how to install it).
    """
    if choice not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {choice!r} (one of {', '.join(EVENT_LOOPS)})")
    pinned = environ.get("VSPCD_EVENT_LOOP", "").strip().lower()
    if choice == "auto" and pinned:
        if pinned not in EVENT_LOOPS:
            raise ValueError(
                f"VSPCD_EVENT_LOOP={pinned!r}: expected one of {', '.join(EVENT_LOOPS)}"
            )
        choice = pinned
    if choice == "asyncio" or (choice == "auto" and not uvloop_available()):
        return LoopChoice("asyncio", stdlib_loop, "asyncio (stdlib, epoll)")
    try:
        module = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "auto":  # found but broken: the stdlib loop still works
            return LoopChoice("asyncio", stdlib_loop, f"asyncio (stdlib, epoll; uvloop: {exc})")
        raise ValueError(f"--event-loop uvloop: uvloop is not installed ({UVLOOP_HINT})") from None
    factory: LoopFactory = module.new_event_loop
    version = getattr(module, "__version__", "?")
    return LoopChoice("uvloop", factory, f"uvloop {version}")
