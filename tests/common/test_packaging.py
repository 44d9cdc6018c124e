"""The repository's top-level folders install as `vspc.common`, `vspc.vspcd`, `vspc.vspctui`.

A bare top-level `common` (or `vspcd`) would shadow, or be shadowed by, any other
package of that name on sys.path (pyproject.toml, [tool.setuptools]).  These tests prove
the mapping holds: the installed distribution claims no such top-level name, and a
decoy `common`/`vspcd` on PYTHONPATH changes nothing for `vspc.*`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import vspc.common.telnet

BARE = ("common", "vspcd", "vspctui")


REPO = Path(__file__).resolve().parents[2]


def installed_vspc() -> metadata.Distribution:
    """The installed `vspc` distribution, not the checkout's build leftovers.

    `pip install -e .` leaves `vspc.egg-info/` in the checkout, and `python -m pytest`
    puts the checkout on sys.path, so a bare `metadata.files("vspc")` may read that
    folder's SOURCES.txt: the sdist's *source* paths (`common/telnet.py`), not what was
    installed.  Look only outside the checkout.
    """
    outside = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    found = list(metadata.distributions(name="vspc", path=outside))
    assert found, "vspc is not installed (pip install -e '.[test]')"
    return found[0]


def test_distribution_lists_no_bare_top_level_package() -> None:
    files = installed_vspc().files
    assert files
    for path in files:
        top = path.parts[0]
        assert top not in BARE, f"installed file {path} is a bare top-level {top!r}"
        assert str(path) not in {f"{name}.py" for name in BARE}, path


def test_distribution_claims_only_the_vspc_name() -> None:
    top_level = installed_vspc().read_text("top_level.txt")
    if top_level is not None:  # written by setuptools; absent with other backends
        assert top_level.split() == ["vspc"]
    claimed = {name for name, dists in metadata.packages_distributions().items() if "vspc" in dists}
    assert not claimed & set(BARE), claimed


def test_editable_finder_maps_only_vspc_names() -> None:
    # An editable install lists no package files at all, only setuptools' import hook;
    # its mapping is what decides which top-level names the checkout provides.
    finders = [p for p in installed_vspc().files or () if p.name.endswith("_finder.py")]
    if not finders:
        pytest.skip("not an editable install: the file list above says it all")
    for path in finders:
        module = sys.modules.get(path.stem)  # loaded at start-up by the .pth file
        mapping = getattr(module, "MAPPING", None)
        if not isinstance(mapping, dict):
            pytest.skip(f"{path.name} has no MAPPING (another setuptools layout)")
        assert mapping and all(name.startswith("vspc.") for name in mapping), mapping


_PROBE = """
import importlib, json, sys
first, second = sys.argv[1:3]
importlib.import_module(first)
importlib.import_module(second)
import common, common.telnet, vspcd
import vspc.common.telnet, vspc.vspcd
print(json.dumps({
    "ours": vspc.common.telnet.__file__,
    "ours_has_codec": hasattr(vspc.common.telnet, "TelnetCodec"),
    "ours_vspcd": vspc.vspcd.__file__,
    "decoy": common.__file__,
    "decoy_telnet": getattr(common.telnet, "DECOY", None),
    "decoy_vspcd": getattr(vspcd, "DECOY", None),
}))
"""


@pytest.mark.parametrize(
    "order", [("common.telnet", "vspc.common.telnet"), ("vspc.common.telnet", "common.telnet")]
)
def test_decoy_top_level_packages_do_not_shadow_ours(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    decoy = tmp_path / "decoy"
    for name in ("common", "vspcd"):
        (decoy / name).mkdir(parents=True)
        (decoy / name / "__init__.py").write_text(f"DECOY = {name!r}\n")
    (decoy / "common" / "telnet.py").write_text("DECOY = 'common.telnet'\n")
    workdir = tmp_path / "elsewhere"  # not the repository: its folders are not on sys.path
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(decoy)}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *order],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert Path(seen["ours"]).resolve() == Path(vspc.common.telnet.__file__).resolve()
    assert seen["ours_has_codec"] is True
    assert decoy not in Path(seen["ours_vspcd"]).resolve().parents
    assert Path(seen["decoy"]).resolve() == (decoy / "common" / "__init__.py").resolve()
    assert seen["decoy_telnet"] == "common.telnet"
    assert seen["decoy_vspcd"] == "vspcd"


def test_our_modules_come_from_this_tree() -> None:
    # With the editable install the test suite runs against the checkout itself.
    assert Path(vspc.common.telnet.__file__).resolve() == REPO / "common" / "telnet.py"
