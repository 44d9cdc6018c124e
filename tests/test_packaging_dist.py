"""The packages and the shipped service files.

`python -m build` (offline: --no-isolation) gives an sdist and a wheel; the wheel,
installed into a fresh venv with nothing else, runs `vspcd --version` and
`--check-config`; `rpmbuild -ta` builds the RPM from the sdist; `systemd-analyze
verify` accepts the unit, and systemd-sysusers/systemd-tmpfiles create the user and
directories from the snippets in a scratch root.  Tools that are not installed skip
their test with the reason (.ci/run installs them with apt-get when it can).
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vspc.vspcd import __version__

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"vspcd", "vspc", "vspc-tui", "vspc-sim", "vspc-web"}
SHIPPED = {
    "vspcd.service",
    "vspc-web.service",
    "vspcd.sysusers",
    "vspc-web.sysusers",
    "vspcd.tmpfiles",
    "vspcd.logrotate",
    "vspcd.toml",
    "vspc.spec",
}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), the wheel built from the sdist as `python -m build` does."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("vspc-*.tar.gz")
    (wheel,) = out.glob("vspc-*.whl")
    return sdist, wheel


def test_version_has_one_source(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    assert sdist.name == f"vspc-{__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read(f"vspc-{__version__}.dist-info/METADATA").decode()
    assert email.parser.Parser().parsestr(meta)["Version"] == __version__
    spec = (REPO / "packaging" / "vspc.spec").read_text()
    match = re.search(r"^Version:\s*(\S+)$", spec, re.MULTILINE)
    assert match is not None and match.group(1) == __version__
    assert "version =" not in (REPO / "pyproject.toml").read_text().split("[project]")[1][:200]


def test_wheel_has_every_console_script_and_the_service_files(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"vspc-{__version__}.dist-info/entry_points.txt").decode()
    scripts = set(re.findall(r"^(\S+) = ", entry_points.split("[console_scripts]")[1], re.M))
    assert scripts == SCRIPTS
    data = {Path(n).name for n in names if "/data/share/vspc/packaging/" in n}
    assert data == SHIPPED
    assert "vspc/vspcd/service/notify.py" in names and "vspc/vspcd/py.typed" in names
    # vspc-web's pages' scripts and the vendored xterm.js (docs/vspc-web.md "Assets").
    for asset in ("console.js", "list.js", "web.css", "vendor/xterm.js", "vendor/LICENSE.xterm"):
        assert f"vspc/vspctui/web/static/{asset}" in names, asset


def test_sdist_has_what_rpmbuild_needs(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in archive.getnames()}
    for name in SHIPPED:
        assert f"packaging/{name}" in names
    for doc in ("README.md", "docs/operations.md", "docs/esxi.md", "pyproject.toml"):
        assert doc in names
    # The spec generates the man pages and installs the completions from the sdist, and
    # dpkg-buildpackage works in an unpacked sdist too.
    for name in ("packaging/manpages.py", "packaging/completion/bash/vspc",
                 "packaging/completion/zsh/_vspc", "debian/control", "debian/rules",
                 "debian/changelog", "debian/source/format", ".ci/deb"):  # fmt: skip
        assert name in names, name


def test_wheel_in_a_fresh_venv(dists: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The outer pip installs into the new venv: no network, no dependencies (vspcd is
    # stdlib-only; urwid/prompt_toolkit are for the operator tools).
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        check=True,
    )  # fmt: skip
    vspcd = venv / "bin" / "vspcd"
    for script in SCRIPTS:
        assert (venv / "bin" / script).exists(), script
    assert (venv / "share" / "vspc" / "packaging" / "vspcd.service").exists()

    version = subprocess.run([str(vspcd), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"vspcd {__version__}"

    good = tmp_path / "good.toml"
    good.write_text("client_limit = 2\nproxy_port = 13370\n")
    checked = subprocess.run(
        [str(vspcd), "--config", str(good), "--check-config"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("client_limit = -3\n")
    refused = subprocess.run(
        [str(vspcd), "--config", str(bad), "--check-config"], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert f"{bad}: key 'client_limit': must be >= 0" in refused.stderr


def test_shipped_example_config_is_valid(tmp_path: Path) -> None:
    example = REPO / "packaging" / "vspcd.toml"
    done = subprocess.run(
        [sys.executable, "-m", "vspc.vspcd", "--config", str(example), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    shutil.which("rpmbuild") is None,
    reason="rpmbuild not installed (Debian package 'rpm'; .ci/run installs it when apt works)",
)
def test_rpm_builds_from_the_sdist(dists: tuple[Path, Path], tmp_path: Path) -> None:
    sdist, _ = dists
    top = tmp_path / "rpmbuild"
    # --nodeps: this may be a Debian host whose rpm database knows no packages; the
    # build itself is offline (no build isolation).  The interpreter is this venv's,
    # which has the build requirements.
    done = subprocess.run(
        ["rpmbuild", "-ta", "--nodeps", "--define", f"_topdir {top}",
         "--define", f"__python3 {sys.executable}", str(sdist)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (rpm,) = (top / "RPMS" / "noarch").glob(f"vspc-{__version__}-*.noarch.rpm")
    listing = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True)
    files = set(listing.stdout.split())
    for path in (
        "/usr/bin/vspcd",
        "/usr/bin/vspc",
        "/usr/bin/vspc-tui",
        "/usr/lib/systemd/system/vspcd.service",
        "/usr/lib/sysusers.d/vspcd.conf",
        "/usr/lib/tmpfiles.d/vspcd.conf",
        "/etc/logrotate.d/vspcd",
        "/etc/vspcd/vspcd.toml",
        "/var/lib/vspcd",
        "/var/log/consoles",
    ):
        assert path in files, path
    assert any(f.endswith("/vspc/vspcd/__main__.py") for f in files)
    # The package must not point at the build machine's interpreter.
    script = subprocess.run(
        f"rpm2cpio {rpm} | cpio -i --to-stdout ./usr/bin/vspcd 2>/dev/null",
        shell=True,
        capture_output=True,
        text=True,
    )
    if script.returncode == 0 and script.stdout:
        assert script.stdout.startswith("#!/usr/bin/python3\n"), script.stdout[:80]
    # vspc-web is a subpackage: its program, unit and man page, needing aiohttp.
    (web,) = (top / "RPMS" / "noarch").glob(f"vspc-web-{__version__}-*.noarch.rpm")
    listing = subprocess.run(["rpm", "-qlp", str(web)], capture_output=True, text=True, check=True)
    web_files = set(listing.stdout.split())
    assert {
        "/usr/bin/vspc-web",
        "/usr/lib/systemd/system/vspc-web.service",
        "/usr/lib/sysusers.d/vspc-web.conf",
    } <= web_files
    assert "/usr/bin/vspc-web" not in files
    requires = subprocess.run(["rpm", "-qRp", str(web)], capture_output=True, text=True)
    assert "python3-aiohttp" in requires.stdout


def _documented_rpmbuild() -> list[str]:
    """The `rpmbuild -ta --nodeps` line of docs/operations.md, "Install from the RPM"."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("#### Install from the RPM")[1].split("####")[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("rpmbuild -ta --nodeps"))
    return line.split("#")[0].split()


