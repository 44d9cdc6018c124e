"""vspc-web's systemd unit (packaging/vspc-web.service) passes `systemd-analyze
verify`, as tests/test_packaging_dist.py checks vspcd's, and names its man page; its
user (packaging/vspc-web.sysusers) is the unit's, in group vspcd, and the RPM's %pre
makes the same one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "packaging" / "vspc-web.service"
SYSUSERS = REPO / "packaging" / "vspc-web.sysusers"


def test_unit_documentation_is_the_man_page() -> None:
    lines = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("Documentation=")]
    assert lines == ["Documentation=man:vspc-web(1)"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package 'systemd')",
)
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart= names an existing executable: this venv's.
    program = shutil.which("vspc-web", path=str(Path(sys.executable).parent))
    assert program is not None, "vspc-web console script not installed in this venv"
    unit = tmp_path / "vspc-web.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/vspc-web", program))
    sys.path.insert(0, str(REPO / "packaging"))
    import manpages

    manpages.write_pages(tmp_path / "man", tree=True)  # verify runs `man vspc-web`
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPATH": str(tmp_path / "man")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vspc-web.service" not in done.stderr, done.stderr  # no warnings about it


def test_the_unit_the_sysusers_file_and_the_spec_name_one_user() -> None:
    unit = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if line[:1].isupper())
    assert (unit["User"], unit["Group"], unit["SupplementaryGroups"]) == (
        "vspc-web",
        "vspc-web",
        "vspcd",
    )
    rows = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln[:2] in ("u ", "m ")]
    assert ["m", "vspc-web", "vspcd"] in rows
    (user,) = [row for row in rows if row[0] == "u"]
    assert user[1] == "vspc-web" and user[-1] == "/usr/sbin/nologin"
    spec = (REPO / "packaging" / "vspc.spec").read_text()
    pre = spec.split("%pre web")[1].split("\n%")[0]
    assert "-g vspc-web -G vspcd" in pre and "-s /usr/sbin/nologin" in pre


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None,
    reason="systemd-sysusers not installed (Debian package 'systemd')",
)
def test_sysusers_makes_the_user_in_group_vspcd(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    snippets = root / "usr" / "lib" / "sysusers.d"
    snippets.mkdir(parents=True)
    shutil.copy(REPO / "packaging" / "vspcd.sysusers", snippets / "vspcd.conf")
    shutil.copy(SYSUSERS, snippets / "vspc-web.conf")
    for name in ("vspcd.conf", "vspc-web.conf"):  # in the packages' order
        done = subprocess.run(
            ["systemd-sysusers", f"--root={root}", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("vspc-web:"))
    assert user[6] == "/usr/sbin/nologin"
    groups = (root / "etc" / "group").read_text().splitlines()
    vspcd = next(line.split(":") for line in groups if line.startswith("vspcd:"))
    assert "vspc-web" in vspcd[3].split(",")
