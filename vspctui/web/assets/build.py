"""Vendor xterm.js into vspc-web's static files (docs/vspc-web.md, "Assets").

vspc-web serves xterm.js from its own package, never from a CDN or a runtime fetch.
The built files (MIT-licensed) are committed under ../static/vendor/ with their
licence, so an sdist, a wheel, the RPM and the .deb need no npm.  This script is how
they got there and how CI proves they are what the lock file says:

    python3 vspctui/web/assets/build.py           # npm ci, then copy into static/vendor
    python3 vspctui/web/assets/build.py --check   # npm ci, then fail if they differ

Exit status: 0 done (or matching), 1 the committed files differ, 3 npm ci failed.

`npm ci` installs exactly package-lock.json's versions (bounded by a timeout); then the
files below are copied (or compared) byte for byte, and VERSIONS records the versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE.parent / "static" / "vendor"
# (file in node_modules, name under static/vendor)
FILES = (
    ("@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("@xterm/xterm/css/xterm.css", "xterm.css"),
    ("@xterm/xterm/LICENSE", "LICENSE.xterm"),
    ("@xterm/addon-fit/lib/addon-fit.js", "addon-fit.js"),
    ("@xterm/addon-fit/LICENSE", "LICENSE.addon-fit"),
)
PACKAGES = ("@xterm/xterm", "@xterm/addon-fit")


def npm_ci(timeout: float) -> None:
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=HERE,
        check=True,
        timeout=timeout,
    )


def versions() -> str:
    lines = []
    for package in PACKAGES:
        meta = json.loads((HERE / "node_modules" / package / "package.json").read_text())
        lines.append(f"{package} {meta['version']}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not copy")
    parser.add_argument("--no-install", action="store_true", help="use node_modules as it is")
    parser.add_argument("--timeout", type=float, default=300.0, help="npm ci's time limit (s)")
    args = parser.parse_args(argv)
    if not args.no_install:
        try:
            npm_ci(args.timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"npm ci failed: {exc}")
            return 3  # not a mismatch: .ci/run only notes it
    wanted = {name: (HERE / "node_modules" / source).read_bytes() for source, name in FILES}
    wanted["VERSIONS"] = versions().encode()
    if args.check:
        stale = [
            name
            for name, data in wanted.items()
            if not (VENDOR / name).is_file() or (VENDOR / name).read_bytes() != data
        ]
        if stale:
            print(f"static/vendor differs from package-lock.json: {', '.join(stale)}")
            print("run: python3 vspctui/web/assets/build.py")
            return 1
        print("static/vendor matches package-lock.json")
        return 0
    VENDOR.mkdir(parents=True, exist_ok=True)
    for name, data in wanted.items():
        (VENDOR / name).write_bytes(data)
    shutil.rmtree(HERE / "node_modules", ignore_errors=True)
    print(f"static/vendor: {', '.join(sorted(wanted))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
