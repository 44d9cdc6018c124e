"""`python -m vspc.vspcd` / `vspcd`: argparse -> Config -> logging -> serve(config).

Boundary: the only module that configures logging handlers, touches process state
(rlimits, pidfile, detaching) or picks the event loop (docs/development.md Part 2, layout).
The orchestration itself is `vspcd/service/run.py`'s `serve()`, which runs until SIGTERM
or SIGINT and then shuts down in order; `main()` turns the outcome into an exit
status: 0 after a requested shutdown, 1 if the daemon could not start or crashed,
2 for usage errors (from argparse, the configuration file, or running as root without
`--user`/`--allow-root`).  `--check-config` stops after validation: 0 or 2.

Under systemd (`Type=notify`) the readiness messages go to `$NOTIFY_SOCKET`
(vspcd/service/notify.py); SIGHUP re-reads the configuration file (vspcd/service/reload.py).

The loop is a `SelectorEventLoop` on epoll, created through `asyncio.Runner`
(Python 3.11's `asyncio.run` has no `loop_factory`).  See docs/operations.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from vspc.vspcd.service.config import Config, LogTarget, parse_args, reload_config
from vspc.vspcd.service.daemon import (
    PidfileError,
    ReadyPipe,
    check_pidfile,
    daemonize,
    remove_pidfile,
    write_pidfile,
)
from vspc.vspcd.service.eventloop import choose, stdlib_loop
from vspc.vspcd.service.notify import Notifier
from vspc.vspcd.service.privileges import PrivilegeError, root_refusal
from vspc.vspcd.service.resources import raise_nofile_limit

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"
_STREAM_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# journald stamps every line itself; don't print a second timestamp there.
_JOURNAL_FORMAT = "%(levelname)-7s %(name)s: %(message)s"
_SYSLOG_FORMAT = "vspcd[%(process)d]: %(levelname)s %(name)s: %(message)s"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector loop on epoll (`--event-loop asyncio`; vspcd/service/eventloop.py)."""
    return stdlib_loop()


