"""The audit log file: opening it safely, appending batches, flushing, size and rotation.

The log is written from the daemon's main loop, so `AuditLog.write` is kept to one system
call per batch plus a few integer comparisons.  It never raises for I/O trouble: it returns
`LogEvent` flags and the daemon, which owns the policy (diskspace.py) and the actions
(actions.py), decides what to do.  Messages the C daemon would syslog are handed to a
`notify(priority, text)` callback with `syslog.LOG_*` priorities.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import os
import stat
import syslog
import threading
import time
from collections.abc import Callable, Sequence

from auditpy.structs import dataclass, field
from auditpy.system.logsetup import syslog_notifier

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MIB = 1024 * 1024

FLUSH_MODES = frozenset({"NONE", "INCREMENTAL", "INCREMENTAL_ASYNC", "DATA", "SYNC"})
SIZE_ACTIONS = frozenset({"IGNORE", "SYSLOG", "SUSPEND", "ROTATE", "KEEP_LOGS", "EXEC"})

#: Free space is sampled (fstatvfs on the log fd) after a write once this many bytes were
#: written since the last sample, or once SPACE_SAMPLE_SECONDS passed, whichever comes
#: first.  The C daemon samples on roughly two writes out of three; thresholds are given in
#: MiB, so 64 KiB of granularity loses nothing, and the time bound keeps a quiet system
#: (a few records a minute) from going unchecked while another process fills the disk.
SPACE_SAMPLE_BYTES = 64 * 1024
SPACE_SAMPLE_SECONDS = 5.0

#: How far back from the end of an existing log a newline is looked for when the file does
#: not end in one.  What a crash leaves there is the start of one record (the records before
#: it in the same write() are whole), and a record is at most MAX_AUDIT_MESSAGE_LENGTH bytes
#: plus a node= prefix and its translations; a longer unterminated tail is not a torn record
#: of ours, and is not cut (see `AuditLog._repair_tail`).
TORN_TAIL_LIMIT: Final = 64 * 1024

#: Directories whose mode we refuse to change even if the log sits directly in them: the
#: C daemon 3.0.9 would chmod /var/log to 0700 in that case, which breaks other services.
_SHARED_DIRS = frozenset(
    {"/", "/etc", "/home", "/root", "/run", "/tmp", "/usr", "/var", "/var/log", "/var/tmp"}
)

Notify = Callable[[int, str], None]

#: Fallback so a library user without syslog still sees what the C daemon would log.
_notify_logging = syslog_notifier(logging.getLogger(__name__))


def _chmod_nofollow(path: str, mode: int) -> None:
    """Linux has no lchmod; refusing symlinks keeps a planted link from redirecting the
    chmod to some other file (the log directory is root-only, so the check cannot race)."""
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    os.chmod(path, mode)


def _split_lines(data: bytes) -> list[bytes]:
    """Joined log lines back into lines (the rare paths account for each record)."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The part of auditd.conf the log file needs; the daemon maps its config onto it so this
    module does not depend on the configuration parser."""

    log_file: str = "/var/log/audit/audit.log"
    log_gid: int = 0
    flush: str = "NONE"
    freq: int = 0
    num_logs: int = 0
    max_log_file: int = 0
    max_log_file_action: str = "IGNORE"

    def __post_init__(self) -> None:
        if self.flush not in FLUSH_MODES:
            raise ValueError(f"unknown flush mode {self.flush!r}")
        if self.max_log_file_action not in SIZE_ACTIONS:
            raise ValueError(f"unknown max_log_file_action {self.max_log_file_action!r}")
        for name in ("log_gid", "freq", "num_logs", "max_log_file"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.log_file:
            raise ValueError("log_file must not be empty")

    @property
    def file_mode(self) -> int:
        """Group-readable only when a log group was configured, as auditd.conf(5) says."""
        return 0o640 if self.log_gid else 0o600

    @property
    def rotated_mode(self) -> int:
        """Old logs are evidence: nobody, not even root by accident, should append to them."""
        return 0o440 if self.log_gid else 0o400

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.log_gid else 0o700

    @property
    def open_flags(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if self.flush == "DATA":
            flags |= os.O_DSYNC
        elif self.flush == "SYNC":
            flags |= os.O_SYNC
        return flags

    @property
    def size_limit(self) -> int:
        """Bytes at which the size action fires; 0 means never.

        max_log_file = 0 is treated as "no limit": the C daemon would fire the action on
        every write, which with `syslog` floods the system log.
        """
        if self.max_log_file_action == "IGNORE" or self.max_log_file == 0:
            return 0
        return self.max_log_file * MIB

    def needs_reopen(self, other: LogSettings) -> bool:
        """Only these change the open file itself; the rest applies on the fly (C reload)."""
        return (self.log_file, self.log_gid, self.flush) != (
            other.log_file,
            other.log_gid,
            other.flush,
        )


class LogEvent(enum.IntFlag):
    """What a write (or flush) observed; several may be set at once."""

    NONE = 0
    #: size >= max_log_file MiB (and the action is not IGNORE).  Reported after every write
    #: while it holds, as the C daemon checks after every write; rotate/keep_logs/suspend
    #: make it go away.
    SIZE_LIMIT = enum.auto()
    #: a fresh fstatvfs sample is in `AuditLog.last_statvfs`; feed it to
    #: `SpacePolicy.evaluate_statvfs`.
    SPACE_SAMPLE = enum.auto()
    #: ENOSPC on write or fsync; details in `AuditLog.last_error`.
    DISK_FULL = enum.auto()
    #: any other write/fsync error; details in `AuditLog.last_error`.
    DISK_ERROR = enum.auto()
    #: the log is closed (suspended or never opened); nothing was written.
    NOT_OPEN = enum.auto()


class LogFileError(Exception):
    """The log could not be opened or prepared; the message is fit for syslog."""

    def __init__(self, message: str, error: OSError | None = None) -> None:
        super().__init__(message)
        self.error = error

    @property
    def errno(self) -> int | None:
        return None if self.error is None else self.error.errno


@dataclass(frozen=True, slots=True)
class LogIOError:
    """An I/O failure with the operation name the C daemon prints before its message
    ("write", "fsync", "rotate", "rotate2", "reopen")."""

    op: str
    error: OSError

    @property
    def disk_full(self) -> bool:
        return self.error.errno == errno.ENOSPC

    @property
    def strerror(self) -> str:
        return self.error.strerror or str(self.error)


@dataclass(slots=True)
class RotateResult:
    """Rotation keeps going after a failed rename (like the C daemon), so the caller gets
    every error to turn into disk_full/disk_error actions."""

    done: bool
    reason: str | None = None
    renamed: list[tuple[str, str]] = field(default_factory=list)
    errors: list[LogIOError] = field(default_factory=list)
    reopened: bool = False

    def __bool__(self) -> bool:
        return self.done


#: INCREMENTAL_ASYNC: least time between the starts of two background fsyncs.
MIN_SYNC_INTERVAL: Final = 0.01

#: A flush thread that dies this soon after it was started is not restarted at once: the
#: writer fsyncs inline until this long has passed, so a thread that cannot live (say, no
#: memory for a stack) costs one message per period instead of a restart per flush point.
FLUSHER_RESTART_DELAY: Final = 10.0


class _Flusher:
    """The INCREMENTAL_ASYNC worker: fsync happens here so the writer never waits for the
    disk.  It syncs its own dup() of the log fd, so closing or rotating the log never has to
    wait for an fsync in progress and an fd number can never be reused under it.  The dup is
    kept until the log's generation changes (an open, reopen or close): duplicating for
    every sync cost more CPU than the sync itself at low event rates.

    Syncs start at most every `min_interval` seconds: each one costs the writer two hand-overs
    of the GIL, and back to back (thousands a second under load) that was 18% of pyauditd's
    CPU per record (`bench/ab.py raw`). Records written in the meantime ride on the next
    sync, so under load a record is on disk at most `min_interval` plus one fsync later than
    with a sync per `freq` records; below `freq` records per `min_interval` nothing changes.

    The worker must never stop syncing unnoticed (it once died of EMFILE from dup() and the
    log went without a single fsync for the rest of the run).  When it has no descriptor of
    the current file (dup() failed) it sets `inline`: the writer then fsyncs its own
    descriptor at every flush point, and every kick makes the worker try dup() again.  It
    never calls `notify` itself (that runs on the daemon's thread): it leaves its messages in
    `notes` and sets `attention`, and the writer passes them on at its next flush point --
    one message when a failure starts and one when it ends, so a failing dup() under load
    cannot flood syslog.  Anything else that goes wrong ends the thread, with `attention`
    set and the exception in `died_of`, and the writer replaces it."""

    def __init__(
        self,
        dup_fd: Callable[[], int],
        generation: Callable[[], int],
        min_interval: float = MIN_SYNC_INTERVAL,
    ) -> None:
        self._dup_fd = dup_fd
        self._generation = generation
        self._min_interval = min_interval
        # A plain lock as a binary semaphore: held while no sync is pending, released by the
        # writer to request one, taken back by the worker. A release is one C call (Event.set
        # was a Condition round trip in Python per request); only the writer releases, so
        # "held" cannot change between its check and its release.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._stop = False
        self.error: LogIOError | None = None
        self.syncs = 0
        #: the worker holds no descriptor of the current file: the writer must fsync itself
        self.inline = False
        #: something for the writer: `notes`, `inline` or the thread's end
        self.attention = False
        self.notes: collections.deque[tuple[int, str]] = collections.deque()
        self.died_of: BaseException | None = None
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="auditpy-log-flush", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def kick(self) -> bool:
        """Request a sync; False if one was already pending (the worker is busy, or gone)."""
        # Called every `freq` records on the hot path: while a request is already pending,
        # the fsync it triggers covers these records too.
        if self._wake.locked():
            self._wake.release()
            return True
        return False

    def stop(self) -> None:
        self._stop = True
        self.kick()
        self._thread.join(timeout=30)

    def _note(self, priority: int, message: str) -> None:
        self.notes.append((priority, message))  # deque.append is atomic under the GIL
        self.attention = True

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
            self.syncs += 1
        except OSError as exc:
            self.error = LogIOError("fsync", exc)

    def _release(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as exc:  # the descriptor is gone either way (close(2) on Linux)
            self._note(syslog.LOG_WARNING, f"Log flush thread: close failed ({exc.strerror})")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # told through the writer's notify, not a traceback
            self.died_of = exc
        finally:
            if not self._stop:
                self.inline = True
                self.attention = True

    def _loop(self) -> None:
        fd, seen = -1, -1
        synced = -self._min_interval
        failures = 0
        try:
            while True:
                self._wake.acquire()
                if self._stop:
                    return
                pause = synced + self._min_interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                    if self._stop:
                        return  # the closing log syncs its tail itself
                generation = self._generation()
                if generation != seen:
                    if fd >= 0:
                        # A rotated (or reopened) file's tail since the last sync goes to
                        # disk too before it is let go.
                        self._sync(fd)
                        old, fd = fd, -1
                        self._release(old)
                    try:
                        fd = self._dup_fd()
                    except OSError as exc:
                        # Without a descriptor of its own the worker cannot sync; the
                        # writer fsyncs inline, and the next kick tries again.
                        if not failures:
                            self._note(
                                syslog.LOG_ERR,
                                "Log flush thread cannot duplicate the log descriptor "
                                f"({exc.strerror}); the log is fsynced inline until it can",
                            )
                        failures += 1
                        self.inline = True
                        self.attention = True
                        continue
                    seen = generation
                    if failures and fd >= 0:  # (-1: the log is closed; nothing to sync)
                        self._note(
                            syslog.LOG_NOTICE,
                            f"Log flush thread has a log descriptor again after {failures} "
                            "failed attempts; fsyncs are back in the background",
                        )
                        failures = 0
                        self.inline = False
                if fd < 0:
                    continue
                synced = time.monotonic()
                self._sync(fd)
        finally:
            if fd >= 0:
                self._release(fd)


@dataclass(slots=True)
class _RareState:
    """What only the rare paths of `AuditLog` touch.  Kept out of the instance so the
    attributes of the hot path stay few: past 30 attributes CPython 3.11 stops sharing an
    instance's dict keys, and every attribute read in `write` got slower (+60 ns a call,
    measured)."""

    #: end of the last whole record when a cut-short batch could not be cut back yet
    torn_at: int = -1
    not_written: int = 0
    last_unwritten: int = 0
    tails_repaired: int = 0
    tail_bytes: int = 0
    flusher_restarts: int = 0
    #: INCREMENTAL_ASYNC after its worker died young: when to start a new one
    flusher_retry_at: float = 0.0


class AuditLog:
    """The audit log file, its rotated siblings and the flush policy.

    Suspension closes the file (an exec helper may move or compress it) and `resume`
    recreates it.  Only the daemon's main thread may call methods; the async flush worker
    only ever touches a duplicate of the descriptor.
    """

    def __init__(
        self,
        settings: LogSettings,
        *,
        notify: Notify | None = None,
        space_sample_bytes: int = SPACE_SAMPLE_BYTES,
        space_sample_seconds: float = SPACE_SAMPLE_SECONDS,
        owner_uid: int = 0,
    ) -> None:
        self._settings = settings
        self._notify: Notify = notify if notify is not None else _notify_logging
        self._owner = owner_uid
        self._fd = -1
        #: changes whenever `_fd` does, so the flush worker knows to re-duplicate it
        self._generation = 0
        self._fd_lock = threading.Lock()
        self._flusher: _Flusher | None = None
        self._suspended = False
        self._size = 0
        self._records = 0
        self._bytes = 0
        self._inline_syncs = 0
        self._pending = 0
        self._sample_bytes = space_sample_bytes
        self._sample_seconds = space_sample_seconds
        self._since_sample = 0
        self._next_sample = 0.0
        self._last_statvfs: os.statvfs_result | None = None
        self._last_error: LogIOError | None = None
        self._consecutive_errors = 0
        self._rare = _RareState()
        self._last_shift = 1
        self._limit = 0
        self._freq = 0
        self._apply(settings)

    # ----------------------------------------------------------------- properties

    @property
    def settings(self) -> LogSettings:
        return self._settings

    @property
    def path(self) -> str:
        return self._settings.log_file

    @property
    def fd(self) -> int:
        """-1 while closed."""
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def suspended(self) -> bool:
        return self._suspended

    @property
    def size(self) -> int:
        """Bytes in the current log file (its size at open plus what we appended)."""
        return self._size

    @property
    def records_written(self) -> int:
        """Lines fully written since this object was created (all files)."""
        return self._records

    @property
    def records_not_written(self) -> int:
        """Records handed to `write` that are not on disk (log closed, disk full, write
        error): with `records_written`, every record offered is counted exactly once."""
        return self._rare.not_written

    @property
    def last_unwritten(self) -> int:
        """How many records of the last `write` call that returned NOT_OPEN, DISK_FULL or
        DISK_ERROR are not on disk: the whole batch if nothing was written, fewer when a
        batch was cut short (its whole records stay), 0 when only the fsync after it failed.
        The daemon adds this, not the batch size, to "records not written"."""
        return self._rare.last_unwritten

    @property
    def torn_tails_repaired(self) -> int:
        """Opens that found the file ending inside a record (a crash in the middle of a
        write) and repaired it; see `_repair_tail`."""
        return self._rare.tails_repaired

    @property
    def torn_bytes_removed(self) -> int:
        """Bytes of incomplete records cut off at open."""
        return self._rare.tail_bytes

    @property
    def flush_thread_restarts(self) -> int:
        """INCREMENTAL_ASYNC workers that died and were replaced."""
        return self._rare.flusher_restarts

    @property
    def bytes_written(self) -> int:
        return self._bytes

    @property
    def fsyncs(self) -> int:
        """Completed explicit fsyncs (inline and background); mostly for tests."""
        return self._inline_syncs + (self._flusher.syncs if self._flusher else 0)

    @property
    def last_statvfs(self) -> os.statvfs_result | None:
        return self._last_statvfs

    @property
    def last_error(self) -> LogIOError | None:
        return self._last_error

    @property
    def consecutive_errors(self) -> int:
        """Failed writes since the last good one (disk_error syslog is capped at 5)."""
        return self._consecutive_errors

    @property
    def over_size_limit(self) -> bool:
        """For the checks the C daemon makes at start and after reopen, outside write()."""
        return bool(self._limit) and self._size >= self._limit

    # ------------------------------------------------------------------- opening

    def open(self) -> list[str]:
        """Open (creating if needed) the log; returns the warnings also sent to notify.

        Raises LogFileError: at start the daemon must not run without its log, and at
        resume/reload it turns the failure into its disk_error action.
        """
        if self._fd >= 0:
            return []
        warnings: list[str] = []
        fd = self._open_checked(warnings)
        self._install(fd)
        for text in warnings:
            self._notify(syslog.LOG_WARNING, text)
        return warnings

    def _open_checked(self, warnings: list[str]) -> int:
        s = self._settings
        path = s.log_file
        directory = os.path.dirname(path) or "."
        try:
            dst = os.stat(directory)
        except FileNotFoundError:
            raise LogFileError(f"Log directory {directory} does not exist") from None
        except OSError as exc:
            raise LogFileError(
                f"Cannot access log directory {directory} ({exc.strerror})", exc
            ) from None
        if not stat.S_ISDIR(dst.st_mode):
            raise LogFileError(f"Log directory {directory} is not a directory")
        self._fix_permissions(directory, warnings)

        try:
            lst: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            lst = None
        except OSError as exc:
            raise LogFileError(f"Cannot stat log file {path} ({exc.strerror})", exc) from None
        if lst is not None:
            self._check_existing(path, lst, warnings)

        try:
            fd = os.open(path, s.open_flags, s.file_mode)
        except OSError as exc:
            raise LogFileError(f"Couldn't open log file {path} ({exc.strerror})", exc) from None
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                raise LogFileError(f"Log file {path} is not a regular file")
            try:
                os.fchmod(fd, s.file_mode)
            except OSError as exc:
                raise LogFileError(
                    f"Couldn't change permissions of log file ({exc.strerror})", exc
                ) from None
            try:
                os.fchown(fd, self._owner, s.log_gid)
            except OSError as exc:
                raise LogFileError(
                    f"Couldn't change ownership of log file ({exc.strerror})", exc
                ) from None
            size = self._repair_tail(fd, path, fst, warnings)
        except BaseException:
            os.close(fd)
            raise
        self._size = size
        return fd

    def _repair_tail(
        self, fd: int, path: str, fst: os.stat_result, warnings: list[str]
    ) -> int:
        """Make an existing log end at a record boundary; returns its size afterwards.

        A write() cut by SIGKILL (or a power cut) leaves the first part of a record and no
        newline; the next record appended would be glued to it and ausearch would lose
        both.  The torn part is cut off rather than kept as a line of its own: the rest of
        that record died with the process anyway, and a cut record is not merely incomplete
        but can be wrong -- ``exit=12`` for ``exit=123``, ``name="/etc/pass"`` for
        /etc/passwd -- and any parser would take it for a real event.  The cut is
        reported (syslog, with the byte count) and counted (`torn_tails_repaired`).
        Only an unterminated tail longer than TORN_TAIL_LIMIT, which no crash of ours can
        leave, is kept: it is ended with a newline so that at least our records stay whole.
        """
        size = fst.st_size
        if size == 0:
            return 0
        try:
            # The log fd is write-only (as the C daemon opens it); a second, read-only one of
            # the same file (the directory is root-only, so the check cannot race) looks.
            rfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            warnings.append(f"Cannot check the end of log file {path} ({exc.strerror})")
            return size
        try:
            rst = os.fstat(rfd)
            if (rst.st_dev, rst.st_ino) != (fst.st_dev, fst.st_ino):
                warnings.append(f"Log file {path} was replaced while being opened")
                return size
            start = max(0, size - TORN_TAIL_LIMIT)
            tail = os.pread(rfd, size - start, start)
        except OSError as exc:
            warnings.append(f"Cannot read the end of log file {path} ({exc.strerror})")
            return size
        finally:
            os.close(rfd)
        if tail.endswith(b"\n"):
            return size
        newline = tail.rfind(b"\n")
        if newline < 0 and start > 0:
            return self._end_tail(fd, path, size, f"more than {TORN_TAIL_LIMIT}", warnings)
        cut = start + newline + 1
        try:
            os.ftruncate(fd, cut)
        except OSError as exc:
            warnings.append(f"Cannot cut the incomplete record off log file {path} "
                            f"({exc.strerror})")
            return self._end_tail(fd, path, size, str(size - cut), warnings)
        self._rare.tails_repaired += 1
        self._rare.tail_bytes += size - cut
        warnings.append(
            f"Log file {path} ended in an incomplete record ({size - cut} bytes after the "
            "last newline, left by a crash in the middle of a write); removed them so the "
            "next record starts on a line of its own"
        )
        return cut

    def _end_tail(self, fd: int, path: str, size: int, length: str, warnings: list[str]) -> int:
        """Keep an unterminated tail as a line of its own; raises LogFileError if even
        that fails, since appending would glue the next record to it."""
        try:
            os.write(fd, b"\n")
        except OSError as exc:
            raise LogFileError(
                f"Log file {path} ends without a newline and cannot be repaired "
                f"({exc.strerror})", exc
            ) from None
        self._rare.tails_repaired += 1
        warnings.append(
            f"Log file {path} ended without a newline ({length} bytes after the last one); "
            "added one so the next record starts on a line of its own"
        )
        return size + 1

    def _check_existing(self, path: str, st: os.stat_result, warnings: list[str]) -> None:
        """A symlink, a FIFO or a file someone else owns would let another user steer or
        read the audit trail, so those are refused rather than fixed."""
        if stat.S_ISLNK(st.st_mode):
            raise LogFileError(f"Log file {path} is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise LogFileError(f"Log file {path} is not a regular file")
        if st.st_uid != self._owner:
            raise LogFileError(f"Log file {path} is not owned by root")
        mode = stat.S_IMODE(st.st_mode)
        if mode not in (0o600, 0o640):
            warnings.append(f"Log file {path} has mode {mode:04o}, expected 0600 or 0640")
        if not mode & stat.S_IWUSR:
            warnings.append(f"Log file {path} is not writable by owner")

    def _fix_permissions(self, directory: str, warnings: list[str]) -> None:
        """Mirror what the C daemon does before every open: the directory and old logs get
        the modes that match log_group, so a log_group change on reload takes effect."""
        s = self._settings
        if os.path.realpath(directory) in _SHARED_DIRS:
            warnings.append(f"Not changing permissions of shared directory {directory}")
        else:
            try:
                os.chmod(directory, s.dir_mode)
                os.chown(directory, self._owner, s.log_gid)
            except OSError as exc:
                warnings.append(
                    f"Couldn't fix permissions of log directory {directory} ({exc.strerror})"
                )
        for i in range(1, s.num_logs):
            name = f"{s.log_file}.{i}"
            try:
                _chmod_nofollow(name, s.rotated_mode)
                os.chown(name, self._owner, s.log_gid, follow_symlinks=False)
            except FileNotFoundError:
                break
            except OSError as exc:
                warnings.append(f"Couldn't fix permissions of {name} ({exc.strerror})")

    def _install(self, fd: int) -> None:
        with self._fd_lock:
            self._fd = fd
            self._generation += 1
        self._suspended = False
        self._pending = 0
        self._since_sample = 0
        self._next_sample = 0.0  # first write after an open samples free space
        self._sync_flusher()

    def _apply(self, settings: LogSettings) -> None:
        self._settings = settings
        self._limit = settings.size_limit
        incremental = settings.flush in ("INCREMENTAL", "INCREMENTAL_ASYNC")
        self._freq = settings.freq if incremental else 0

    def _sync_flusher(self) -> None:
        want = self._settings.flush == "INCREMENTAL_ASYNC" and self._freq > 0
        if want and self._flusher is None:
            self._rare.flusher_retry_at = 0.0
            try:
                self._flusher = _Flusher(self._dup_fd, lambda: self._generation)
            except RuntimeError as exc:  # "can't start new thread"
                self._notify(
                    syslog.LOG_ERR,
                    f"Cannot start the log flush thread ({exc}); the log is fsynced inline, "
                    f"and it is tried again in {FLUSHER_RESTART_DELAY:g} s",
                )
                self._rare.flusher_retry_at = time.monotonic() + FLUSHER_RESTART_DELAY
        elif not want and self._flusher is not None:
            self._stop_flusher()

    def _stop_flusher(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.stop()
            self._inline_syncs += flusher.syncs
            self._pass_notes(flusher)

    def _dup_fd(self) -> int:
        with self._fd_lock:
            return os.dup(self._fd) if self._fd >= 0 else -1

    def _close_fd(self) -> None:
        if self._rare.torn_at >= 0 and not self._cut_torn_batch():
            self._notify(
                syslog.LOG_ERR,
                f"Log file {self.path} is let go with an incomplete record at its end; it is "
                "cut off if the file is opened again",
            )
        self._rare.torn_at = -1
        with self._fd_lock:
            fd, self._fd = self._fd, -1
            self._generation += 1
        if fd >= 0:
            os.close(fd)

    # -------------------------------------------------------------------- writing

    def write(self, lines: Sequence[bytes]) -> LogEvent:
        """Append already formatted lines (each ending in b"\\n") with one write(2).

        Counts records and bytes, triggers the incremental flush every `freq` records,
        checks the size limit and, at the documented sampling rate, free space.  A batch
        the kernel takes only part of (a full disk, RLIMIT_FSIZE) is cut back to its last
        whole record, so a record is on disk whole or not at all; `last_unwritten` then
        says how many of the batch are not.
        """
        fd = self._fd
        if fd < 0:
            return self._not_open(len(lines))
        if self._consecutive_errors:
            return self._write_after_error(lines)
        count = len(lines)
        if count == 0:
            return LogEvent.NONE
        return self._append(fd, lines[0] if count == 1 else b"".join(lines), count, lines)

    def write_data(self, data: bytes, count: int) -> LogEvent:
        """`write` for lines already joined: `count` of them, each ending in its only
        b"\\n" (as `LineFormatter` makes them), taken apart again only on the rare
        paths that account for each record."""
        fd = self._fd
        if fd < 0:
            return self._not_open(count)
        if self._consecutive_errors:
            return self._write_after_error(_split_lines(data))
        if count == 0:
            return LogEvent.NONE
        return self._append(fd, data, count, None)

    def _append(
        self, fd: int, data: bytes, count: int, lines: Sequence[bytes] | None
    ) -> LogEvent:
        total = len(data)
        try:
            done = os.write(fd, data)
        except OSError as exc:
            return self._cut_short(fd, _split_lines(data) if lines is None else lines, 0, exc)
        if done != total:
            done, exc2 = self._write_rest(fd, data, done)
            if exc2 is not None:
                return self._cut_short(
                    fd, _split_lines(data) if lines is None else lines, done, exc2
                )
        self._size += total
        self._bytes += total
        self._records += count

        events = LogEvent.NONE
        if self._freq:
            self._pending += count
            if self._pending >= self._freq:
                self._pending = 0
                events |= self._flush_now(fd)
        if self._limit and self._size >= self._limit:
            events |= LogEvent.SIZE_LIMIT
        self._since_sample += total
        if self._since_sample >= self._sample_bytes or time.monotonic() >= self._next_sample:
            events |= self._sample(fd)
        return events

    def _not_open(self, count: int) -> LogEvent:
        self._rare.last_unwritten = count
        self._rare.not_written += count
        return LogEvent.NOT_OPEN

    def _write_after_error(self, lines: Sequence[bytes]) -> LogEvent:
        """The first write after a failed one (kept off the hot path, which tests the
        error count instead of resetting it): a cut-short batch whose tail could not be
        removed then is removed now, before anything is appended after it."""
        count = len(lines)
        if self._rare.torn_at >= 0 and not self._cut_torn_batch():
            self._consecutive_errors += 1
            self._rare.last_unwritten = count
            self._rare.not_written += count
            error = self._last_error
            return LogEvent.DISK_FULL if error and error.disk_full else LogEvent.DISK_ERROR
        errors, self._consecutive_errors = self._consecutive_errors, 0
        events = self.write(lines)
        if self._consecutive_errors:  # failed again: the streak goes on
            self._consecutive_errors += errors
        return events

    @staticmethod
    def _write_rest(fd: int, data: bytes, done: int) -> tuple[int, OSError | None]:
        """Short writes happen on a nearly full disk or under RLIMIT_FSIZE; the rest of the
        batch is retried until the kernel reports the real error."""
        view = memoryview(data)
        total = len(data)
        try:
            while done < total:
                n = os.write(fd, view[done:])
                if n <= 0:  # not expected for a regular file; do not spin
                    return done, OSError(errno.EIO, os.strerror(errno.EIO))
                done += n
        except OSError as exc:
            return done, exc
        finally:
            view.release()
        return done, None

    def _cut_short(self, fd: int, lines: Sequence[bytes], done: int, exc: OSError) -> LogEvent:
        """A batch failed after `done` of its bytes were appended: keep the records that are
        whole, cut off the part of the first one that is not (the next batch would be
        glued to it), and count each record of the batch as written or not, exactly."""
        whole = kept = 0
        if done:
            for line in lines:
                if kept + len(line) > done:
                    break
                kept += len(line)
                whole += 1
            try:
                end = os.fstat(fd).st_size  # O_APPEND: the batch ends the file
            except OSError:
                end = self._size + done
            start = end - done
            if kept < done:
                if self._truncate(fd, start + kept):
                    end = start + kept
                elif kept and self._truncate(fd, start):
                    end, whole, kept = start, 0, 0
                else:
                    self._rare.torn_at = start + kept  # cut before the next write
                    self._notify(
                        syslog.LOG_ERR,
                        f"Cannot cut an incomplete record ({done - kept} bytes) off the log "
                        f"file {self.path}; nothing more is written until it can be",
                    )
            self._size = end
            self._bytes += kept
            self._records += whole
        unwritten = len(lines) - whole
        self._rare.last_unwritten = unwritten
        self._rare.not_written += unwritten
        return self._failed("write", exc)

    @staticmethod
    def _truncate(fd: int, length: int) -> bool:
        try:
            os.ftruncate(fd, length)
        except OSError:
            return False
        return True

    def _cut_torn_batch(self) -> bool:
        """Retry the cut `_cut_short` could not make; True once the file ends whole."""
        end = self._rare.torn_at
        if self._fd < 0 or not self._truncate(self._fd, end):
            return False
        self._rare.torn_at = -1
        self._size = end
        self._notify(syslog.LOG_NOTICE, f"Incomplete record cut off the log file {self.path}")
        return True

    def _failed(self, op: str, exc: OSError) -> LogEvent:
        self._last_error = LogIOError(op, exc)
        self._consecutive_errors += 1
        return LogEvent.DISK_FULL if exc.errno == errno.ENOSPC else LogEvent.DISK_ERROR

    def _flush_now(self, fd: int) -> LogEvent:
        flusher = self._flusher
        if flusher is not None:
            # A kick that finds a request still pending is normal under load (the worker
            # paces itself), but also what a dead worker looks like.
            if flusher.attention or not (flusher.kick() or flusher.alive):
                return self._flusher_trouble(fd, flusher)
            err = flusher.error
            if err is not None:  # reported by the worker since the last flush point
                flusher.error = None
                self._last_error = err
                self._rare.last_unwritten = 0
                return LogEvent.DISK_FULL if err.disk_full else LogEvent.DISK_ERROR
            return LogEvent.NONE
        if self._rare.flusher_retry_at and time.monotonic() >= self._rare.flusher_retry_at:
            self._rare.flusher_retry_at = 0.0
            self._sync_flusher()
        return self._fsync_inline(fd)

    def _fsync_inline(self, fd: int) -> LogEvent:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._rare.last_unwritten = 0  # the records are written; their sync failed
            return self._failed("fsync", exc)
        self._inline_syncs += 1
        return LogEvent.NONE

    def _flusher_trouble(self, fd: int, flusher: _Flusher) -> LogEvent:
        """A flush point while the worker needs the writer: its messages are passed on, and
        while it cannot sync (no descriptor, or dead) the writer fsyncs itself."""
        flusher.attention = False
        self._pass_notes(flusher)
        events = LogEvent.NONE
        err = flusher.error
        if err is not None:
            flusher.error = None
            self._last_error = err
            self._rare.last_unwritten = 0
            events = LogEvent.DISK_FULL if err.disk_full else LogEvent.DISK_ERROR
        if not flusher.alive:
            self._replace_flusher(flusher)
        elif flusher.inline:
            flusher.attention = True  # stay on this path until the worker recovers
            flusher.kick()  # and let it try again
        else:
            flusher.kick()
            return events
        return events | self._fsync_inline(fd)

    def _pass_notes(self, flusher: _Flusher) -> None:
        notes = flusher.notes
        while notes:
            priority, text = notes.popleft()
            self._notify(priority, text)

    def _replace_flusher(self, flusher: _Flusher) -> None:
        """The worker is gone: say so, and start another -- at once if the last one lived a
        while, else after FLUSHER_RESTART_DELAY, fsyncing inline meanwhile."""
        self._flusher = None
        self._inline_syncs += flusher.syncs
        self._pass_notes(flusher)
        exc = flusher.died_of
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception"
        now = time.monotonic()
        if now - flusher.started >= FLUSHER_RESTART_DELAY:
            self._notify(syslog.LOG_ERR, f"Log flush thread stopped ({why}); starting a new one")
            self._rare.flusher_restarts += 1
            self._sync_flusher()
        else:
            self._notify(
                syslog.LOG_ERR,
                f"Log flush thread stopped ({why}) {now - flusher.started:.1f} s after it "
                f"started; the log is fsynced inline, and a new thread starts in "
                f"{FLUSHER_RESTART_DELAY:g} s",
            )
            self._rare.flusher_restarts += 1
            self._rare.flusher_retry_at = now + FLUSHER_RESTART_DELAY

    def _sample(self, fd: int) -> LogEvent:
        self._since_sample = 0
        self._next_sample = time.monotonic() + self._sample_seconds
        try:
            self._last_statvfs = os.fstatvfs(fd)
        except OSError as exc:  # an inconvenience, not an error: the write itself worked
            self._notify(syslog.LOG_DEBUG, f"fstatvfs failed ({exc.strerror})")
            return LogEvent.NONE
        return LogEvent.SPACE_SAMPLE

    def sample_space(self) -> os.statvfs_result | None:
        """Free space now, for the checks at start and after a reload; works while closed
        by asking about the log directory."""
        try:
            if self._fd >= 0:
                st = os.fstatvfs(self._fd)
            else:
                st = os.statvfs(os.path.dirname(self.path) or ".")
        except OSError:
            return None
        self._last_statvfs = st
        self._since_sample = 0
        self._next_sample = time.monotonic() + self._sample_seconds
        return st

    # ------------------------------------------------------------ close / suspend

    def close(self) -> LogIOError | None:
        """Final close (shutdown): flush modes other than NONE promised durability, so the
        tail is fsynced first; an error is returned, not raised, as the daemon is leaving."""
        self._stop_flusher()
        result: LogIOError | None = None
        if self._fd >= 0 and self._settings.flush != "NONE":
            try:
                os.fsync(self._fd)
            except OSError as exc:
                result = LogIOError("fsync", exc)
        self._close_fd()
        return result

    def suspend(self) -> None:
        """Stop logging and let go of the file, so an exec helper may move or compress it."""
        self._close_fd()
        self._suspended = True

    def resume(self) -> list[str]:
        """SIGUSR2: reopen (recreating the file if a helper moved it).  Raises LogFileError
        and stays suspended if that fails."""
        warnings = self.open() if self._fd < 0 else []
        self._suspended = False
        return warnings

    def reopen(self, new_settings: LogSettings) -> bool:
        """Apply reloaded settings; returns True if the file had to be reopened.

        The new file is opened before the old one is let go: when it cannot be opened this
        raises LogFileError and nothing has changed (the old file and settings stay in
        force). As in the C daemon, a reopen also ends a suspension when it succeeds.
        """
        old = self._settings
        if not old.needs_reopen(new_settings):
            self._apply(new_settings)
            if self._fd >= 0:
                self._sync_flusher()
            return False
        self._apply(new_settings)
        warnings: list[str] = []
        size = self._size
        try:
            fd = self._open_checked(warnings)
        except BaseException:
            self._apply(old)
            self._size = size
            raise
        new_size = self._size
        self.close()
        self._size = new_size
        self._install(fd)
        for text in warnings:
            self._notify(syslog.LOG_WARNING, text)
        return True

    # ------------------------------------------------------------------- rotation

    def rotate(self) -> RotateResult:
        """Numbered rotation (max_log_file_action=rotate, SIGUSR1, space actions)."""
        if self._settings.num_logs < 2:
            reason = "Log rotation disabled (num_logs < 2), skipping"
            self._notify(syslog.LOG_NOTICE, reason)
            return RotateResult(False, reason)
        return self._rotate(self._settings.num_logs)

    def keep_logs(self) -> RotateResult:
        """Rotation that never deletes: shift everything up into the first free number.

        The scan starts at the last number found, so it stays cheap when thousands of logs
        are kept; if that file vanished (an admin archived them) it starts again at .1.
        """
        base = self._settings.log_file
        k = self._last_shift
        while os.path.lexists(f"{base}.{k}"):
            k += 1
        if k <= self._last_shift and self._last_shift > 1:
            self._notify(syslog.LOG_WARNING, f"Last known log disappeared ({base}.{k})")
            k = 1
            while os.path.lexists(f"{base}.{k}"):
                k += 1
            self._notify(syslog.LOG_INFO, f"Next log to use will be {base}.{k}")
        self._last_shift = k
        return self._rotate(k + 1)

    def _rotate(self, files: int) -> RotateResult:
        """Leave `files` files: the new log plus .1 .. .(files-1); the oldest is overwritten."""
        s = self._settings
        base = s.log_file
        result = RotateResult(True)
        self._freeze_current()
        self._close_fd()

        for i in range(files - 1, 1, -1):
            self._rename(f"{base}.{i - 1}", f"{base}.{i}", "rotate", result)
        if not self._rename(base, f"{base}.1", "rotate2", result):
            # Could not move it away: make it writable again so logging can go on and the
            # next rotation can retry.
            with contextlib.suppress(OSError):
                _chmod_nofollow(base, s.file_mode)

        self._size = 0
        if not self._suspended:
            warnings: list[str] = []
            try:
                fd = self._open_checked(warnings)
            except LogFileError as exc:
                self._notify(syslog.LOG_CRIT, "Could not reopen a log after rotating.")
                self._notify(syslog.LOG_CRIT, str(exc))
                err = exc.error or OSError(errno.EIO, str(exc))
                result.errors.append(LogIOError("reopen", err))
                self._suspended = True
            else:
                self._install(fd)
                result.reopened = True
            for text in warnings:
                self._notify(syslog.LOG_WARNING, text)
        return result

    def _freeze_current(self) -> None:
        s = self._settings
        try:
            if self._fd >= 0:
                os.fchmod(self._fd, s.rotated_mode)
                os.fchown(self._fd, self._owner, s.log_gid)
            else:
                _chmod_nofollow(s.log_file, s.rotated_mode)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._notify(
                syslog.LOG_WARNING,
                f"Couldn't change permissions while rotating log file ({exc.strerror})",
            )

    def _rename(self, old: str, new: str, op: str, result: RotateResult) -> bool:
        """False only for a real failure; a missing source is normal (fewer logs so far)."""
        try:
            os.rename(old, new)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._notify(
                syslog.LOG_ERR, f"Error rotating logs from {old} to {new} ({exc.strerror})"
            )
            result.errors.append(LogIOError(op, exc))
            return False
        result.renamed.append((old, new))
        return True

    def remove_excess_logs(self) -> list[str]:
        """After num_logs was lowered, delete .N, .N+1, ... until one is missing.

        Only for max_log_file_action=rotate, as in the C daemon: with keep_logs the old
        files are meant to stay.
        """
        s = self._settings
        if s.max_log_file_action != "ROTATE" or s.num_logs < 2:
            return []
        removed: list[str] = []
        i = s.num_logs
        while True:
            name = f"{s.log_file}.{i}"
            try:
                os.unlink(name)
            except OSError:
                break
            self._notify(syslog.LOG_NOTICE, f"Log {name} removed as it exceeds num_logs parameter")
            removed.append(name)
            i += 1
        return removed
