"""The kernel side: the NETLINK_AUDIT socket, `struct audit_status`, registration, receiving.

Everything above this module sees records as ``(msg_type, payload)`` pairs of ints and bytes;
nothing above it knows about netlink headers or the kernel's length quirk.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass, fields

from .mmsg import RecordBatchReader

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
SOL_NETLINK = 270

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_USER = 1005
AUDIT_SIGNAL_INFO = 1010
AUDIT_EOE = 1320
AUDIT_REPLACE = 1329

STATUS_ENABLED = 0x1
STATUS_FAILURE = 0x2
STATUS_PID = 0x4
STATUS_RATE_LIMIT = 0x8
STATUS_BACKLOG_LIMIT = 0x10
STATUS_BACKLOG_WAIT_TIME = 0x20
STATUS_LOST = 0x40
STATUS_BACKLOG_WAIT_TIME_ACTUAL = 0x80

NLMSG_HDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = NLMSG_HDR.size
#: The audit daemon's receive buffer in the C tools: nlmsghdr + MAX_AUDIT_MESSAGE_LENGTH.
MAX_AUDIT_MESSAGE_LENGTH = 8970
RECV_SIZE = NLMSG_HDRLEN + MAX_AUDIT_MESSAGE_LENGTH
#: Datagrams per recvmmsg call (about 1.1 MiB of buffers, touched only as far as records go).
BATCH_SLOTS = 128


@dataclass
class AuditStatus:
    """`struct audit_status`; older kernels send a prefix of it and the rest reads as 0."""

    mask: int = 0
    enabled: int = 0
    failure: int = 0
    pid: int = 0
    rate_limit: int = 0
    backlog_limit: int = 0
    lost: int = 0
    backlog: int = 0
    feature_bitmap: int = 0
    backlog_wait_time: int = 0
    backlog_wait_time_actual: int = 0


_STATUS_FIELDS = [f.name for f in fields(AuditStatus)]
_STATUS = struct.Struct(f"={len(_STATUS_FIELDS)}I")


def pack_status(status: AuditStatus) -> bytes:
    return _STATUS.pack(*(getattr(status, name) for name in _STATUS_FIELDS))


def unpack_status(data: bytes) -> AuditStatus:
    padded = data[: _STATUS.size].ljust(_STATUS.size, b"\0")
    return AuditStatus(*_STATUS.unpack(padded))


def pack_message(
    msg_type: int, seq: int, payload: bytes = b"", flags: int = NLM_F_REQUEST
) -> bytes:
    """A request to the kernel: header with the standard length, payload padded to 4 bytes."""
    length = NLMSG_HDRLEN + len(payload)
    padding = b"\0" * (-length % 4)
    return NLMSG_HDR.pack(length, msg_type, flags, seq, 0) + payload + padding


@dataclass(frozen=True)
class SignalInfo:
    """Who sent the last TERM/HUP/USR1/USR2 to the registered daemon (`struct audit_sig_info`)."""

    auid: int
    pid: int
    context: str | None


def unpack_signal_info(data: bytes) -> SignalInfo:
    auid, pid = struct.unpack_from("=Ii", data)
    ctx = data[8:].split(b"\0", 1)[0]
    return SignalInfo(auid, pid, ctx.decode("utf-8", "replace") if ctx else None)


class NetlinkError(OSError):
    """The kernel refused a request; errno is the kernel's."""


class AlreadyRegisteredError(NetlinkError):
    def __init__(self, other_pid: int) -> None:
        super().__init__(
            errno.EEXIST,
            f"another audit daemon (pid {other_pid}) is registered with the kernel; "
            "stop it first, or set kernel_link = multicast to read beside it",
        )
        self.other_pid = other_pid


