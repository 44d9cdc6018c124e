"""ProxySession's opening machine (`SessionState`, `_OPENING`) and its ERROR state.

Spec: docs/protocol.md §4.5.  One test per row of the transition table in common/session.py, one
per pair the table leaves out (nothing is sent, nothing changes), and the ERROR state
the telnet codec enters on a framing error.  The capture replay at every chunk
boundary is checked in test_capture_replay.py, which now records `state` too.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.common import vmware as vm
from vspc.common.session import (
    _OPENING,
    ProxySession,
    SessionState,
    TelnetProtocolError,
    _Input,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


WILL_EXT = h("ff fb e8")
WONT_THEN_WILL_EXT = h("ff fc e8 ff fb e8")  # a fresh WILL on an option already on
KS1 = h("ff fa e8 00 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 54 55 56 57 52 53 ff f0")
KS2 = h("ff fa e8 01 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 52 53 ff f0")
GETS = h("ff fa e8 51 ff f0 ff fa e8 53 ff f0")
# How to reach each state from a fresh session (after its offers were drained).
REACH = {
    SessionState.OPENED: b"",
    SessionState.KS2_SENT: WILL_EXT,
    SessionState.READY: WILL_EXT + KS1,
}
FRAMING_ERROR = h("ff fa e8 01 ff fa")  # IAC SB inside a subnegotiation


def at(state: SessionState) -> ProxySession:
    """A session in `state`, with nothing left to send."""
    proxy = ProxySession()
    proxy.initiate()
    proxy.receive_data(REACH[state])
    proxy.data_to_send()
    assert proxy.state is state
    return proxy


TABLE = [
    # (state, input, wire, what goes out, next state)
    (SessionState.OPENED, _Input.WILL_EXT, WILL_EXT, KS2, SessionState.KS2_SENT),
    (SessionState.OPENED, _Input.KS1, KS1, KS2 + GETS, SessionState.READY),
    (SessionState.KS2_SENT, _Input.KS1, KS1, GETS, SessionState.READY),
    (SessionState.READY, _Input.KS1, KS1, KS2, SessionState.READY),
]


def test_every_row_of_the_table_is_tested() -> None:
    assert {(state, trigger) for state, trigger, *_ in TABLE} == set(_OPENING)


@pytest.mark.parametrize(("state", "trigger", "wire", "out", "after"), TABLE)
def test_transition(
    state: SessionState, trigger: _Input, wire: bytes, out: bytes, after: SessionState
) -> None:
    proxy = at(state)
    assert proxy.receive_data(wire) == []
    assert proxy.data_to_send() == out
    assert proxy.state is after


@pytest.mark.parametrize("state", [SessionState.KS2_SENT, SessionState.READY])
def test_will_232_again_is_off_the_table_and_sends_no_ks2(state: SessionState) -> None:
    proxy = at(state)
    proxy.receive_data(WONT_THEN_WILL_EXT)
    assert proxy.data_to_send() == h("ff fe e8 ff fd e8")  # the codec's replies only
    assert proxy.state is state


@pytest.mark.parametrize("state", list(REACH))
def test_framing_error_enters_error_from_every_state(state: SessionState) -> None:
    proxy = at(state)
    with pytest.raises(TelnetProtocolError, match="IAC SB inside a subnegotiation"):
        proxy.receive_data(FRAMING_ERROR)
    assert proxy.state is SessionState.ERROR
    with pytest.raises(TelnetProtocolError, match="already failed.*IAC SB inside") as info:
        proxy.receive_data(KS1)  # a good command changes nothing now
    assert isinstance(info.value.__cause__, TelnetProtocolError)
    assert proxy.state is SessionState.ERROR
    assert proxy.data_to_send() == b""  # output still drains; nothing was answered


def test_error_keeps_replies_queued_before_the_fault() -> None:
    proxy = at(SessionState.OPENED)
    with pytest.raises(TelnetProtocolError):
        proxy.receive_data(h("ff fd 01") + FRAMING_ERROR)  # DO ECHO, then the fault
    assert proxy.data_to_send() == h("ff fc 01")  # WONT ECHO was queued before it


def test_two_begins_in_one_read_are_both_answerable() -> None:
    # Why the replies owed are a set rather than one slot of the state: the hub sees
    # the first BEGIN only after the whole read was parsed.
    proxy = at(SessionState.READY)
    events = proxy.receive_data(h("ff fa e8 28 01 01 ff f0 ff fa e8 28 02 02 ff f0"))
    assert events == [vm.VMotionBegin(h("01 01")), vm.VMotionBegin(h("02 02"))]
    proxy.notnow(h("01 01"))
    proxy.goahead(h("02 02"), h("aa bb cc dd"))
    assert proxy.data_to_send() == h("ff fa e8 2b 01 01 ff f0 ff fa e8 29 02 02 aa bb cc dd ff f0")


_PIECES = st.lists(
    st.sampled_from([WILL_EXT, KS1, WONT_THEN_WILL_EXT, h("41 42"), h("ff fd 01")]), max_size=6
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(_PIECES, _PIECES, st.binary(max_size=40))
def test_after_any_error_any_input_raises(before: bytes, noise: bytes, later: bytes) -> None:
    proxy = ProxySession()
    proxy.initiate()
    proxy.receive_data(before)
    state = proxy.state
    assert state is not SessionState.ERROR
    with pytest.raises(TelnetProtocolError) as first:
        proxy.receive_data(noise + FRAMING_ERROR)
    for chunk in (later, b"", noise):
        with pytest.raises(TelnetProtocolError, match="already failed") as again:
            proxy.receive_data(chunk)
        assert again.value.__cause__ is first.value
    assert proxy.state is SessionState.ERROR