def _debian_python_can_build() -> bool:
    probe = "import setuptools, pip; assert int(setuptools.__version__.split('.')[0]) >= 66"
    return (
        shutil.which("rpmbuild") is not None
        and Path("/usr/bin/python3").exists()
        and subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(
    not _debian_python_can_build(),
    reason="needs rpmbuild and the system python3 with pip and setuptools >= 66.1 "
    "(Debian packages rpm, python3-pip, python3-setuptools; .ci/deb installs them)",
)
def test_documented_rpmbuild_works_with_the_system_python(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    # As a new user would: the command from the docs, the system's interpreter (no
    # __python3 override, no venv on PATH), only the build tree moved to a scratch place.
    sdist, _ = dists
    command = _documented_rpmbuild()
    assert command[-1] == "dist/vspc-VERSION.tar.gz"
    top = tmp_path / "rpmbuild"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [*command[:-1], "--define", f"_topdir {top}", str(sdist)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (rpm,) = (top / "RPMS" / "noarch").glob(f"vspc-{__version__}-*.noarch.rpm")
    listing = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True, check=True)
    files = set(listing.stdout.split())
    for path in (
        "/usr/bin/vspcd",
        "/usr/bin/vspc-sim",
        "/usr/share/bash-completion/completions/vspc",
        "/usr/share/zsh/site-functions/_vspc",
        "/usr/share/doc/vspc-0.1.0/security.md".replace("0.1.0", __version__),
    ):
        assert path in files, path
    for page in ("man1/vspc.1", "man1/vspc-tui.1", "man1/vspc-sim.1", "man5/vspcd.toml.5",
                 "man8/vspcd.8"):  # fmt: skip
        assert any(f.startswith(f"/usr/share/man/{page}") for f in files), page
    assert any(f.endswith("/vspc/vspcd/__main__.py") for f in files)


def test_sysusers_and_the_spec_agree_on_the_shell() -> None:
    sysusers = (REPO / "packaging" / "vspcd.sysusers").read_text()
    spec = (REPO / "packaging" / "vspc.spec").read_text()
    (line,) = [ln for ln in sysusers.splitlines() if ln.startswith("u ")]
    shell = line.split()[-1]
    assert shell == "/usr/sbin/nologin"
    assert f"-s {shell} " in spec


def test_unit_documentation_is_the_installed_man_pages() -> None:
    unit = (REPO / "packaging" / "vspcd.service").read_text()
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("Documentation=")]
    assert line.split("=", 1)[1].split() == ["man:vspcd(8)", "man:vspcd.toml(5)"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package 'systemd')",
)
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart= names an existing executable: point it at this
    # checkout's entry point instead of the package's /usr/bin/vspcd.
    vspcd = shutil.which("vspcd", path=str(Path(sys.executable).parent))
    assert vspcd is not None, "vspcd console script not installed in this venv"
    unit = (REPO / "packaging" / "vspcd.service").read_text()
    (tmp_path / "vspcd.service").write_text(unit.replace("/usr/bin/vspcd", vspcd))
    # verify also runs `man` on each Documentation=man:... page: the generated ones.
    sys.path.insert(0, str(REPO / "packaging"))
    import manpages

    manpages.write_pages(tmp_path / "man", tree=True)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "vspcd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPATH": str(tmp_path / "man")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vspcd.service" not in done.stderr, done.stderr  # no warnings about our unit
    assert "Type=notify" in unit and "ExecReload=" in unit and "WatchdogSec=" in unit


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed (Debian package 'systemd')",
)
def test_sysusers_and_tmpfiles_make_the_user_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for kind in ("sysusers", "tmpfiles"):
        target = root / "usr" / "lib" / f"{kind}.d" / "vspcd.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(REPO / "packaging" / f"vspcd.{kind}", target)
    for tool in ("systemd-sysusers", "systemd-tmpfiles --create"):
        done = subprocess.run(
            [*tool.split(), f"--root={root}", "vspcd.conf"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    passwd = (root / "etc" / "passwd").read_text()
    user = next(line.split(":") for line in passwd.splitlines() if line.startswith("vspcd:"))
    uid, home = int(user[2]), user[5]
    assert home == "/var/lib/vspcd"
    for directory in ("var/lib/vspcd", "var/log/consoles"):
        info = (root / directory).stat()
        assert info.st_uid == uid, directory
        assert info.st_mode & 0o777 == 0o750, directory


@pytest.mark.skipif(
    shutil.which("logrotate") is None,
    reason="logrotate not installed (Debian package 'logrotate')",
)
def test_logrotate_file_rotates_console_logs_into_old(tmp_path: Path) -> None:
    logs = tmp_path / "consoles"
    logs.mkdir()
    (logs / "vmlog-db01").write_text("boot\n")
    # Same file, pointed at a scratch directory, as root, with a visible reload.
    marker = tmp_path / "reloaded"
    text = (
        (REPO / "packaging" / "vspcd.logrotate")
        .read_text()
        .replace("/var/log/consoles", str(logs))
        .replace("vspcd vspcd", f"{os.geteuid()} {os.getegid()}")
        .replace("systemctl reload vspcd.service", f"touch {marker}")
    )
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    done = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (logs / "old" / "vmlog-db01.1").read_text() == "boot\n"
    assert (logs / "vmlog-db01").stat().st_mode & 0o777 == 0o600  # recreated empty
    assert marker.exists(), "postrotate did not ask vspcd to reopen its logs"
    # A second rotation must not pick up the rotated file (the glob sees only live logs).
    (logs / "vmlog-db01").write_text("more\n")
    subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
        check=True,
        timeout=60,
    )
    assert sorted(p.name for p in (logs / "old").iterdir()) == [
        "vmlog-db01.1",
        "vmlog-db01.2.gz",
    ]


@pytest.mark.skipif(
    shutil.which("logrotate") is None,
    reason="logrotate not installed (Debian package 'logrotate')",
)
def test_logrotate_leaves_vspcds_own_rotations_alone(tmp_path: Path) -> None:
    # --log-max-size makes FILE.N, FILE.N.gz (and FILE.N.gz.tmp while gzipping):
    # vspcd/history/naming.py.  logrotate must rotate the live logs only, including
    # names that end in digits, z or p, and the .events files.
    logs = tmp_path / "consoles"
    logs.mkdir()
    live = ["vmlog-db01", "vmlog-db01.events", "vmlog-web", "vmlog-quiz", "vmlog-gz",
            "vmlog-backup", "vmlog-build123456", "vmlog-x", "vmlog-7", "vmlog-tmp"]  # fmt: skip
    theirs = ["vmlog-db01.1", "vmlog-db01.2.gz", "vmlog-db01.3.gz.tmp", "vmlog-web.12.gz",
              "vmlog-web.7"]  # fmt: skip
    for name in live + theirs:
        (logs / name).write_text(f"{name}\n")
    text = (
        (REPO / "packaging" / "vspcd.logrotate")
        .read_text()
        .replace("/var/log/consoles", str(logs))
        .replace("vspcd vspcd", f"{os.geteuid()} {os.getegid()}")
        .replace("systemctl reload vspcd.service", "true")
    )
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    done = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "duplicate" not in done.stderr
    rotated = sorted(p.name for p in (logs / "old").iterdir())
    assert rotated == sorted(f"{name}.1" for name in live)
    for name in theirs:
        assert (logs / name).read_text() == f"{name}\n", name
