"""The kernel requests pyauditctl makes, as one small interface.

`KernelLink` sends them through `auditpy.system.netlink.AuditSocket`; tests hand the loader
and the command line a fake with the same methods, which is how `-e 2` and `-f 2` are shown
without ever reaching the kernel.
"""

from __future__ import annotations

import struct
from typing import Protocol

from auditpy.proto.netlink import AUDIT_SET, AuditFeatures, AuditStatus, pack_status
from auditpy.system.netlink import AuditSocket

AUDIT_TRIM = 1014
AUDIT_MAKE_EQUIV = 1015


class Link(Protocol):
    def get_status(self) -> AuditStatus: ...
    def set_status(self, status: AuditStatus) -> None: ...
    def reset_counter(self, status: AuditStatus) -> int: ...
    def get_features(self) -> AuditFeatures: ...
    def set_features(self, features: AuditFeatures) -> None: ...
    def list_rules(self) -> list[bytes]: ...
    def add_rule(self, rule: bytes) -> None: ...
    def delete_rule(self, rule: bytes) -> None: ...
    def user_message(self, msg_type: int, text: str) -> None: ...
    def trim(self) -> None: ...
    def make_equivalent(self, mount: str, subtree: str) -> None: ...
    def close(self) -> None: ...


class KernelLink:
    """The real kernel, over one NETLINK_AUDIT socket."""

    def __init__(self) -> None:
        self.sock = AuditSocket()

    def get_status(self) -> AuditStatus:
        return self.sock.get_status()

    def set_status(self, status: AuditStatus) -> None:
        self.sock.set_status(status)

    def reset_counter(self, status: AuditStatus) -> int:
        """AUDIT_SET of a counter (lost, backlog_wait_time_actual): the ack holds the value
        the counter had."""
        return self.sock.request_ack_value(AUDIT_SET, pack_status(status))

    def get_features(self) -> AuditFeatures:
        return self.sock.get_features()

    def set_features(self, features: AuditFeatures) -> None:
        self.sock.set_features(features)

    def list_rules(self) -> list[bytes]:
        return self.sock.list_rules()

    def add_rule(self, rule: bytes) -> None:
        self.sock.add_rule(rule)

    def delete_rule(self, rule: bytes) -> None:
        self.sock.delete_rule(rule)

    def user_message(self, msg_type: int, text: str) -> None:
        self.sock.request(msg_type, text.encode("utf-8", "surrogateescape") + b"\0")

    def trim(self) -> None:
        self.sock.request(AUDIT_TRIM)

    def make_equivalent(self, mount: str, subtree: str) -> None:
        a, b = mount.encode(), subtree.encode()
        self.sock.request(AUDIT_MAKE_EQUIV, struct.pack("=II", len(a), len(b)) + a + b)

    def close(self) -> None:
        self.sock.close()
