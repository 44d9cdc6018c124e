"""The daemon's HTTP routes (vspcd/http.py serves them; issue #11 item 3).

One table, `routes()`: adding `/metrics` or `/healthz` is one more `Route` here.

`GET /console_log/{uuid}` is what OpenStack Nova's VMware driver fetches when
`[vmware] serial_log_uri` is set (`nova/virt/vmwareapi/driver.py`,
`get_console_output`: `urlopen(f"{serial_log_uri}/console_log/{instance.uuid}").read()`).
Nova sends the instance UUID in its 8-4-4-4-12 form; any form `canonical_uuid` accepts
works (dashes, spaces, bare hex, any case).  The body is the last 100 KiB of that
console's log as raw bytes (`application/octet-stream`; Nova uses the bytes as they
are), the same cap Nova applies when it reads `serial_log_dir` itself
(MAX_CONSOLE_BYTES), read across a rotation and without `--log-timestamps` stamps.  An
unknown UUID is 404 (Nova logs it and falls back to `serial_log_dir`, if set).
"""

from __future__ import annotations

from collections.abc import Mapping

from vspc.common import vmware as vm
from vspc.vspcd.consolelog import ConsoleLogs
from vspc.vspcd.http import Response, Route, error_response
from vspc.vspcd.httpparse import Request
from vspc.vspcd.hub import Hub

__all__ = ["CONSOLE_LOG_BYTES", "routes"]

CONSOLE_LOG_BYTES = 100 * 1024


def _console_log(logs: ConsoleLogs, hub: Hub) -> Route:
    def handler(request: Request, params: Mapping[str, str]) -> Response:
        try:
            uuid = vm.canonical_uuid(params["uuid"])
        except ValueError:
            return error_response(404, "not a VM UUID")
        keys = [uuid]
        # A labelled port (`?port=` or --multi-console) has key UUID_LABEL; Nova knows
        # only the instance UUID, so any console of that VM answers after the plain one.
        keys += sorted(str(c.key) for c in hub.consoles() if c.key.uuid == uuid and c.key.label)
        for key in keys:
            if logs.has_log(key):
                body = logs.tail(key, CONSOLE_LOG_BYTES)
                return Response(200, body, "application/octet-stream")
        return error_response(404, "no console log for this UUID")

    return Route("/console_log/{uuid}", handler)


def routes(*, logs: ConsoleLogs | None, hub: Hub, console_log: bool) -> list[Route]:
    """The route table for the daemon's configuration."""
    table: list[Route] = []
    if console_log and logs is not None:
        table.append(_console_log(logs, hub))
    return table