def configure_logging(config: Config, logger: logging.Logger | None = None) -> logging.Handler:
    """Send log records where `config` says; replaces the logger's handlers.

    Args:
        config: uses `debug` (level) and `log_target` (stderr, stdout or syslog).
        logger: the logger to configure, normally the root logger (tests pass their own).

    Returns:
        The handler installed.
    """
    logger = logging.getLogger() if logger is None else logger
    logger.setLevel(logging.DEBUG if config.debug else logging.INFO)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    match config.log_target:
        case LogTarget.SYSLOG:
            handler = logging.handlers.SysLogHandler(
                SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
        case LogTarget.STDOUT | LogTarget.STDERR:
            stream = sys.stdout if config.log_target is LogTarget.STDOUT else sys.stderr
            handler = logging.StreamHandler(stream)
            journald = bool(os.environ.get("JOURNAL_STREAM"))
            handler.setFormatter(logging.Formatter(_JOURNAL_FORMAT if journald else _STREAM_FORMAT))
    logger.addHandler(handler)
    return handler


def _lean_log_records() -> None:
    """Stop collecting record fields that none of our formats print.

    The logging HOWTO's "Optimization" knobs: no caller lookup (a stack walk per
    record: funcName, lineno, pathname), no thread or multiprocessing names.  Every
    line we write reads the same; only %(process)d (syslog format) is still filled.
    A vMotion logs two INFO lines, and building them was the largest single share
    of its CPU (docs/benchmarks.md, "Daemon").  Process-wide, so only for the
    daemon's own process, never for a library caller.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def _absolute_paths(config: Config, base: str | None = None) -> Config:
    # --daemon changes directory to "/", so relative paths must be pinned first
    # (against `base`, the directory vspcd was started in, when reloading later).
    start = os.getcwd() if base is None else base

    def pin(path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.normpath(os.path.join(start, path)))

    return dataclasses.replace(
        config,
        admin_socket=Path(os.path.normpath(os.path.join(start, config.admin_socket))),
        pidfile=pin(config.pidfile),
        cert=pin(config.cert),
        key=pin(config.key),
        persist_file=pin(config.persist_file),
        log_dir=pin(config.log_dir),
        config=pin(config.config),
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Until serve() installs its own handlers, SIGTERM behaves like Ctrl-C so the
    # pidfile is still removed.
    raise KeyboardInterrupt


def _reloader(argv: Sequence[str] | None, config: Config) -> Callable[[], Config]:
    """What SIGHUP calls: the same command line over the configuration file as it is now.

    The file found at start is named explicitly (and absolutely: --daemon changed the
    working directory), so a reload reads the same file even if it was the default; with
    --daemon, relative paths are pinned to the start directory as they were at start, so
    they do not show up as changed.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    if config.config is not None:
        words += ["--config", str(config.config)]
    if not config.daemon:
        return lambda: reload_config(words, os.environ)
    start = os.getcwd()
    return lambda: _absolute_paths(reload_config(words, os.environ), start)


def _run(config: Config, ready_pipe: ReadyPipe, reload: Callable[[], Config] | None = None) -> int:
    # Imported here, not at the top: --help, usage errors and --daemon's fork come
    # first and need none of the daemon's machinery.
    from vspc.vspcd.ext.plugins import PluginError
    from vspc.vspcd.service.run import serve

    started = False

    def on_ready(_daemon: object) -> None:
        nonlocal started
        started = True
        ready_pipe.ready()

    try:
        choice = choose(config.event_loop)
    except ValueError as exc:  # uvloop asked for and gone since the flags were checked
        log.error("cannot start: %s", exc)
        return 2
    log.info("event loop: %s", choice.description)
    try:
        with asyncio.Runner(loop_factory=choice.factory) as runner:
            runner.run(
                serve(
                    config,
                    ready=on_ready,
                    reload=reload,
                    notifier=Notifier.from_environ(os.environ),
                )
            )
    except KeyboardInterrupt:
        log.info("interrupted")
        return 0
    except PluginError as exc:  # --backend: a usage error, as if argparse had found it
        log.error("cannot start: %s", exc)
        return 2
    except (OSError, PrivilegeError) as exc:  # typically: an address cannot be bound
        log.error("%s: %s", "vspcd failed" if started else "cannot start", exc)
        return 1
    except Exception:
        log.exception("vspcd crashed; exiting")
        return 1
    log.info("vspcd stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon; returns the process exit status.

    Raises:
        SystemExit: from argparse, status 0 for --help/--version, 2 for usage errors.
    """
    config = parse_args(argv, os.environ)
    if config.check_config:
        # Not subject to the root refusal below: root checks the file a service user
        # (systemd's User=) will run with.
        where = config.config or "no configuration file"
        print(f"vspcd: {where}: configuration OK", file=sys.stdout)
        return 0
    refusal = root_refusal(os.geteuid(), config.user, config.allow_root, os.environ)
    if refusal is not None:
        print(f"vspcd: {refusal}", file=sys.stderr)
        return 2
    if config.daemon:
        config = _absolute_paths(config)
    reload = _reloader(argv, config)
    _lean_log_records()
    configure_logging(config)
    if config.daemon and not os.path.exists(SYSLOG_SOCKET):
        print(f"vspcd: warning: {SYSLOG_SOCKET} missing; daemon logs will be lost", file=sys.stderr)
    if config.cert is not None and not config.ssl:
        log.warning("--cert given without --ssl: the proxy port stays plain telnet only")

    if config.pidfile is not None:
        try:
            check_pidfile(config.pidfile)
        except PidfileError as exc:
            log.error("%s", exc)
            if config.daemon:  # syslog is not where the person typing looks
                print(f"vspcd: {exc}", file=sys.stderr)
            return 1

    ready_pipe = daemonize() if config.daemon else ReadyPipe(None)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if config.pidfile is not None:
            write_pidfile(config.pidfile)
        raise_nofile_limit()
        return _run(config, ready_pipe, reload)
    except PidfileError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        ready_pipe.close()
        if config.pidfile is not None:
            remove_pidfile(config.pidfile)


if __name__ == "__main__":
    sys.exit(main())
