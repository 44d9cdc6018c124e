"""Dropping root: bind everything as root, then become `--user`/`--group` (docs/operations.md §2a).

Boundary: process-level identity only; `vspcd/service/server.py` decides when (after every
listener is bound and the persist file is open, before READY) and which files to hand
over first.  No asyncio, nothing at import time.

The order is the one setuid(2) demands: supplementary groups, then the group, then the
user (after setuid the process may no longer change its groups).  `setres[ug]id` sets
the real, effective and saved ids together, so no saved root id is left to regain.
Root without `--user` is refused unless asked for explicitly (`--allow-root`, the
``allow_root`` key, or ``VSPCD_ALLOW_ROOT=1``): a concentrator parses bytes from every
ESXi host on the network and has no need of root once its ports are bound.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Identity", "PrivilegeError", "drop", "hand_over", "resolve", "root_refusal"]

ALLOW_ROOT_ENV = "VSPCD_ALLOW_ROOT"
_TRUE = frozenset({"1", "true", "yes", "on"})


class PrivilegeError(Exception):
    """The identity cannot be resolved or assumed."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the daemon becomes."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, from the group database


def resolve(user: str, group: str | None = None) -> Identity:
    """The identity `--user USER [--group GROUP]` names (names or numeric ids).

    The supplementary groups are the user's (as login(1) would set them), so a
    `--readonly-group`/`--admin-socket-group` membership keeps working after the drop.

    Raises:
        PrivilegeError: no such user or group.
    """
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"--group {group}: no such group") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Identity(entry.pw_name, entry.pw_uid, gid, groups)


def root_refusal(
    euid: int, user: str | None, allow_root: bool, environ: Mapping[str, str]
) -> str | None:
    """Why vspcd will not start as it was asked to, or None when it may."""
    if euid != 0 or allow_root or environ.get(ALLOW_ROOT_ENV, "").strip().lower() in _TRUE:
        return None
    if user is not None:
        try:
            if resolve(user).uid != 0:
                return None
        except PrivilegeError:
            return None  # reported as a usage error elsewhere
        return f"--user {user} is root too"
    return (
        "refusing to run as root: give --user USER (bind as root, then drop to USER; "
        "e.g. --user nobody) or say --allow-root (config key allow_root = true, "
        f"or {ALLOW_ROOT_ENV}=1)"
    )


def hand_over(identity: Identity, paths: Iterable[Path]) -> None:
    """Give files the daemon opened as root, and keeps writing, to `identity`.

    Missing paths are skipped (e.g. SQLite's -wal/-shm when not in WAL mode).

    Raises:
        PrivilegeError: a file exists but cannot be chowned.
    """
    for path in paths:
        try:
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PrivilegeError(f"cannot hand {path} to {identity.name}: {exc}") from exc


def drop(identity: Identity) -> None:
    """Become `identity` for good: groups, group, user; then check there is no way back.

    Raises:
        PrivilegeError: a call failed (not root?) or root could be regained.
    """
    try:
        os.setgroups(list(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {identity.name}: {exc}") from exc
    if identity.uid != 0:
        regained = False
        with contextlib.suppress(PermissionError):
            os.setuid(0)
            regained = True
        if regained:
            raise PrivilegeError("still able to become root after dropping privileges")
