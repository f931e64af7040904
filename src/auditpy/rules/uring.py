"""io_uring operations by name, for rules on the kernel's io_uring list (since Linux 5.16).

auditctl 3.0.9 knows neither the list nor the names; audit 3.1 added both, naming each
operation as the kernel's ``enum io_uring_op`` (include/uapi/linux/io_uring.h) does, in
lower case and without ``IORING_OP_``. The numbers are that enum's, which the kernel never
renumbers.
"""

from __future__ import annotations

from typing import Final

#: Operation number -> name, in the enum's order.
URING_OP_NAMES: Final = dict(enumerate((
    "nop", "readv", "writev", "fsync", "read_fixed", "write_fixed", "poll_add",
    "poll_remove", "sync_file_range", "sendmsg", "recvmsg", "timeout", "timeout_remove",
    "accept", "async_cancel", "link_timeout", "connect", "fallocate", "openat", "close",
    "files_update", "statx", "read", "write", "fadvise", "madvise", "send", "recv",
    "openat2", "epoll_ctl", "splice", "provide_buffers", "remove_buffers", "tee",
    "shutdown", "renameat", "unlinkat", "mkdirat", "symlinkat", "linkat", "msg_ring",
    "fsetxattr", "setxattr", "fgetxattr", "getxattr", "socket", "uring_cmd", "send_zc",
    "sendmsg_zc",
)))

URING_OPS: Final = {name: number for number, name in URING_OP_NAMES.items()}
