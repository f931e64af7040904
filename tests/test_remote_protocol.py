"""The managed-format codec: exact bytes, round trips, and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.proto import remote as rp
from auditpy.proto.remote import Frame, FrameReader, ProtocolError, pack_frame

types = st.one_of(
    st.sampled_from(sorted(rp.TYPE_NAMES)), st.integers(min_value=0, max_value=0xFFFFFFFF)
)
#: Large payloads are built by repetition: random 9 KB blobs would exhaust hypothesis' budget.
payloads = st.binary(max_size=300) | st.builds(
    lambda unit, size: (unit * rp.MAX_PAYLOAD)[:size],
    st.binary(min_size=1, max_size=4),
    st.integers(min_value=8000, max_value=rp.MAX_PAYLOAD),
)
frames = st.tuples(
    types,
    st.integers(min_value=0, max_value=rp.MAX_SEQ),
    payloads,
    st.integers(min_value=0, max_value=255),
)


def test_layout_matches_what_debian_audisp_remote_sends() -> None:
    # Captured from /sbin/audisp-remote 3.0.9: little-endian, payload length 34, seq 2.
    line = b"type=USER msg=audit(1.0:1): hello\n"
    wire = bytes.fromhex("fe0000ff" "00" "00" "00000000" "2200" "02000000") + line
    assert pack_frame(rp.TYPE_MESSAGE, 2, line) == wire
    assert FrameReader().feed(wire) == [Frame(rp.TYPE_MESSAGE, 2, line)]


def test_constants() -> None:
    assert rp.HEADER_SIZE == 16
    assert rp.MAGIC_BYTES == b"\xfe\x00\x00\xff"
    assert b"\n" not in rp.MAGIC_BYTES
    assert (rp.TYPE_ACK, rp.TYPE_ENDING) == (0x40000000, 0x40000001)
    assert (rp.TYPE_DISKLOW, rp.TYPE_DISKFULL, rp.TYPE_DISKERROR) == (
        0x50000001, 0x60000001, 0x60000002,
    )
    assert rp.MAX_FRAME == 16 + 8970


def test_reply_classification() -> None:
    assert rp.is_error_reply(rp.TYPE_DISKFULL) and rp.is_error_reply(rp.TYPE_DISKERROR)
    assert rp.is_error_reply(0x60000099)
    assert not rp.is_error_reply(rp.TYPE_ACK) and not rp.is_error_reply(rp.TYPE_DISKLOW)
    assert not rp.is_error_reply(0x20000000)  # FATAL bit without REPLY: not a reply at all
    assert rp.is_warning_reply(rp.TYPE_DISKLOW) and not rp.is_warning_reply(rp.TYPE_DISKFULL)
    assert rp.is_reply(rp.TYPE_ENDING) and not rp.is_reply(rp.TYPE_HEARTBEAT)
    assert rp.type_name(rp.TYPE_DISKFULL) == "DISKFULL"
    assert rp.type_name(0x60000003) == "ERROR(0x60000003)"
    assert rp.type_name(0x50000007) == "WARNING(0x50000007)"
    assert rp.type_name(0x7) == "UNKNOWN(0x00000007)"
    assert Frame(rp.TYPE_ACK, 1, b"bad\x00\nnews").text == "bad??news"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, b"x" * (rp.MAX_PAYLOAD + 1)), "exceeds"),
        ((0, -1, b""), "sequence"),
        ((0, 2**32, b""), "sequence"),
        ((2**32, 1, b""), "type"),
    ],
)
def test_pack_refuses_values_that_do_not_fit(args: tuple[int, int, bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_frame(*args)


def test_pack_refuses_bad_message_version() -> None:
    with pytest.raises(ValueError, match="version"):
        pack_frame(0, 1, b"", msg_version=256)


def header(hver: int = 0, length: int = 0, magic: int = rp.MAGIC) -> bytes:
    return struct.pack("<IBBIHI", magic, hver, 0, rp.TYPE_ACK, length, 1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (header(magic=0x12345678), "bad magic"),
        (b"GET / HTTP/1.0\r\n", "bad magic"),
        (header(hver=1), "unsupported header version 1"),
        (header(length=rp.MAX_PAYLOAD + 1), "exceeds the maximum"),
        (header(length=0xFFFF), "frame length 65535"),
        (b"\xfe\x00\x01", "bad magic"),
    ],
)
def test_hostile_headers(data: bytes, reason: str) -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError, match=reason):
        reader.feed(data)
    assert reader.failed and reader.buffered == 0
    with pytest.raises(ProtocolError):  # stays failed
        reader.feed(pack_frame(rp.TYPE_ACK, 1))


def test_frames_before_the_fault_are_returned_with_the_error() -> None:
    good = pack_frame(rp.TYPE_ACK, 1) + pack_frame(rp.TYPE_ACK, 2)
    with pytest.raises(ProtocolError) as info:
        FrameReader().feed(good + b"garbage-garbage-garbage")
    assert [frame.seq for frame in info.value.frames] == [1, 2]


def test_partial_magic_waits_for_more() -> None:
    reader = FrameReader()
    assert reader.feed(b"\xfe\x00") == []
    assert reader.buffered == 2
    assert reader.feed(pack_frame(rp.TYPE_ACK, 9)[2:]) == [Frame(rp.TYPE_ACK, 9, b"")]
    assert reader.buffered == 0


def test_legacy_ascii_lines_for_servers() -> None:
    reader = FrameReader(legacy_ascii=True)
    data = b"type=USER msg=old\n" + pack_frame(0, 5, b"new") + b"partial"
    out = reader.feed(data)
    assert [(f.legacy_ascii, f.payload) for f in out] == [(True, b"type=USER msg=old"),
                                                          (False, b"new")]
    assert out[0].type_name == "ASCII"
    assert reader.feed(b" line\n")[0].payload == b"partial line"
    with pytest.raises(ProtocolError, match="longer than"):
        reader.feed(b"y" * (rp.MAX_PAYLOAD + 1))


def test_max_payload_is_configurable_within_the_field() -> None:
    reader = FrameReader(max_payload=10)
    with pytest.raises(ProtocolError):
        reader.feed(pack_frame(0, 1, b"x" * 11))
    with pytest.raises(ValueError):
        FrameReader(max_payload=70000)


@given(st.lists(frames, max_size=6))
def test_round_trip(items: list[tuple[int, int, bytes, int]]) -> None:
    wire = b"".join(pack_frame(t, s, p, msg_version=v) for t, s, p, v in items)
    out = FrameReader().feed(wire)
    assert [(f.msg_type, f.seq, f.payload, f.msg_version) for f in out] == items


@settings(max_examples=30)
@given(st.lists(frames, min_size=1, max_size=3), st.data())
def test_any_split_gives_the_same_frames(
    items: list[tuple[int, int, bytes, int]], data: st.DataObject
) -> None:
    wire = b"".join(pack_frame(t, s, p, msg_version=v) for t, s, p, v in items)
    expected = FrameReader().feed(wire)
    # every single split point for short streams; random multi-way splits for long ones
    points = range(len(wire) + 1) if len(wire) < 700 else data.draw(
        st.lists(st.integers(0, len(wire)), max_size=40)
    )
    for point in points:
        reader = FrameReader()
        assert reader.feed(wire[:point]) + reader.feed(wire[point:]) == expected
        assert reader.buffered == 0
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    reader = FrameReader()
    got: list[Frame] = []
    for start, stop in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += reader.feed(wire[start:stop])
        assert reader.buffered < rp.MAX_FRAME
    assert got == expected


@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_hostile_streams_give_frames_or_protocol_error(
    chunks: list[bytes], legacy_ascii: bool
) -> None:
    reader = FrameReader(legacy_ascii=legacy_ascii)
    for chunk in chunks:
        try:
            for frame in reader.feed(chunk):
                assert len(frame.payload) <= rp.MAX_PAYLOAD
        except ProtocolError as exc:
            assert exc.reason
            return
        assert reader.buffered < rp.MAX_FRAME


@given(st.lists(frames, max_size=3), st.binary(max_size=40), st.lists(frames, max_size=2))
def test_valid_frames_around_garbage(
    before: list[tuple[int, int, bytes, int]],
    junk: bytes,
    after: list[tuple[int, int, bytes, int]],
) -> None:
    wire = b"".join(pack_frame(t, s, p, msg_version=v) for t, s, p, v in before)
    tail = b"".join(pack_frame(t, s, p, msg_version=v) for t, s, p, v in after)
    reader = FrameReader()
    try:
        out = reader.feed(wire + junk + tail)
    except ProtocolError as exc:
        out = exc.frames
    assert [(f.msg_type, f.seq, f.payload) for f in out[: len(before)]] == [
        (t, s, p) for t, s, p, _ in before
    ]


@given(st.integers(min_value=rp.MAX_PAYLOAD + 1, max_value=0xFFFF), st.binary(max_size=20))
def test_oversized_frames_are_refused_without_buffering(length: int, rest: bytes) -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        reader.feed(header(length=length) + rest)
    assert reader.buffered == 0
