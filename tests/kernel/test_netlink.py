"""The event socket against the kernel: registration and the record stream, read with
recvmmsg and, where that is unavailable, one datagram at a time."""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest

from auditpy.proto.netlink import AUDIT_USER, AuditStatus
from auditpy.system import mmsg
from auditpy.system.netlink import AuditSocket

from ..conftest import wait_for

AUDIT_USER_TYPE = 1005


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvfrom"])
def test_registered_socket_reads_every_user_message_once_in_order(
    kernel_state: AuditStatus, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    if not batched:
        monkeypatch.setattr(mmsg, "_RECVMMSG", None)
    events = AuditSocket(rcvbuf=4 << 20)
    assert events.read_method == "not chosen yet (no record read)"
    sender = AuditSocket()
    count = 600  # several recvmmsg batches of 128
    try:
        events.register(os.getpid())
        try:
            forger = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)
            with forger:
                # Root may send to another netlink port directly: a forged record.
                forged = struct.pack("=IHHII", 0, AUDIT_USER_TYPE, 0, 0, 0) + b"pytest-forged"
                forger.sendto(forged, (events.sock.getsockname()[0], 0))
            for i in range(count):
                sender.send(AUDIT_USER, b"pytest-netlink %d\0" % i, ack=False)
            seen: list[bytes] = []

            def read_what_is_there() -> bool:
                select.select([events.fileno()], [], [], 0.5)
                records, enobufs = events.recv_records(512)
                assert enobufs == 0
                for msg_type, payload in records:
                    assert b"pytest-forged" not in payload
                    if b"pytest-netlink " in payload:
                        assert msg_type == AUDIT_USER_TYPE
                        assert not payload.endswith(b"\0")
                        seen.append(payload.split(b"pytest-netlink ")[1].split(b"'")[0])
                return len(seen) >= count

            # select() does the waiting: no pause between reads
            wait_for(read_what_is_there, 10, f"{count} user messages", interval=0)
            assert seen == [b"%d" % i for i in range(count)]
            assert events.read_method == (
                "recvmmsg, up to 128 records per call" if batched
                else "recvmsg, one record per call"
            )
            assert events.rejected == 1
            assert events.truncated == 0
        finally:
            events.unregister()
    finally:
        events.close()
        sender.close()
