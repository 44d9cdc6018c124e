"""vspc-web's HTML (docs/vspc-web.md).  Every value is escaped with `html.escape`
(console names come from VMs, docs/security.md); no inline script or style: the
pages load /static/*.js and *.css, and pass data in `data-*` attributes."""

from __future__ import annotations

from html import escape
from urllib.parse import quote

__all__ = ["console_page", "list_page", "login_page", "message_page"]


def _page(
    title: str, body: str, *, scripts: tuple[str, ...] = (), styles: tuple[str, ...] = ()
) -> str:
    links = "".join(f'<link rel="stylesheet" href="/static/{s}">' for s in ("web.css", *styles))
    tags = "".join(f'<script src="/static/{s}"></script>' for s in scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>{links}</head>{body}{tags}</html>\n"
    )


def _header(who: str, csrf: str) -> str:
    return (
        '<header><a href="/" class="home">vspc-web</a>'
        f'<span class="who">{escape(who)}</span>'
        '<form method="post" action="/logout" class="logout">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<button type="submit">log out</button></form></header>'
    )


def list_page(who: str, csrf: str) -> str:
    body = (
        f'<body data-csrf="{escape(csrf)}">{_header(who, csrf)}<main>'
        "<h1>Consoles</h1>"
        '<p><label>Filter <input id="filter" type="search" autocomplete="off" '
        'placeholder="name, lock, connected, alert"></label> '
        '<span id="count" role="status"></span></p>'
        '<table id="consoles"><thead><tr><th>console</th><th>VM</th><th>clients</th>'
        "<th>lock</th><th>last activity</th><th>alert</th></tr></thead><tbody></tbody></table>"
        '<p id="status" role="status"></p></main></body>'
    )
    return _page("vspc-web: consoles", body, scripts=("list.js",))


def console_page(name: str, who: str, csrf: str) -> str:
    body = (
        f'<body data-csrf="{escape(csrf)}" data-console="{escape(name)}" '
        f'data-path="{escape(quote(name, safe=""))}">'
        f"{_header(who, csrf)}<main>"
        f"<h1>{escape(name)}</h1>"
        '<p id="state" role="status">connecting…</p>'
        '<p id="actions"></p>'
        '<div id="terminal"></div>'
        '<section id="alert-section" class="hidden"><h2>Alerts</h2>'
        '<ol id="alerts" class="alerts"></ol></section>'
        '<h2>Attached</h2><ul id="clients"></ul></main></body>'
    )
    return _page(
        f"vspc-web: {name}",
        body,
        scripts=("vendor/xterm.js", "vendor/addon-fit.js", "console.js"),
        styles=("vendor/xterm.css",),
    )


def login_page(login_csrf: str, error: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        "<body><main><h1>vspc-web</h1>"
        f"{message}"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="csrf" value="{escape(login_csrf)}">'
        '<p><label>User <input name="user" autocomplete="username" required></label></p>'
        '<p><label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label></p>'
        '<p><button type="submit">Log in</button></p></form></main></body>'
    )
    return _page("vspc-web: log in", body)


def message_page(title: str, text: str) -> str:
    body = f"<body><main><h1>{escape(title)}</h1><p>{escape(text)}</p></main></body>"
    return _page(f"vspc-web: {title}", body)
