"""vspc-web: every console in a browser (docs/vspc-web.md).

An operator tool like vspc-tui: it speaks only the admin protocol and the attach
channel (docs/admin-protocol.md) and never imports vspcd.  Modules: `options` (the
command line, config file and environment), `auth` (tokens, password files, PAM, a
trusted proxy's header; login rate limiting), `sessions` (cookies, CSRF tokens,
expiry), `backend` (admin connections acting for a browser user, the shared read-only
feeds and private writers of a console), `listfeed` (the console list kept live from
`subscribe` events), `pages` (HTML, escaped), `app` (the aiohttp routes and
WebSockets), `cli` (the `vspc-web` entry point).  Installed with the `web` extra.
"""
