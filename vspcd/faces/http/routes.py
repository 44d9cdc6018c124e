"""The daemon's HTTP routes (vspcd/faces/http/server.py serves them).

One table, `routes()`, plus `metrics_routes()` (`--metrics`).

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

from collections.abc import Callable, Mapping

from vspc.common import vmware as vm
from vspc.vspcd.faces.exposition import CONTENT_TYPE
from vspc.vspcd.faces.http.parse import Request
from vspc.vspcd.faces.http.server import Response, Route, error_response
from vspc.vspcd.faces.metrics import Metrics, exposition
from vspc.vspcd.history.consolelog import ConsoleLogs
from vspc.vspcd.hub.hub import Hub

__all__ = ["CONSOLE_LOG_BYTES", "metrics_routes", "routes"]

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


def metrics_routes(
    metrics: Metrics | None,
    *,
    enabled: Callable[[], bool],
    health: Callable[[], list[str]],
) -> list[Route]:
    """`GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`.

    Always in the table when the HTTP listener runs; `enabled()` (the live `--metrics`
    setting, so a reload turns them on or off) decides per request, 404 while off.
    /healthz: 200 "ok" when `health()` finds nothing wrong, else 503 with one reason a
    line (docs/operations.md, "Metrics").
    """

    def scrape(request: Request, params: Mapping[str, str]) -> Response:
        if not enabled() or metrics is None:
            return error_response(404, "metrics are off (--metrics)")
        body = exposition(metrics.snapshot()).encode()
        return Response(200, body, CONTENT_TYPE)

    def healthz(request: Request, params: Mapping[str, str]) -> Response:
        if not enabled():
            return error_response(404, "metrics are off (--metrics)")
        problems = health()
        if problems:
            return Response(503, "".join(f"{p}\n" for p in problems).encode())
        return Response(200, b"ok\n")

    return [Route("/metrics", scrape), Route("/healthz", healthz)]
