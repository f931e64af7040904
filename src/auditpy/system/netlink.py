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
from collections.abc import Iterator

from auditpy.proto.netlink import (
    AUDIT_ADD_RULE,
    AUDIT_DEL_RULE,
    AUDIT_GET,
    AUDIT_GET_FEATURE,
    AUDIT_LIST_RULES,
    AUDIT_NLGRP_READLOG,
    AUDIT_SET,
    AUDIT_SET_FEATURE,
    AUDIT_SIGNAL_INFO,
    NETLINK_AUDIT,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    STATUS_PID,
    AuditFeatures,
    AuditStatus,
    SignalInfo,
    iter_standard_messages,
    pack_features,
    pack_message,
    pack_status,
    unpack_features,
    unpack_signal_info,
    unpack_status,
)
from auditpy.proto.records import MAX_AUDIT_MESSAGE_LENGTH
from auditpy.system.mmsg import RecordBatchReader

#: as a plain int: socket's flags are an IntFlag enum, whose `&` runs in Python on every read
_DONTWAIT = int(socket.MSG_DONTWAIT)

#: The audit daemon's receive buffer in the C tools: nlmsghdr + MAX_AUDIT_MESSAGE_LENGTH.
RECV_SIZE = NLMSG_HDRLEN + MAX_AUDIT_MESSAGE_LENGTH
#: Datagrams per recvmmsg call (about 1.1 MiB of buffers, touched only as far as records go).
BATCH_SLOTS = 128


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
            self.set_rcvbuf(rcvbuf)
        self._seq = 0
        self._batch: RecordBatchReader | None = None
        self._batch_tried = multicast  # multicast datagrams may hold several messages
        self._rejected = 0
        self._truncated = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_rcvbuf(self, size: int) -> None:
        """SO_RCVBUFFORCE (root may pass rmem_max), else SO_RCVBUF; the kernel doubles it
        for its own accounting. Records already queued stay whatever the new size."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

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

    # -- rules and features (pyauditctl) ---------------------------------------------------

    def request_ack_value(self, msg_type: int, payload: bytes = b"", timeout: float = 2.0) -> int:
        """Send a request and return the ack's value: a few AUDIT_SET requests (lost and
        backlog_wait_time_actual resets) answer with the old counter there instead of 0."""
        seq = self.send(msg_type, payload)
        for reply_type, reply in self._replies(seq, timeout):
            if reply_type == NLMSG_ERROR:
                value: int = struct.unpack_from("=i", reply)[0]
                if value < 0:
                    raise NetlinkError(-value, os.strerror(-value))
                return value
        raise TimeoutError(f"no reply from the kernel to audit request {msg_type}")

    def add_rule(self, rule: bytes) -> None:
        """AUDIT_ADD_RULE with a packed `struct audit_rule_data`; the kernel's refusal is
        raised as NetlinkError (EEXIST: the same rule is loaded, EINVAL: it is malformed)."""
        self.request(AUDIT_ADD_RULE, rule)

    def delete_rule(self, rule: bytes) -> None:
        self.request(AUDIT_DEL_RULE, rule)

    def list_rules(self, timeout: float = 5.0) -> list[bytes]:
        """Every loaded rule as `struct audit_rule_data` bytes, in the kernel's order.

        The kernel answers from a thread with one message per rule and NLMSG_DONE; the ack
        may come before or after them, so only NLMSG_DONE (or an error) ends the reply.
        """
        seq = self.send(AUDIT_LIST_RULES)
        rules: list[bytes] = []
        for reply_type, reply in self._replies(seq, timeout, size=1 << 17):
            if reply_type == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", reply)
                if err:
                    raise NetlinkError(-err, os.strerror(-err))
            elif reply_type == AUDIT_LIST_RULES:
                rules.append(reply)
            elif reply_type == NLMSG_DONE:
                return rules
        raise TimeoutError("the kernel's rule list did not end")

    def get_features(self) -> AuditFeatures:
        return unpack_features(
            self.request(AUDIT_GET_FEATURE, pack_features(AuditFeatures()),
                         expect=AUDIT_GET_FEATURE)
        )

    def set_features(self, features: AuditFeatures) -> None:
        self.request(AUDIT_SET_FEATURE, pack_features(features))

    def _replies(
        self, seq: int, timeout: float, size: int = RECV_SIZE * 2
    ) -> Iterator[tuple[int, bytes]]:
        """The kernel's messages answering request `seq`, until `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.sock.settimeout(remaining)
            try:
                data, (nl_pid, _groups) = self.sock.recvfrom(size)
            except TimeoutError:
                return
            finally:
                self.sock.settimeout(None)
            if nl_pid != 0:
                continue
            for reply_type, reply_seq, reply in iter_standard_messages(data):
                if reply_seq == seq:
                    yield reply_type, reply

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
        types, payloads, enobufs = self.recv_columns(limit)
        return list(zip(types, payloads, strict=True)), enobufs

    def recv_columns(self, limit: int) -> tuple[list[int], list[bytes], int]:
        """`recv_records` as two lists, types and payloads (the daemon works on columns)."""
        if not self._batch_tried:
            self._batch_tried = True
            self._batch = RecordBatchReader.create(
                self.sock.fileno(), BATCH_SLOTS, MAX_AUDIT_MESSAGE_LENGTH
            )
        batch = self._batch
        if batch is None:
            records, enobufs = self._recv_one_by_one(limit)
            return [t for t, _p in records], [p for _t, p in records], enobufs
        types: list[int] = []
        payloads: list[bytes] = []
        enobufs = 0
        flags = _DONTWAIT
        read = 0
        while read < limit:
            try:
                got_types, got_payloads, count = batch.receive_columns(flags)
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
            types += got_types
            payloads += got_payloads
            read += count
            if count < batch.slots:
                break  # drained: no need for a call that only says EAGAIN
        return types, payloads, enobufs

    def _recv_one_by_one(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """recv_records for multicast sockets and where recvmmsg cannot be used."""
        records: list[tuple[int, bytes]] = []
        enobufs = 0
        recvmsg = self.sock.recvmsg
        flags = _DONTWAIT
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


class KernelConnection:
    """The audit daemon's two sockets: records arrive on `events` (the socket that registered,
    or that joined the read-only multicast group), requests go out on `control`, so that
    replies never interleave with the record stream.

    Requests may sleep in the kernel: while its record queue is longer than backlog_limit,
    the kernel makes every process that sends it a message wait up to backlog_wait_time
    ("penalize the sender", kernel/audit.c audit_receive), the registered daemon included.
    A daemon that sent one from the thread that reads the records would stop the reading
    that empties the queue, and every audited process would wait with it; so the daemon
    makes requests from a thread of their own while it goes on reading.
    """

    def __init__(self, *, multicast: bool, rcvbuf: int) -> None:
        self.multicast = multicast
        self.control = AuditSocket()
        try:
            self.events = AuditSocket(multicast=multicast, rcvbuf=rcvbuf)
        except BaseException:
            self.control.close()
            raise

    # the record stream (the loop's thread)

    def fileno(self) -> int:
        return self.events.fileno()

    def recv_records(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        return self.events.recv_records(limit)

    def set_rcvbuf(self, size: int) -> None:
        self.events.set_rcvbuf(size)

    def recv_columns(self, limit: int) -> tuple[list[int], list[bytes], int]:
        return self.events.recv_columns(limit)

    def state(self) -> dict[str, str]:
        return {
            "kernel reads": self.events.read_method,
            "datagrams not from the kernel (dropped)": str(self.events.rejected),
            "records longer than 8970 bytes (cut)": str(self.events.truncated),
        }

    def state_counts(self) -> dict[str, int]:
        return {"truncated": self.events.truncated, "rejected": self.events.rejected}

    # requests (the requesting thread)

    def register(self, pid: int) -> None:
        self.events.register(pid)

    def unregister(self) -> None:
        self.control.unregister()

    def get_status(self) -> AuditStatus:
        return self.control.get_status()

    def set_status(self, status: AuditStatus) -> None:
        self.control.set_status(status)

    def signal_info(self) -> SignalInfo | None:
        return self.control.signal_info()

    def close(self) -> None:
        self.events.close()
        self.control.close()
