"""What the daemon counts, and the SIGCONT state report built from it."""

from __future__ import annotations

import time

from auditpy.structs import dataclass, field


@dataclass
class LogCount:
    """What became of the lines of one source (the kernel's records, the network clients',
    the daemon's own) at the log file."""

    written: int = 0
    #: lines not on disk, by the ledger's cause (log_suspended, log_disk_full,
    #: log_write_error)
    not_written: dict[str, int] = field(default_factory=dict)
    #: lines not logged because write_logs = no (by configuration, not a loss)
    not_logged: int = 0

    @property
    def lost(self) -> int:
        return sum(self.not_written.values())


@dataclass
class Counters:
    """What the daemon counts itself; what the log file counts (bytes written) is read from
    it when a report is made.

    The identity the ledger keeps for the kernel's records: received = written + not
    written (by cause) + not logged by configuration + EOE (never logged, only dispatched).
    """

    started: float = field(default_factory=time.time)
    #: records received from the kernel (events, EOE included)
    received: int = 0
    eoe: int = 0
    enobufs: int = 0
    write_errors: int = 0
    rotations: int = 0
    #: records received from tcp_listen_port clients (not in `received`, which is the kernel's)
    network_records: int = 0
    kernel: LogCount = field(default_factory=LogCount)
    network: LogCount = field(default_factory=LogCount)
    own: LogCount = field(default_factory=LogCount)
    #: events missing from the kernel's record stream by their serial numbers
    serial_gaps: int = 0

    @property
    def suspended_dropped(self) -> int:
        """Records received (kernel or network) that are not on disk; still dispatched."""
        return self.kernel.lost + self.network.lost


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
    ledger: list[str] | None = None,
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
    if ledger:
        text += "loss ledger (the figures of the metrics):\n"
        text += "".join(f"  {line}\n" for line in ledger)
    text += "configuration in force:\n"
    text += "".join(f"  {key} = {value}\n" for key, value in config_items.items())
    return text
