"""common/peerlink.py: the inter-node link codec, without sockets (docs/cluster.md)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspc.common import vmware as vm
from vspc.common.peerlink import (
    HANDSHAKE_FRAME,
    NONCE,
    Call,
    LocalProtocolError,
    Message,
    PeerLinkCodec,
    RemoteProtocolError,
    Result,
    Side,
    StreamData,
    VmClosed,
    VmCongested,
    VmEvent,
    VmGoahead,
    VmOpen,
    VmPeerOk,
    VmSend,
)
from vspc.common.session import Notice, ProxyRequested, VmData, VmIdentified, VmNamed

SECRET = b"correct horse battery staple"


def pair(secret_d: bytes = SECRET, secret_l: bytes = SECRET) -> tuple[PeerLinkCodec, PeerLinkCodec]:
    dialer = PeerLinkCodec(Side.DIALER, "a", secret_d, b"\x01" * NONCE)
    listener = PeerLinkCodec(Side.LISTENER, "b", secret_l, b"\x02" * NONCE)
    return dialer, listener


def handshake(dialer: PeerLinkCodec, listener: PeerLinkCodec) -> None:
    assert listener.receive_data(dialer.data_to_send()) == []
    assert dialer.receive_data(listener.data_to_send()) == []
    assert listener.receive_data(dialer.data_to_send()) == []


def test_handshake_authenticates_both_sides() -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    assert dialer.authenticated and listener.authenticated
    assert dialer.peer_node == "b" and listener.peer_node == "a"


def test_wrong_secret_is_refused_by_the_dialer() -> None:
    dialer, listener = pair(secret_l=b"not the cluster secret!")
    listener.receive_data(dialer.data_to_send())
    with pytest.raises(RemoteProtocolError, match="secret"):
        dialer.receive_data(listener.data_to_send())
    assert not dialer.authenticated


def test_a_stranger_is_refused_by_the_listener() -> None:
    # A stranger that replays the listener's own proof cannot pass as a dialer.
    dialer, listener = pair(secret_d=b"guessed secret, wrong")
    listener.receive_data(dialer.data_to_send())
    proof_frames = listener.data_to_send()
    with pytest.raises(RemoteProtocolError):
        dialer.receive_data(proof_frames)
    stranger = PeerLinkCodec(Side.DIALER, "a", b"guessed secret, wrong", b"\x01" * NONCE)
    listener2 = PeerLinkCodec(Side.LISTENER, "b", SECRET, b"\x03" * NONCE)
    listener2.receive_data(stranger.data_to_send())
    hello_and_proof = listener2.data_to_send()
    # The stranger cannot verify, so it fakes a proof: the listener refuses it.
    from vspc.common.peerlink import Proof, _encode

    with pytest.raises(RemoteProtocolError, match="secret"):
        listener2.receive_data(_encode(Proof(b"\x00" * 32)))
    assert hello_and_proof and not listener2.authenticated


def test_messages_before_the_handshake_are_refused() -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    frame = dialer.send(VmOpen(1, "10.0.0.1:5000"))
    fresh = PeerLinkCodec(Side.LISTENER, "c", SECRET, b"\x04" * NONCE)
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        fresh.receive_data(frame)
    with pytest.raises(LocalProtocolError):
        fresh.send(VmOpen(1, "x"))


MESSAGES: list[Message] = [
    VmOpen(1, "[::1]:5000"),
    VmEvent(3, VmData(b"\x00\xff data")),
    VmEvent(3, ProxyRequested("S", "vSPC.py?port=a", "a", True)),
    VmEvent(3, ProxyRequested("C", "x", None, False)),
    VmEvent(3, VmIdentified("0123456789abcdeffedcba9800000000")),
    VmEvent(3, VmNamed("wéb01")),
    VmEvent(3, vm.VMotionBegin(b"\x76\x19\xff\xe9")),
    VmEvent(3, vm.VMotionPeer(b"\x76\x19\xff\xe9secret!!")),
    VmEvent(3, vm.VMotionComplete(b"\x76\x19\xff\xe9")),
    VmEvent(3, vm.VMotionAbort()),
    VmEvent(3, Notice("odd")),
    VmCongested(5, True),
    VmClosed(5),
    VmSend(2, b"typed\r"),
    VmGoahead(2, b"\xff\x00", b"12345678"),
    VmPeerOk(2, b"seq"),
    StreamData(7, b"x" * 1000),
    Call(9, {"op": "rows"}),
    Result(9, {"rows": [{"key": "k", "node": "a"}]}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    assert listener.receive_data(dialer.send(message)) == [message]


@given(st.lists(st.sampled_from(MESSAGES), max_size=12), st.integers(1, 64))
def test_chunk_boundaries_do_not_matter(messages: list[Message], chunk: int) -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    wire = b"".join(dialer.send(m) for m in messages)
    got: list[Message] = []
    for i in range(0, len(wire), chunk):
        got += listener.receive_data(wire[i : i + chunk])
    assert got == messages


@given(st.binary(max_size=300))
def test_garbage_after_the_handshake_never_crashes(data: bytes) -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    try:
        listener.receive_data(data)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            listener.receive_data(b"")  # a failed link stays failed


@given(st.binary(max_size=300))
def test_garbage_before_the_handshake_never_authenticates(data: bytes) -> None:
    listener = PeerLinkCodec(Side.LISTENER, "b", SECRET, b"\x02" * NONCE)
    with contextlib.suppress(RemoteProtocolError):
        listener.receive_data(data)
    assert not listener.authenticated


def test_oversized_frame_is_refused() -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    with pytest.raises(RemoteProtocolError, match="frame length"):
        listener.receive_data(b"\xff\xff\xff\xff")


@given(st.sampled_from(range(256)), st.binary(max_size=200))
def test_any_frame_type_with_any_body_decodes_or_is_refused(kind: int, body: bytes) -> None:
    """Every frame type, every body: a typed message or RemoteProtocolError, nothing
    else (a trusted peer with a bug must cost its link, never the node)."""
    import struct

    dialer, listener = pair()
    handshake(dialer, listener)
    frame = struct.pack(">IBI", len(body) + 5, kind, 1) + body
    try:
        messages = listener.receive_data(frame)
    except RemoteProtocolError:
        return
    assert len(messages) == 1 and getattr(messages[0], "channel", 1) == 1


def test_deeply_nested_json_is_refused_not_raised() -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    import struct

    body = b"[" * 200_000
    with pytest.raises(RemoteProtocolError, match="JSON"):
        listener.receive_data(struct.pack(">IBI", len(body) + 5, 40, 1) + body)


def test_a_frame_over_the_handshake_limit_is_refused_before_authentication() -> None:
    listener = PeerLinkCodec(Side.LISTENER, "b", SECRET, b"\x02" * NONCE)
    with pytest.raises(RemoteProtocolError, match="before the handshake"):
        listener.receive_data(struct.pack(">I", HANDSHAKE_FRAME + 1))


def test_frames_up_to_max_frame_are_accepted_after_authentication() -> None:
    dialer, listener = pair()
    handshake(dialer, listener)
    big = StreamData(3, b"z" * (HANDSHAKE_FRAME * 4))
    assert listener.receive_data(dialer.send(big)) == [big]
