"""The metrics registry against a hub with fake clock, scheduler and channels: the
GOAHEAD latency including write-buffer queueing, vMotion outcomes by reason, bytes of
expired consoles, process-wide counters as differences, and the `Stats` reply codec
refusing malformed objects."""

from __future__ import annotations

from typing import Any

import pytest

from tests.vspcd.fakes import FakeClient, FakeScheduler
from tests.vspcd.hub.test_hub import SEQ, U1, Scene, begin, connect, make_rig, peer, scene
from vspc.common import vmware as vm
from vspc.common.admin import AdminError, LockMode, Stats
from vspc.common.session import VmData
from vspc.vspcd.faces.metrics import GOAHEAD_BUCKETS, Histogram, Metrics, Sources
from vspc.vspcd.net import counters


def metered(s: Scene) -> tuple[Metrics, Scene]:
    rig = s.rig
    metrics = Metrics(
        rig.hub,
        Sources(fds_in_use=lambda: 10, fd_limit=lambda: 1024),
        clock=rig.clock,
        call_later=rig.sched.call_later,
    )
    rig.hub.subscribe(metrics.observe)
    metrics._remember(s.console.key)  # subscribed after the scene's console appeared
    return metrics, s


def test_goahead_latency_counts_the_time_it_queued_behind_older_bytes() -> None:
    s = scene()
    metrics, _ = metered(s)
    s.src_vm.backlog = 4096  # VM-bound bytes still in the transport's buffer
    begin(s.rig, s.src, s.src_vm)  # GOAHEAD queues behind those 4 KiB
    assert metrics.goahead.count == 0
    sched: FakeScheduler = s.rig.sched
    sched.advance(0.02)
    assert metrics.goahead.count == 0  # still queued
    s.src_vm.backlog = 0
    sched.advance(0.005)
    assert metrics.goahead.count == 1
    assert metrics.goahead.sum == pytest.approx(0.025, abs=0.0051)


def test_goahead_into_an_empty_buffer_is_observed_at_once() -> None:
    s = scene()
    metrics, _ = metered(s)
    begin(s.rig, s.src, s.src_vm)
    assert metrics.goahead.count == 1 and metrics.goahead.sum == 0.0


def test_a_vmotion_that_ends_before_goahead_drained_is_not_observed() -> None:
    s = scene()
    metrics, _ = metered(s)
    s.src_vm.backlog = 100
    begin(s.rig, s.src, s.src_vm)
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    s.src_vm.backlog = 0
    s.rig.sched.advance(1.0)
    assert metrics.goahead.count == 0
    assert metrics.snapshot().vmotions_aborted["source_aborted"] == 1


def test_outcomes_abandoned_and_notnow_by_reason() -> None:
    s = scene(abandon_time=1.0)
    metrics, _ = metered(s)
    s.rig.hub.refuse_next_vmotion(s.console)
    s.rig.hub.vm_event(s.src, vm.VMotionBegin(SEQ))
    begin(s.rig, s.src, s.src_vm)
    s.rig.hub.vm_closed(s.src)  # the source leaves; no COMPLETE comes
    s.rig.sched.advance(1.5)
    stats = metrics.snapshot()
    assert stats.vmotions_notnow == {"operator": 1, "backlog": 0}
    assert stats.vmotions_abandoned == 1 and stats.vmotions_completed == 0
    assert sum(stats.vmotions_aborted.values()) == 0


def test_a_completed_vmotion_and_the_consoles_by_state() -> None:
    s = scene()
    metrics, _ = metered(s)
    cookie = begin(s.rig, s.src, s.src_vm)
    assert metrics.snapshot().consoles["pending"] == 1
    dst, _dst_vm = peer(s.rig, cookie)
    assert metrics.snapshot().consoles["peered"] == 1
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    stats = metrics.snapshot()
    assert stats.vmotions_completed == 1
    assert stats.consoles == {"connected": 1, "disconnected": 0, "pending": 0, "peered": 0}
    assert stats.clients == {"telnet": 1, "attach": 0}


def test_bytes_of_an_expired_console_stay_counted() -> None:
    rig = make_rig(vm_expire_time=5.0)
    metrics = Metrics(
        rig.hub,
        Sources(fds_in_use=lambda: 0, fd_limit=lambda: 0),
        clock=rig.clock,
        call_later=rig.sched.call_later,
    )
    rig.hub.subscribe(metrics.observe)
    conn, _fake = connect(rig, U1)
    rig.hub.vm_event(conn, VmData(b"hello"))
    rig.hub.vm_closed(conn)
    rig.sched.advance(6.0)
    assert rig.hub.console_by_port(7000) is None  # expired
    stats = metrics.snapshot()
    assert stats.bytes_vm_to_clients == 5
    assert stats.vm_connections == 1 and stats.vm_disconnections == 1
    assert sum(stats.consoles.values()) == 0


def test_input_dropped_and_held_by_reason() -> None:
    s = scene()
    metrics, _ = metered(s)
    reader = FakeClient("127.0.0.1:50002")
    watcher = s.rig.hub.attach(
        s.console, reader, kind="attach", lock=LockMode.FREE_FOR_ALL_OR_READONLY, readonly=True
    )
    s.rig.hub.client_input(watcher, b"nope")
    begin(s.rig, s.src, s.src_vm)
    s.type(b"held")
    stats = metrics.snapshot()
    assert stats.input_bytes_dropped["readonly"] == 4
    assert stats.held_input_bytes == 4
    assert stats.clients == {"telnet": 1, "attach": 1}


def test_process_wide_counters_are_reported_from_the_registry_start() -> None:
    counters.LISTENERS.backoffs += 3  # earlier daemons in this process
    counters.OUTPUT.dropped += 100
    metrics, _ = metered(scene())
    counters.LISTENERS.backoffs += 1
    counters.OUTPUT.dropped += 7
    stats = metrics.snapshot()
    assert stats.listener_backoffs == 1 and stats.client_bytes_dropped == 7


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram(GOAHEAD_BUCKETS)
    for value in (0.0005, 0.0006, 7.0):
        h.observe(value)
    snap = h.cumulative()
    assert snap.buckets[0] == (0.0005, 1)  # le is inclusive
    assert snap.buckets[1] == (0.001, 2)
    assert snap.buckets[-1] == (5.0, 2) and snap.count == 3  # 7 s only in +Inf


@pytest.mark.parametrize(
    "change",
    [
        {"consoles": {"connected": -1}},
        {"consoles": {"connected": True}},
        {"consoles": []},
        {"bytes_vm_to_clients": "12"},
        {"goahead_latency": {"buckets": [[0.1]], "sum": 0, "count": 0}},
        {"goahead_latency": None},
    ],
)
def test_a_malformed_stats_reply_is_a_clear_error(change: dict[str, Any]) -> None:
    good = metered(scene())[0].snapshot().to_json()
    assert Stats.from_json(good).to_json() == good
    with pytest.raises(AdminError):
        Stats.from_json({**good, **change})