class AuditSocket:
    """One NETLINK_AUDIT socket.

    The daemon uses two: the *event* socket, whose port the kernel sends records to once the
    daemon registered from it (or which joined the read-only multicast group), and a *control*
    socket for synchronous requests, so that replies never interleave with the record stream.
    """

    def __init__(self, *, multicast: bool = False, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT
        )
        self.multicast = multicast
        groups = 1 << (AUDIT_NLGRP_READLOG - 1) if multicast else 0
        self.sock.bind((0, groups))
        if rcvbuf:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._seq = 0
        self._batch: RecordBatchReader | None = None
        self._batch_tried = multicast  # multicast datagrams may hold several messages
        self._rejected = 0
        self._truncated = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def rejected(self) -> int:
        """Datagrams on the record stream that were dropped: not sent by the kernel (a
        process may try to forge records) or shorter than a netlink header."""
        return self._rejected + (self._batch.rejected if self._batch is not None else 0)

    @property
    def truncated(self) -> int:
        """Records longer than MAX_AUDIT_MESSAGE_LENGTH, kept cut to it (as auditd does)."""
        return self._truncated + (self._batch.truncated if self._batch is not None else 0)

    @property
    def read_method(self) -> str:
        """How records are read, for the state report: recvmmsg needs ctypes and libc's
        recvmmsg, and falls back to one recvmsg per record without them."""
        if self._batch is not None:
            return f"recvmmsg, up to {self._batch.slots} records per call"
        if not self._batch_tried:
            return "not chosen yet (no record read)"
        return "recvmsg, one record per call"

    def close(self) -> None:
        if self._batch is not None:
            self._rejected += self._batch.rejected
            self._truncated += self._batch.truncated
        # The reader holds the descriptor's number, which the next open may reuse.
        self._batch, self._batch_tried = None, True
        self.sock.close()

    # -- requests ---------------------------------------------------------------------------

    def send(self, msg_type: int, payload: bytes = b"", *, ack: bool = True) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.sendto(pack_message(msg_type, self._seq, payload, flags), (0, 0))
        return self._seq

    def request(
        self, msg_type: int, payload: bytes = b"", *, expect: int | None = None,
        timeout: float = 2.0,
    ) -> bytes:
        """Send a request and wait for its answer: the reply of type `expect`, or the ack.

        The kernel may send a reply after the ack (replies come from a kernel thread), so
        an ack only ends the wait when no reply is expected; an error always does.
        """
        seq = self.send(msg_type, payload)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply from the kernel to audit request {msg_type}")
            self.sock.settimeout(remaining)
            try:
                data, (nl_pid, _groups) = self.sock.recvfrom(RECV_SIZE * 2)
            finally:
                self.sock.settimeout(None)
            if nl_pid != 0:
                continue  # only the kernel may answer; anything else is spoofed
            for reply_type, reply_seq, reply in iter_standard_messages(data):
                if reply_seq != seq:
                    continue
                if reply_type == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", reply)
                    if err:
                        raise NetlinkError(-err, os.strerror(-err))
                    if expect is None:
                        return b""
                elif reply_type == expect:
                    return reply

    def get_status(self) -> AuditStatus:
        return unpack_status(self.request(AUDIT_GET, expect=AUDIT_GET))

    def set_status(self, status: AuditStatus) -> None:
        self.request(AUDIT_SET, pack_status(status))

    def signal_info(self) -> SignalInfo | None:
        """Who signalled us last; None when the kernel has nothing (e.g. not registered)."""
        try:
            reply = self.request(AUDIT_SIGNAL_INFO, expect=AUDIT_SIGNAL_INFO, timeout=1.0)
        except (NetlinkError, TimeoutError):
            return None
        return unpack_signal_info(reply) if len(reply) >= 8 else None

    # -- registration -----------------------------------------------------------------------

    def register(self, pid: int) -> None:
        """Make this socket's port the kernel's audit daemon (must be the event socket)."""
        try:
            self.set_status(AuditStatus(mask=STATUS_PID, pid=pid))
        except NetlinkError as exc:
            if exc.errno == errno.EEXIST:
                holder = self.get_status().pid
                raise AlreadyRegisteredError(holder) from None
            raise

    def unregister(self) -> None:
        self.set_status(AuditStatus(mask=STATUS_PID, pid=0))

    # -- the record stream ------------------------------------------------------------------

    def recv_records(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """Read up to about `limit` datagrams without blocking.

        Returns the records and how many ENOBUFS errors were seen: an overrun loses nothing
        by itself (kauditd requeues what it could not deliver), so it is counted, not fatal.
        Only the kernel's datagrams count; anything another process managed to send is
        dropped.
        """
        if not self._batch_tried:
            self._batch_tried = True
            self._batch = RecordBatchReader.create(
                self.sock.fileno(), BATCH_SLOTS, MAX_AUDIT_MESSAGE_LENGTH
            )
        batch = self._batch
        if batch is None:
            return self._recv_one_by_one(limit)
        records: list[tuple[int, bytes]] = []
        enobufs = 0
        flags = socket.MSG_DONTWAIT
        read = 0
        while read < limit:
            try:
                got, count = batch.receive(flags)
            except BlockingIOError:
                break
            except OSError as exc:
                read += 1  # each error is reported once; still, never spin here
                if exc.errno == errno.ENOBUFS:
                    enobufs += 1
                    continue
                if exc.errno == errno.EINTR:
                    continue
                raise
            records += got
            read += count
            if count < batch.slots:
                break  # drained: no need for a call that only says EAGAIN
        return records, enobufs

    def _recv_one_by_one(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """recv_records for multicast sockets and where recvmmsg cannot be used."""
        records: list[tuple[int, bytes]] = []
        enobufs = 0
        recvmsg = self.sock.recvmsg
        flags = socket.MSG_DONTWAIT
        unicast = not self.multicast
        for _ in range(limit):
            try:
                data, _ancillary, msg_flags, addr = recvmsg(RECV_SIZE, 0, flags)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    enobufs += 1
                    continue
                if exc.errno == errno.EINTR:
                    continue
                raise
            if addr[0] != 0 or len(data) < NLMSG_HDRLEN:
                self._rejected += 1
                continue
            if msg_flags & socket.MSG_TRUNC:
                self._truncated += 1
            if unicast:
                # The kernel sends one record per datagram to the daemon, with nlmsg_len
                # holding the payload length only: trust the datagram size instead.
                payload = data[NLMSG_HDRLEN:]
                if payload[-1:] == b"\0":
                    payload = payload.rstrip(b"\0")
                records.append((data[4] | data[5] << 8, payload))
            else:
                records.extend(
                    (t, p.rstrip(b"\0")) for t, _s, p in iter_standard_messages(data)
                )
        return records, enobufs


def iter_standard_messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a datagram of standard netlink messages into (type, seq, payload)."""
    out: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset + NLMSG_HDRLEN <= len(data):
        length, msg_type, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            break
        out.append((msg_type, seq, data[offset + NLMSG_HDRLEN : offset + length]))
        offset += (length + 3) & ~3
    return out
