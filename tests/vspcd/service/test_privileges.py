"""vspcd/service/privileges.py: who may run vspcd as root, and resolving --user/--group.

The drop itself, as root, is tested end to end in tests/vspcd/service/test_service.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.userruntime import UserRuntime
from vspc.vspcd.service.privileges import PrivilegeError, resolve, root_refusal


def test_non_root_is_never_refused() -> None:
    assert root_refusal(1000, None, False, {}) is None


def test_root_without_user_is_refused_with_a_way_out() -> None:
    reason = root_refusal(0, None, False, {})
    assert reason is not None
    assert "--user" in reason and "--allow-root" in reason and "VSPCD_ALLOW_ROOT=1" in reason


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_root_allowed_explicitly(value: str) -> None:
    assert root_refusal(0, None, True, {}) is None
    assert root_refusal(0, None, False, {"VSPCD_ALLOW_ROOT": value}) is None


def test_allow_root_variable_must_say_yes() -> None:
    assert root_refusal(0, None, False, {"VSPCD_ALLOW_ROOT": "0"}) is not None


def test_root_with_an_unprivileged_user_is_fine() -> None:
    assert root_refusal(0, "nobody", False, {}) is None


def test_user_root_does_not_count_as_dropping() -> None:
    reason = root_refusal(0, "root", False, {})
    assert reason is not None and "root too" in reason


def test_resolve_by_name_and_number() -> None:
    nobody = pwd.getpwnam("nobody")
    by_name = resolve("nobody")
    assert (by_name.uid, by_name.gid) == (nobody.pw_uid, nobody.pw_gid)
    assert resolve(str(nobody.pw_uid)) == by_name
    assert by_name.gid in by_name.groups


def test_resolve_with_group() -> None:
    group = grp.getgrgid(os.getgid())
    identity = resolve("nobody", group.gr_name)
    assert identity.gid == group.gr_gid
    assert resolve("nobody", str(group.gr_gid)).gid == group.gr_gid


def test_resolve_unknown_names() -> None:
    with pytest.raises(PrivilegeError, match="no such user"):
        resolve("no-such-user-here")
    with pytest.raises(PrivilegeError, match="no such group"):
        resolve("nobody", "no-such-group-here")


def test_user_without_root_is_a_start_error(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # As root (CI), become an ordinary user first with setpriv, then ask for another one.
    # That user may not be able to run the venv's interpreter or read the checkout: it
    # runs vspcd from the world-readable copy of tests/userruntime.py.
    prefix: list[str] = []
    command = [sys.executable, "-m", "vspc.vspcd"]
    target, workdir = "nobody", tmp_path
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) needed to run this as a non-root user")
        runtime: UserRuntime = request.getfixturevalue("user_runtime")  # may skip: says why
        nobody = pwd.getpwnam("nobody")
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        prefix.append("--clear-groups")
        command = [runtime.vspcd]
        target = "root"
        workdir = Path(tempfile.mkdtemp(prefix="vspcd-nonroot-"))
        workdir.chmod(0o777)  # nobody's socket directory
    try:
        done = subprocess.run(
            [*prefix, *command, "--proxy-iface", "127.0.0.1",
             "--proxy-port", "0", "--no-vm-ports", "--admin-socket", f"{workdir}/s",
             "--user", target],
            capture_output=True, text=True, timeout=15, cwd="/",
        )  # fmt: skip
    finally:
        if workdir != tmp_path:
            shutil.rmtree(workdir, ignore_errors=True)
    assert done.returncode == 1, done.stderr
    assert "switching user needs root" in done.stderr
