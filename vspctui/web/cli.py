"""`vspc-web`: the command line, configuration file and environment (docs/vspc-web.md).

    vspc-web [--listen ADDR:PORT] [--socket PATH | --tcp HOST:PORT] [--config FILE]
             [--auth token|passwords|pam|proxy-header] [--token-file F]
             [--cert F --key F] [--password-file F] [--proxy-header H --trusted-proxy NET]

Options may also be set in a TOML file (`--config`, else $VSPC_WEB_CONFIG, else
/etc/vspc/vspc-web.toml when it exists): its keys are the long options with `_` for
`-` (`listen = "0.0.0.0:8443"`); the command line wins.  The admin socket is found
like every vspc tool's (vspctui/options.py).  On a loopback address the default is a
token (printed in the URL); anywhere else TLS and a login method are required.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vspc.vspctui.options import add_address_options, address_from

__all__ = ["DEFAULT_CONFIG", "build_parser", "main", "settings_from"]

DEFAULT_CONFIG = Path("/etc/vspc/vspc-web.toml")
DEFAULT_LISTEN = "127.0.0.1:8423"
METHODS = ("token", "passwords", "pam", "proxy-header")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vspc-web", description="vspcd's consoles in a browser (docs/vspc-web.md)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of these options (default $VSPC_WEB_CONFIG, else /etc/vspc/vspc-web.toml)",
    )
    parser.add_argument("--listen", metavar="ADDR:PORT", help=f"default {DEFAULT_LISTEN}")
    add_address_options(parser)
    parser.add_argument(
        "--auth",
        choices=METHODS,
        help="login method (default: token on loopback; required elsewhere)",
    )
    parser.add_argument("--token-file", metavar="FILE", help="the token (default: random)")
    parser.add_argument("--cert", metavar="FILE", help="TLS certificate chain (PEM)")
    parser.add_argument("--key", metavar="FILE", help="TLS private key (PEM)")
    parser.add_argument("--password-file", metavar="FILE", help="user:hash lines (argon2/bcrypt)")
    parser.add_argument("--pam-service", metavar="NAME", help="PAM service (default vspc-web)")
    parser.add_argument(
        "--proxy-header", metavar="NAME", help="the proxy's user header (default X-Remote-User)"
    )
    parser.add_argument(
        "--trusted-proxy",
        metavar="NET",
        action="append",
        help="a proxy address or network whose header is believed (repeat)",
    )
    parser.add_argument(
        "--idle-timeout", type=float, metavar="S", help="session idle limit (default 1800)"
    )
    parser.add_argument(
        "--session-lifetime", type=float, metavar="S", help="session absolute limit (default 43200)"
    )
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password on stdin, print an argon2id hash, exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests")
    return parser


def _file_values(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(table) - known - {"config"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return dict(table)


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    """The options: command line over config file over defaults.

    Raises:
        ValueError: a bad config file.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    config = ns.config or environ.get("VSPC_WEB_CONFIG")
    path = Path(config) if config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is not None:
        for key, value in _file_values(path, parser).items():
            if getattr(ns, key, None) is None:
                setattr(ns, key, value)
    return ns


def split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen: expected ADDR:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Any, str, int]:
    """(WebSettings, host, port) from the options.

    Raises:
        ValueError: an unsafe or inconsistent combination (the message says which).
    """
    from vspc.vspctui.web.app import WebSettings
    from vspc.vspctui.web.auth import (
        PamAuth,
        PasswordFileAuth,
        ProxyHeaderAuth,
        TokenAuth,
    )

    host, port = split_listen(ns.listen or DEFAULT_LISTEN)
    loopback = is_loopback(host)
    method = ns.auth or ("token" if loopback else None)
    if method is None:
        raise ValueError(
            f"--listen {host}: not loopback, so --auth passwords, pam or proxy-header is required"
        )
    tls = bool(ns.cert or ns.key)
    if tls and not (ns.cert and ns.key):
        raise ValueError("--cert and --key go together")
    if not loopback and not tls:
        raise ValueError(f"--listen {host}: not loopback, so --cert and --key are required")
    if not loopback and method == "token":
        raise ValueError("--auth token is for loopback addresses only")
    address = address_from(ns, environ, os.geteuid())
    fields: dict[str, Any] = {"address": address, "auth": method, "tls": tls}
    if ns.idle_timeout is not None:
        fields["idle"] = float(ns.idle_timeout)
    if ns.session_lifetime is not None:
        fields["lifetime"] = float(ns.session_lifetime)
    if method == "token":
        if ns.token_file:
            token = Path(ns.token_file).read_text().strip()
            if len(token) < 16:
                raise ValueError(f"--token-file {ns.token_file}: at least 16 characters")
        else:
            token = secrets.token_urlsafe(32)
        fields["token"] = TokenAuth(token)
    elif method == "passwords":
        if not ns.password_file:
            raise ValueError("--auth passwords needs --password-file")
        fields["passwords"] = PasswordFileAuth(Path(ns.password_file))
    elif method == "pam":
        fields["passwords"] = PamAuth(ns.pam_service or "vspc-web")
    else:
        fields["proxy"] = ProxyHeaderAuth.build(
            ns.proxy_header or "X-Remote-User", ns.trusted_proxy or ()
        )
    return WebSettings(**fields), host, port


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve(settings: Any, host: str, port: int, context: ssl.SSLContext | None) -> None:
    from aiohttp import web

    from vspc.vspctui.web.app import make_app

    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if context else "http"
    if settings.token is not None:
        print(f"vspc-web: {scheme}://{shown}:{bound}/?token={settings.token.token}", flush=True)
    else:
        print(f"vspc-web: {scheme}://{shown}:{bound}/ ({settings.auth})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = parse(argv, os.environ)
        import aiohttp  # noqa: F401  (after parse: --help works without the web extra)
    except ImportError:
        print("vspc-web: needs aiohttp: pip install 'vspc[web]'", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"vspc-web: {exc}", file=sys.stderr)
        return 2
    try:
        if ns.hash_password:
            from vspc.vspctui.web.auth import hash_password

            print(hash_password(sys.stdin.readline().rstrip("\n")))
            return 0
        settings, host, port = settings_from(ns, os.environ)
        context = tls_context(ns.cert, ns.key) if ns.cert else None
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"vspc-web: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # AuthError and friends: a configuration problem
        print(f"vspc-web: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if ns.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    asyncio.run(serve(settings, host, port, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
