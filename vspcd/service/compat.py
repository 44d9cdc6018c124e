"""vSPC.py compatibility: its backend spellings, its getopt habits and its environment.

pbhenson/vSPC.py spelled backends ``--backend File --backend-args '-f PATH'`` and
``--backend Logging --backend-args '-l DIR -p P -m M --context N'``; here they mean
`--persist-file PATH` and `--log-dir DIR --log-prefix P --log-mode M --context N`
(docs/operations.md §9).  `--backend-args` is split with `shlex` and parsed by a small
parser per built-in backend (`BACKENDS`); any other `--backend` name is a plugin
(vspcd/ext/plugins.py, docs/plugins.md), resolved here so a broken one fails the start
with status 2; it gets `--backend-args` as one string.

The environment variables `SUPPORT_MULTI_CONSOLE` and `VM_CLIENT_LIMIT` mean what they
meant there (docs/operations.md §4); an explicit flag or file key wins over them.

Every problem raises `ConfigError` with one line naming the flag or variable.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from vspc.common import convert
from vspc.vspcd.ext import plugins
from vspc.vspcd.service.configdata import ConfigError
from vspc.vspcd.service.flags import LOG_DIR

__all__ = ["BACKENDS", "env_bool", "env_count", "fold_backend", "glue_backend_args"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class _BackendArgsError(Exception):
    """A --backend-args string did not parse (message for the ConfigError)."""


class _BackendArgsParser(argparse.ArgumentParser):
    # argparse exits on errors; here they become part of one ConfigError line.
    def error(self, message: str) -> NoReturn:
        raise _BackendArgsError(message)


def _file_backend_parser() -> argparse.ArgumentParser:
    parser = _BackendArgsParser(prog="--backend File", add_help=False)
    parser.add_argument("-f", "--file", dest="persist_file", type=Path, required=True)
    return parser


def _logging_backend_parser() -> argparse.ArgumentParser:
    parser = _BackendArgsParser(prog="--backend Logging", add_help=False)
    parser.add_argument("-l", "--logdir", dest="log_dir", type=Path, default=LOG_DIR)
    parser.add_argument("-p", "--prefix", dest="log_prefix", type=convert.word)
    parser.add_argument("-m", "--mode", dest="log_mode", type=convert.octal_mode)
    parser.add_argument("--context", type=convert.integer(0))
    return parser


# vSPC.py's built-in backends; any other name is a plugin (vspcd/ext/plugins.py).
BACKENDS: dict[str, Callable[[], argparse.ArgumentParser] | None] = {
    "memory": None,  # takes no arguments
    "file": _file_backend_parser,
    "logging": _logging_backend_parser,
}

# The native flag each --backend-args option stands for (conflict messages).
_NATIVE = {
    "persist_file": "--persist-file",
    "log_dir": "--log-dir",
    "log_prefix": "--log-prefix",
    "log_mode": "--log-mode",
    "context": "--context",
}


def fold_backend(ns: argparse.Namespace) -> None:
    """Fold --backend/--backend-args into the native options of `ns` (in place).

    A name that is not a built-in is a plugin (vspcd/ext/plugins.py): it is resolved now,
    so a broken one is a configuration error, and stays in `ns.backend` with its arguments.
    """
    if ns.backend is None:
        if ns.backend_args is not None:
            raise ConfigError(
                "--backend-args needs --backend File or --backend Logging (or a plugin)"
            )
        return
    name = ns.backend.strip().lower()
    if name not in BACKENDS:
        try:
            plugins.resolve(ns.backend.strip())
        except plugins.PluginError as exc:
            raise ConfigError(str(exc)) from None
        ns.backend = ns.backend.strip()
        ns.backend_args = ns.backend_args or ""
        return
    make = BACKENDS[name]
    spelled, ns.backend = ns.backend, None  # a built-in: its meaning goes to native options
    if make is None:
        if ns.backend_args is not None and ns.backend_args.strip():
            raise ConfigError(f"--backend {spelled}: takes no --backend-args")
        ns.backend_args = None
        return
    try:
        words = shlex.split(ns.backend_args or "")
        parsed = make().parse_args(words)
    except (ValueError, _BackendArgsError) as exc:  # shlex: "No closing quotation"
        raise ConfigError(
            f"--backend-args {ns.backend_args!r} for --backend {spelled}: {exc}"
        ) from None
    args, ns.backend_args = ns.backend_args, None
    for field, value in vars(parsed).items():
        if value is None:
            continue
        given = getattr(ns, field)
        if given is not None and given != value:
            raise ConfigError(f"{_NATIVE[field]} {given} conflicts with --backend-args {args!r}")
        setattr(ns, field, value)


def glue_backend_args(argv: Sequence[str]) -> list[str]:
    """`--backend-args '-f PATH'` -> `--backend-args=-f PATH`.

    vSPC.py read its options with getopt, which takes the word after
    `--backend-args` as its value whatever it looks like; argparse would take
    `-f PATH` or `-p vm` for one of our own options (-f, -p) and stop.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--backend-args":
            value = next(words, None)
            out.append(word if value is None else f"{word}={value}")
        else:
            out.append(word)
    return out


def env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    """A vSPC.py-era boolean variable (None when unset)."""
    raw = environ.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {name}={raw!r}: expected true or false")


def env_count(environ: Mapping[str, str], name: str) -> int | None:
    """A vSPC.py-era count variable (None when unset or empty)."""
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer >= 0")
    return value
