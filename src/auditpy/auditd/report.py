"""The SIGCONT state report as the daemon makes it: what it knows of its log, the kernel,
the dispatcher and the network, put into `counters.state_report`'s text.

Everything is passed in, nothing is asked for here: the daemon decides whether the kernel
can be asked now (a request while the record stream is busy can hold audited processes up),
so the report takes the kernel's figures as they were when last asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from auditpy import AUDIT_VERSION
from auditpy.auditd.counters import Counters, state_report
from auditpy.config.auditd_conf import AuditdConfig
from auditpy.structs import fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from auditpy.auditd.diskspace import SpacePolicy
    from auditpy.auditd.logfile import AuditLog
    from auditpy.proto.netlink import AuditStatus


def daemon_report(
    *,
    priority: int,
    config: AuditdConfig,
    counters: Counters,
    log_file: AuditLog | None,
    space: SpacePolicy,
    write_failing: bool,
    kernel_asked: tuple[AuditStatus, float] | None,
    metrics: str,
    sections: Iterable[dict[str, str]],
) -> str:
    """`kernel_asked` is the kernel's status when last asked and when (time.time()), None
    if never; `metrics` the Prometheus text, whose figures are the loss ledger's;
    `sections` the state of the kernel link, the dispatcher link and the network intake,
    in that order."""
    status, asked = kernel_asked or (None, 0.0)
    extra = {
        "kernel figures as of": time.strftime("%x %X", time.localtime(asked))
        if status else "never asked",
    }
    for section in sections:
        extra.update(section)
    return state_report(
        version=AUDIT_VERSION,
        priority=priority,
        writing=log_file is not None,
        counters=counters,
        written=log_file.records_written if log_file else 0,
        bytes_written=log_file.bytes_written if log_file else 0,
        kernel_lost=status.lost if status else None,
        kernel_backlog=status.backlog if status else None,
        log_state=log_state(log_file, config, space, write_failing=write_failing),
        config_items=config_items(config),
        ledger=[ln for ln in metrics.splitlines() if not ln.startswith("#")],
        extra=extra,
    )


def config_items(config: AuditdConfig) -> dict[str, str]:
    """Every setting in force, file modes in octal as they are written in auditd.conf."""
    return {
        f.name: f"{value:04o}" if f.name.endswith("_mode") else str(value)
        for f in fields(config) for value in [getattr(config, f.name)]
    }


def log_state(
    log_file: AuditLog | None, config: AuditdConfig, space: SpacePolicy, *,
    write_failing: bool,
) -> dict[str, str]:
    """The C daemon's lines about its log (nothing when write_logs = no), and ours about
    the file's repairs and its flush thread."""
    lf = log_file
    if lf is None:
        return {}
    st = lf.last_statvfs
    free = f"{st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB" if st else "unknown"
    return {
        "current log file": lf.path,
        "current log size": f"{lf.size // 1024} KiB",
        "max log size": f"{config.max_log_file * 1024} KiB",
        "Logging partition free space": free,
        "space_left setting": f"{space.space_left_mib:.0f} MiB",
        "admin_space_left setting": f"{space.admin_space_left_mib:.0f} MiB",
        "logging suspended": "yes" if lf.suspended or not lf.is_open else "no",
        "file system space action performed": "yes" if space.space_warning else "no",
        "admin space action performed": "yes" if space.admin_space_warning else "no",
        "disk error detected": "yes" if write_failing else "no",
        "torn records cut at open (a crash in the middle of a write)":
            f"{lf.torn_tails_repaired} ({lf.torn_bytes_removed} bytes)",
        "log flush thread restarts": str(lf.flush_thread_restarts),
    }
