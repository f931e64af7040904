"""recvmmsg(2) for the kernel's record stream: many datagrams per system call.

The kernel sends the registered audit daemon one netlink message per datagram. Read with one
`recvfrom` each, the system calls and Python's per-call work were half of pyauditd's CPU
time (py-spy, RAW, 300,000 events). Python's socket module has no recvmmsg, so it is called
through ctypes on buffers allocated once: each datagram is scattered into a 16-byte slot for
its netlink header and a payload slot, so the message type is read from a compact header
array and the payload is copied out once. Where libc has no recvmmsg (or ctypes is missing)
`RecordBatchReader.create` returns None and the caller reads one datagram at a time.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
NLMSG_HDRLEN = 16
#: struct sockaddr_nl: family u16, pad u16, nl_pid u32, nl_groups u32.
SOCKADDR_NL_LEN = 12
#: The compact part of a payload slot (most records are a few hundred bytes).
FIRST_SLOT = 2048
MSG_TRUNC = 0x20


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc_recvmmsg() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    func.restype = ctypes.c_int
    return func


_RECVMMSG = _libc_recvmmsg()
#: Where the low and high bytes of nlmsg_type are (host byte order).
_TYPE_LO, _TYPE_HI = (4, 5) if struct.pack("=H", 1) == b"\1\0" else (5, 4)


class RecordBatchReader:
    """Reads up to `slots` one-message datagrams per call from a netlink socket, keeping
    those of one sender (the kernel, unless a test says otherwise).

    The socket is the caller's; this object only borrows its descriptor and must not be used
    after the socket is closed.
    """

    def __init__(self, fd: int, slots: int, payload_size: int, *, sender: int = 0) -> None:
        if _RECVMMSG is None:
            raise OSError("recvmmsg is not available")
        if slots < 1 or payload_size < 1:
            raise ValueError("bad batch geometry")
        self._fd = fd
        self._slots = slots
        self._size = payload_size
        #: The only netlink port whose datagrams count: 0 is the kernel.
        self._sender = sender
        #: Datagrams dropped: sent by a process, not the kernel, or too short for a header.
        self.rejected = 0
        #: Datagrams longer than a slot, delivered cut to it (as the C tools' buffer cuts).
        self.truncated = 0
        # Each datagram lands in a compact slot of at most FIRST_SLOT bytes for its payload,
        # and what is longer goes on in an overflow slot of its own. Both areas are
        # anonymous mappings: a page the kernel never writes costs no memory (the 1.1 MiB of
        # zeroed ctypes buffers this replaces were all resident), and the usual records,
        # a few hundred bytes, sit close together.
        self._first = first = min(FIRST_SLOT, payload_size)
        rest = payload_size - first
        self._areas = [mmap.mmap(-1, max(1, slots * size)) for size in (first, rest)]
        self._payloads = (ctypes.c_char * (slots * first)).from_buffer(self._areas[0])
        self._overflow = (ctypes.c_char * (slots * rest)).from_buffer(self._areas[1])
        self._headers = ctypes.create_string_buffer(slots * NLMSG_HDRLEN)
        self._names = ctypes.create_string_buffer(slots * SOCKADDR_NL_LEN)
        per = 3 if rest else 2
        self._iovs = (_IOVec * (per * slots))()
        self._hdrs = (_MMsgHdr * slots)()
        headers = ctypes.addressof(self._headers)
        payloads = ctypes.addressof(self._payloads)
        overflow = ctypes.addressof(self._overflow)
        names = ctypes.addressof(self._names)
        for i in range(slots):
            iov = per * i
            self._iovs[iov].iov_base = headers + i * NLMSG_HDRLEN
            self._iovs[iov].iov_len = NLMSG_HDRLEN
            self._iovs[iov + 1].iov_base = payloads + i * first
            self._iovs[iov + 1].iov_len = first
            if rest:
                self._iovs[iov + 2].iov_base = overflow + i * rest
                self._iovs[iov + 2].iov_len = rest
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name = names + i * SOCKADDR_NL_LEN
            hdr.msg_namelen = SOCKADDR_NL_LEN
            hdr.msg_iov = ctypes.addressof(self._iovs[iov])
            hdr.msg_iovlen = per
        stride = ctypes.sizeof(_MMsgHdr)
        flags_offset = _MsgHdr.msg_flags.offset  # msg_hdr is at the start of an mmsghdr
        if stride % 4 or _MMsgHdr.msg_len.offset % 4 or flags_offset % 4:
            raise OSError("unexpected struct mmsghdr layout")
        # The kernel rewrites msg_namelen, msg_flags and msg_len: each call starts from a copy.
        self._template = bytes(self._hdrs)
        self._hdr_bytes = memoryview(self._hdrs).cast("B")
        self._hdr_words = self._hdr_bytes.cast("I")
        self._len_first = _MMsgHdr.msg_len.offset // 4
        self._flags_first = flags_offset // 4
        self._hdr_step = stride // 4
        self._port_words = memoryview(self._names).cast("B").cast("I")
        self._header_bytes = memoryview(self._headers).cast("B")
        self._payload_bytes = memoryview(self._payloads).cast("B")
        self._overflow_bytes = memoryview(self._overflow).cast("B")
        # Strided views of one field of every slot: a call's values come out as lists in one
        # C call each (`tolist`), instead of an index computation per record in Python.
        self._lengths = self._hdr_words[self._len_first :: self._hdr_step]
        self._msg_flags = self._hdr_words[self._flags_first :: self._hdr_step]
        self._ports = self._port_words[1::3]  # nl_pid
        self._types = self._header_bytes.cast("H")[2 :: NLMSG_HDRLEN // 2]  # nlmsg_type
        self._starts = list(range(0, slots * first, first))

    @classmethod
    def create(cls, fd: int, slots: int, payload_size: int) -> RecordBatchReader | None:
        """A reader, or None where this platform cannot do recvmmsg through ctypes."""
        try:
            return cls(fd, slots, payload_size)
        except (OSError, ValueError, TypeError):
            return None

    @property
    def slots(self) -> int:
        return self._slots

    def receive(self, flags: int) -> tuple[list[tuple[int, bytes]], int]:
        """`receive_columns` as (message type, payload) pairs."""
        types, payloads, count = self.receive_columns(flags)
        return list(zip(types, payloads, strict=True)), count

    def receive_columns(self, flags: int) -> tuple[list[int], list[bytes], int]:
        """The message type and the payload of each datagram the kernel sent, trailing NULs
        removed, and how many datagrams were read in all (the caller stops when fewer than
        `slots`).

        The payload is everything after the netlink header, whatever nlmsg_len says (the
        kernel puts only the payload length there for the audit daemon). Raises OSError
        with the kernel's errno when the first datagram could not be read (BlockingIOError
        when there is none); an error after some datagrams comes with the next call, as
        recvmmsg(2) does.
        """
        self._hdr_bytes[:] = self._template
        # Without MSG_TRUNC the kernel never reports more than the slots hold (msg_len is
        # what it copied), so a payload slice never reaches into the next slot.
        count = _RECVMMSG(
            self._fd, ctypes.addressof(self._hdrs), self._slots, flags & ~MSG_TRUNC, None
        )
        if count < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        # The usual batch: every datagram from the kernel, none cut short or shorter than a
        # header. Its records are made with one list comprehension; anything else, or a
        # payload with a NUL, goes through the record-by-record checks below.
        lengths = self._lengths[:count].tolist()
        if (
            count
            and self._ports[:count].tolist().count(self._sender) == count
            and min(lengths) >= NLMSG_HDRLEN
            and max(lengths) <= NLMSG_HDRLEN + self._first
            and not any(self._msg_flags[:count].tolist())
        ):
            view = self._payload_bytes
            payloads = [
                view[start : start + length - NLMSG_HDRLEN].tobytes()
                for start, length in zip(self._starts, lengths, strict=False)  # slots >= count
            ]
            if b"\0" not in b"".join(payloads):
                return self._types[:count].tolist(), payloads, count
        records = self._checked(count)
        return [t for t, _p in records], [p for _t, p in records], count

    def _checked(self, count: int) -> list[tuple[int, bytes]]:
        """The records of a batch, datagram by datagram: forged ones dropped, cut ones
        counted, trailing NULs removed."""
        words = self._hdr_words
        ports = self._port_words
        headers = self._header_bytes
        slot, rest = self._first, self._size - self._first
        first, flags_first, step = self._len_first, self._flags_first, self._hdr_step
        sender = self._sender
        out: list[tuple[int, bytes]] = []
        append = out.append
        for i in range(count):
            length = words[first + i * step] - NLMSG_HDRLEN
            if ports[i * 3 + 1] != sender or length < 0:  # nl_pid; a datagram shorter than a header
                self.rejected += 1
                continue
            if words[flags_first + i * step] & MSG_TRUNC:
                self.truncated += 1
            payload = self._payload_bytes[i * slot : i * slot + min(length, slot)].tobytes()
            if length > slot:
                payload += self._overflow_bytes[i * rest : i * rest + length - slot].tobytes()
            at = i * NLMSG_HDRLEN
            append((headers[at + _TYPE_LO] | headers[at + _TYPE_HI] << 8,
                    payload.rstrip(b"\0")))
        return out
