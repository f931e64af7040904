"""The recvmmsg batch reader, on real netlink sockets (no privileges needed).

NETLINK_ROUTE answers a malformed request with an NLMSG_ERROR message from the kernel (port
0); NETLINK_USERSOCK lets one process socket send to another, which stands for a process
that tries to feed the daemon records.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from auditpy.system import mmsg
from auditpy.system.mmsg import NLMSG_HDRLEN, RecordBatchReader

NETLINK_ROUTE = 0
NETLINK_USERSOCK = 2
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4

pytestmark = pytest.mark.skipif(
    RecordBatchReader.create(-1, 1, 1) is None, reason="no recvmmsg through ctypes here"
)


def _netlink(protocol: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    sock.bind((0, 0))
    return sock


@pytest.fixture
def route() -> Iterator[socket.socket]:
    sock = _netlink(NETLINK_ROUTE)
    yield sock
    sock.close()


def _ask_for_errors(sock: socket.socket, count: int) -> None:
    """`count` requests of an unknown type: the kernel answers each with NLMSG_ERROR and a
    copy of the request header (whose last field is made non-zero: trailing NULs go)."""
    for seq in range(1, count + 1):
        header = struct.pack("=IHHII", 16, 0x7FFF, NLM_F_REQUEST | NLM_F_ACK, seq, 0x7F7F7F7F)
        sock.sendto(header, (0, 0))


def _drain(reader: RecordBatchReader) -> list[list[tuple[int, bytes]]]:
    batches = []
    while True:
        try:
            got, count = reader.receive(socket.MSG_DONTWAIT)
        except BlockingIOError:
            return batches
        batches.append(got)
        assert len(got) <= count <= reader.slots


def test_reads_the_kernels_datagrams_in_batches_of_at_most_slots(route: socket.socket) -> None:
    reader = RecordBatchReader(route.fileno(), 16, 4096)
    _ask_for_errors(route, 40)
    batches = _drain(reader)
    assert [len(b) for b in batches] == [16, 16, 8]
    records = [r for b in batches for r in b]
    assert {t for t, _p in records} == {NLMSG_ERROR}
    # Payload: the error code, then the header of the request it answers (seq 1..40, in order).
    seqs = [struct.unpack_from("=iIHHII", p)[4] for _t, p in records]
    assert seqs == list(range(1, 41))
    assert all(struct.unpack_from("=i", p)[0] < 0 for _t, p in records)
    assert reader.rejected == 0
    assert reader.truncated == 0


def test_nothing_waiting_is_blocking_io_error(route: socket.socket) -> None:
    reader = RecordBatchReader(route.fileno(), 4, 4096)
    with pytest.raises(BlockingIOError):
        reader.receive(socket.MSG_DONTWAIT)


def test_datagrams_from_a_process_are_rejected_and_counted() -> None:
    receiver, sender = _netlink(NETLINK_USERSOCK), _netlink(NETLINK_USERSOCK)
    try:
        port = receiver.getsockname()[0]
        reader = RecordBatchReader(receiver.fileno(), 8, 64)
        for _ in range(3):
            sender.sendto(struct.pack("=IHHII", 20, 1100, 0, 0, 0) + b"fake", (port, 0))
        assert _drain(reader) == [[]]
        assert reader.rejected == 3
    finally:
        receiver.close()
        sender.close()


def test_payload_is_everything_after_the_header_without_trailing_nuls() -> None:
    """The audit kernel puts only the payload length in nlmsg_len: the datagram size counts.
    Here a process socket stands in for the kernel to check the decoding itself."""
    receiver, sender = _netlink(NETLINK_USERSOCK), _netlink(NETLINK_USERSOCK)
    try:
        port = receiver.getsockname()[0]
        reader = RecordBatchReader(
            receiver.fileno(), 8, 100, sender=sender.getsockname()[0]
        )
        bodies = [b"audit(1.000:1): a=b", b"x" * 100, b"y\0\0\0", b"\0", b""]
        for i, body in enumerate(bodies):
            header = struct.pack("=IHHII", 7, 1300 + i, 0, 0, 0)  # a wrong nlmsg_len
            sender.sendto(header + body, (port, 0))
        sender.sendto(b"short", (port, 0))
        got = _drain(reader)
        assert got[0] == [
            (1300, b"audit(1.000:1): a=b"), (1301, b"x" * 100), (1302, b"y"), (1303, b""),
            (1304, b""),
        ]
        assert reader.rejected == 1  # shorter than a netlink header
        assert len(got[0][1][1]) == 100 and len(got) == 1
    finally:
        receiver.close()
        sender.close()


def test_a_datagram_larger_than_a_slot_is_cut_to_the_slot() -> None:
    receiver, sender = _netlink(NETLINK_USERSOCK), _netlink(NETLINK_USERSOCK)
    try:
        port = receiver.getsockname()[0]
        reader = RecordBatchReader(receiver.fileno(), 2, 10, sender=sender.getsockname()[0])
        sender.sendto(struct.pack("=IHHII", 0, 1300, 0, 0, 0) + b"0123456789abc", (port, 0))
        sender.sendto(struct.pack("=IHHII", 0, 1301, 0, 0, 0) + b"z", (port, 0))
        assert _drain(reader) == [[(1300, b"0123456789"), (1301, b"z")]]
        assert reader.truncated == 1
    finally:
        receiver.close()
        sender.close()


def test_without_recvmmsg_there_is_no_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmsg, "_RECVMMSG", None)
    assert RecordBatchReader.create(0, 4, 100) is None


def test_bad_geometry_is_refused() -> None:
    assert RecordBatchReader.create(0, 0, 100) is None
    with pytest.raises(ValueError):
        RecordBatchReader(0, 4, 0)


def test_header_length_constant_matches_netlink() -> None:
    from auditpy.proto.netlink import NLMSG_HDRLEN as NETLINK_HDRLEN

    assert NLMSG_HDRLEN == NETLINK_HDRLEN


def test_a_payload_longer_than_the_compact_slot_continues_in_its_overflow_slot() -> None:
    """Payloads up to FIRST_SLOT bytes sit in compact slots; a longer one goes on in a slot
    of its own and comes out whole, in order with the others."""
    receiver, sender = _netlink(NETLINK_USERSOCK), _netlink(NETLINK_USERSOCK)
    try:
        port = receiver.getsockname()[0]
        reader = RecordBatchReader(receiver.fileno(), 8, 8970, sender=sender.getsockname()[0])
        long_ = bytes(range(256)).replace(b"\0", b"a") * 30  # 7680 bytes, no NUL
        bodies = [b"short", long_, b"x" * mmsg.FIRST_SLOT, long_[:mmsg.FIRST_SLOT + 1] + b"\0"]
        for i, body in enumerate(bodies):
            sender.sendto(struct.pack("=IHHII", 0, 1300 + i, 0, 0, 0) + body, (port, 0))
        got = _drain(reader)
        assert got == [[(1300, b"short"), (1301, long_), (1302, b"x" * mmsg.FIRST_SLOT),
                        (1303, long_[:mmsg.FIRST_SLOT + 1])]]
        assert reader.truncated == 0 and reader.rejected == 0
    finally:
        receiver.close()
        sender.close()
