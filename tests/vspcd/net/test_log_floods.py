"""Repeated warnings are aggregated (docs/reliability.md, "Logging under a flood"),
through real sockets: refused takeover claims cost one WARNING per period plus a
count, and an attached operator sees one notice per period, not one per claim.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.vspcd.harness import UUID_A, FakeEsxi, Operator, console_port, identified, running
from vspc.vspcd.hub.events import HubEvent, TakeoverRefused

CLAIMS = 40


def test_refused_takeover_claims_are_one_line_and_one_notice_per_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port or 0, uuid=UUID_A)
            await identified(events, UUID_A)
            operator = await Operator.connect(console_port(daemon, UUID_A))
            refused: list[HubEvent] = []
            assert daemon.hub is not None
            daemon.hub.subscribe(
                lambda event: refused.append(event) if isinstance(event, TakeoverRefused) else None
            )
            claims = await asyncio.gather(
                *(
                    FakeEsxi.connect(daemon.proxy_port or 0, uuid=UUID_A, local="127.0.0.2")
                    for _ in range(CLAIMS)
                )
            )
            async with asyncio.timeout(5):
                while len(refused) < CLAIMS - 1:  # one of them is the challenger  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # let the notices reach the operator
            notices = operator.output.data.count(b"refused a VM connection")
            assert notices == 1, bytes(operator.output.data)
            for claim in claims:
                await claim.close()
            await operator.close()
            await vm.close()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "refused VM connection" in r.getMessage()]
    assert len(lines) == 1, lines
    probes = [r for r in caplog.records if "claims it from another host" in r.getMessage()]
    assert len(probes) <= 1
