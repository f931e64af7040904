"""What the daemon counts, and the SIGCONT state report built from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Counters:
    """What the daemon counts itself; what the log file counts (records and bytes written)
    is read from it when a report is made.

    `suspended_dropped` are events received while logging was suspended or failing; they were
    still dispatched, but are not on disk, and the state report says so.
    """

    started: float = field(default_factory=time.time)
    received: int = 0
    enobufs: int = 0
    suspended_dropped: int = 0
    write_errors: int = 0
    rotations: int = 0
    #: records received from tcp_listen_port clients (not in `received`, which is the kernel's)
    network_records: int = 0


def state_report(
    *,
    version: str,
    priority: int,
    writing: bool,
    counters: Counters,
    written: int,
    bytes_written: int,
    kernel_lost: int | None,
    kernel_backlog: int | None,
    log_state: dict[str, str],
    config_items: dict[str, str],
    extra: dict[str, str] | None = None,
) -> str:
    """The state file's text: `key = value` lines like the C daemon's, then the counters and
    the configuration in force, which an operator asks for when something looks wrong."""
    lines = [
        ("audit version", version),
        ("current time", time.strftime("%x %X")),
        ("process priority", str(priority)),
        ("writing to logs", "yes" if writing else "no"),
    ]
    lines += list(log_state.items())
    lines += [
        ("records received", str(counters.received)),
        ("records written", str(written)),
        ("bytes written", str(bytes_written)),
        ("records not written (suspended or disk error)", str(counters.suspended_dropped)),
        ("netlink ENOBUFS errors", str(counters.enobufs)),
        ("log rotations", str(counters.rotations)),
        ("records lost by the kernel", "unknown" if kernel_lost is None else str(kernel_lost)),
        ("kernel backlog", "unknown" if kernel_backlog is None else str(kernel_backlog)),
    ]
    if extra:
        lines += list(extra.items())
    text = "".join(f"{key} = {value}\n" for key, value in lines)
    text += "configuration in force:\n"
    text += "".join(f"  {key} = {value}\n" for key, value in config_items.items())
    return text
