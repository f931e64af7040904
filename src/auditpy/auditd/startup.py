"""What pyauditd needs before it registers with the kernel, and the registration itself,
kept apart from the daemon's loop (`auditd.daemon`, which brings in the loop and the rest).

While no daemon is registered, the kernel keeps what it audits only when it was booted with
audit=1 (up to backlog_limit), and drops it otherwise, without counting. A daemon restarted
after a crash closes that window by registering first: `register_early` opens the log and
the kernel link and registers (the C daemon's order) from here, before the rest of the daemon
is even imported; records then wait in the socket and the kernel's queue. Whatever fails
here is undone, and `Daemon.start` tries again the ordinary way, which reports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from auditpy.auditd.logfile import AuditLog, LogFileError, LogSettings
from auditpy.config.auditd_conf import AuditdConfig, load_auditd_conf
from auditpy.proto.netlink import STATUS_ENABLED, AuditStatus
from auditpy.structs import dataclass
from auditpy.system.logsetup import syslog_notifier
from auditpy.system.netlink import KernelConnection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

log = logging.getLogger("auditpy")

#: The registered daemon's kernel socket receive buffer while the kernel waits for it
#: (backlog_wait_time > 0; SO_RCVBUFFORCE, which the kernel doubles for its own accounting).
#: What it holds when the daemon dies is lost with it, while what the kernel could not hand
#: over waits in the kernel: with reads paced to the rate records come
#: (`Daemon._read_batch`) a small buffer costs a little throughput and loses about what the
#: C daemon loses in a crash, where larger ones lost twice that (bench/rcvbuf.py, with
#: --flush SYNC too; figures in the reliability issue's notes).
RCVBUF = 64 << 10
#: The registered daemon's buffer while the kernel drops rather than waits
#: (backlog_wait_time 0): what neither the kernel's backlog nor this buffer holds is then
#: lost at once, so the buffer is what absorbs a burst, as for a multicast reader.
DROPPING_RCVBUF = 16 << 20
#: A multicast reader's buffer: the kernel keeps nothing it could not multicast, so a
#: large buffer is what absorbs a burst.
MULTICAST_RCVBUF = 16 << 20


def rcvbuf_for(backlog_wait_time: int | None) -> int:
    """The registered daemon's receive buffer for the kernel's backlog_wait_time (None: not
    known yet)."""
    return DROPPING_RCVBUF if backlog_wait_time == 0 else RCVBUF


#: Receive buffer per record it holds, for the usual records of a few hundred bytes: the
#: kernel charges each datagram's whole allocation against twice the buffer asked for (a
#: 64 KiB buffer held 133 getppid records, mean payload 149 bytes).
BUFFER_BYTES_PER_RECORD = 492
#: Reads of fewer records than this are a trickle (`trickle_below`), whatever the buffer.
TRICKLE_RECORDS = 256
#: A pause after a trickle lasts until about this many records can be expected, fewer with a
#: buffer too small for them (`pause_records`).
PAUSE_RECORDS = 64


def trickle_below(rcvbuf: int) -> int:
    """Below how many records a read means records trickle in, so that the next read may
    wait for more (`Daemon._read_batch`): three quarters of what the buffer holds, at most
    TRICKLE_RECORDS.

    kauditd sends without a timeout and sleeps while the socket holds its buffer's worth
    (netlink_attachskb), so a pause after a read that found the buffer (nearly) full
    keeps the kernel waiting for most of the pause: such a read is not a trickle. With
    the 64 KiB buffer and a fixed 256, every read under load paused and RAW lost about a
    fifth of its rate (bench/ab.py, notes of the performance issue)."""
    return max(1, min(TRICKLE_RECORDS, rcvbuf * 3 // 4 // BUFFER_BYTES_PER_RECORD))


def pause_records(rcvbuf: int) -> int:
    """How many records a pause waits for: PAUSE_RECORDS, or two thirds of the trickle
    threshold where that is less, so that the read after a pause is a trickle again and
    paces the next (a read found large goes back to the socket, and the one after it would
    find a record or two)."""
    return max(1, min(PAUSE_RECORDS, trickle_below(rcvbuf) * 2 // 3))


@dataclass(frozen=True)
class Options:
    config_dir: str = "/etc/audit"
    foreground: bool = False
    no_fork: bool = False
    enable: str = "enable"
    run_dir: str = "/run"
    allow_symlink: bool = False
    #: relative paths in auditd.conf are taken from here (the directory pyauditd started in)
    base_dir: str = "/"

    @property
    def config_path(self) -> str:
        return os.path.join(self.config_dir, "auditd.conf")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "auditd.pid")

    @property
    def state_file(self) -> str:
        return os.path.join(self.run_dir, "auditd.state")


def load_config(options: Options) -> tuple[AuditdConfig, list[str]]:
    """Read and check auditd.conf; raises ConfigError naming the file, line and reason."""
    config, problems = load_auditd_conf(
        options.config_path, allow_symlink=options.allow_symlink, base_dir=options.base_dir
    )
    return config, [str(p) for p in problems]


def log_settings(config: AuditdConfig) -> LogSettings:
    return LogSettings(
        log_file=config.log_file,
        log_gid=config.log_gid,
        flush=config.flush,
        freq=config.freq,
        num_logs=config.num_logs,
        max_log_file=config.max_log_file,
        max_log_file_action=config.max_log_file_action,
    )


def enabled_wanted(enable: str, current: int) -> int | None:
    """The `enabled` value to set for `-s enable|disable|nochange` when the kernel's is
    `current`; None when there is nothing to set (already so, or locked at 2)."""
    if enable == "nochange" or current == 2:
        return None
    wanted = 1 if enable == "enable" else 0
    return None if wanted == current else wanted


if TYPE_CHECKING:
    class Registering(Protocol):
        def get_status(self) -> AuditStatus: ...

        def set_status(self, status: AuditStatus) -> None: ...

        def register(self, pid: int) -> None: ...


def register_with(kernel: Registering, enable: str) -> tuple[AuditStatus, int | None]:
    """Register this process, with the requests around it ordered so that none can sleep.

    Once registered, the daemon is the one that empties the kernel's queue, and the kernel
    makes any process that sends it a request sleep while that queue is over backlog_limit
    (up to backlog_wait_time): a request made before the daemon reads would wait for
    itself. So the status is read and a disable set before registering; an enable is left
    to the caller, right after: while audit was disabled nothing was queued. Returns the
    status read and the enable still to set (1, or None)."""
    status = kernel.get_status()
    wanted = enabled_wanted(enable, status.enabled)
    if wanted == 0:
        kernel.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=0))
    kernel.register(os.getpid())
    return status, wanted or None


@dataclass(frozen=True)
class Registered:
    """The kernel link this process registered from, the log it opened first, the kernel's
    status read before registering, and the enable still to set (`register_with`)."""

    kernel: KernelConnection
    log_file: AuditLog | None
    status: AuditStatus
    enable: int | None


def register_early(
    config: AuditdConfig,
    enable: str = "nochange",
    *,
    open_kernel: Callable[..., KernelConnection] = KernelConnection,
) -> Registered | None:
    """Open the log, open the kernel link and register, or undo all of it and return None
    (also when this configuration does not register: multicast, local_events = no)."""
    if config.kernel_link == "MULTICAST" or not config.local_events:
        return None
    kernel = open_kernel(multicast=False, rcvbuf=RCVBUF)
    log_file = None
    try:
        if config.write_logs:
            log_file = AuditLog(log_settings(config), notify=syslog_notifier(log))
            log_file.open()
        status, pending = register_with(kernel, enable)
    except (OSError, TimeoutError, LogFileError):
        if log_file is not None:
            log_file.close()
        kernel.close()
        return None
    return Registered(kernel, log_file, status, pending)
