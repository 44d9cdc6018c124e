"""vspc-web's systemd unit (packaging/vspc-web.service) passes `systemd-analyze
verify`, as tests/test_packaging_dist.py checks vspcd's, and names its man page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "packaging" / "vspc-web.service"


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
