"""The audit netlink protocol as bytes: message headers, `struct audit_status`,
`struct audit_sig_info`. Pure: the socket that sends and receives them is
`auditpy.system.netlink`."""

from __future__ import annotations

import struct

from auditpy.structs import dataclass, fields

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
SOL_NETLINK = 270

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_USER = 1005
AUDIT_SIGNAL_INFO = 1010
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
AUDIT_SET_FEATURE = 1018
AUDIT_GET_FEATURE = 1019

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


@dataclass
class AuditFeatures:
    """`struct audit_features`: which features the kernel has on, and which are locked."""

    vers: int = 1
    mask: int = 0
    features: int = 0
    lock: int = 0


AUDIT_FEATURE_LOGINUID_IMMUTABLE = 0
_FEATURES = struct.Struct("=4I")


def pack_features(features: AuditFeatures) -> bytes:
    return _FEATURES.pack(features.vers, features.mask, features.features, features.lock)


def unpack_features(data: bytes) -> AuditFeatures:
    return AuditFeatures(*_FEATURES.unpack(data[: _FEATURES.size].ljust(_FEATURES.size, b"\0")))


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
