"""Carrying out space, size and error actions that reach outside the log module.

`run_action` syslogs what the C daemon would, sends mail, starts exec helpers and asks
init to change runlevel.  Anything that changes the daemon's own state (suspend, rotate,
keep_logs, exit) is returned as a `FollowUp` for the daemon to do, so the order of events
stays in one place.  Failures are returned, never raised: an action runs because
something already went wrong, and it must not take the daemon down with it.

Children: every process started here comes from `children.spawn_helper` (posix_spawn,
empty environment, default signal dispositions) and is tracked by a pidfd.  Exactly one
owner reaps it, through `ChildHandle` and ``waitid(P_PIDFD)``; nothing here ever waits for
"any child", so plugin and helper pids can never be stolen from their owners (the bug this
project started from).
"""

from __future__ import annotations

import enum
import errno
import os
import syslog
from collections.abc import Callable

from auditpy.config.auditd_conf import AuditdConfig
from auditpy.config.files import exec_helper_problems
from auditpy.structs import dataclass
from auditpy.system.children import INIT_PATH, ChildHandle, spawn_helper

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

SENDMAIL_PATH = "/usr/lib/sendmail"

Notify = Callable[[int, str], None]


def syslog_notify(priority: int, message: str) -> None:
    """Default sink; the daemon calls syslog.openlog("auditd", ...) once at start."""
    syslog.syslog(priority, message)


class ActionKind(enum.Enum):
    """Which setting the action came from; values match `diskspace.SpaceEvent`."""

    SPACE_LEFT = "space_left"
    ADMIN_SPACE_LEFT = "admin_space_left"
    DISK_FULL = "disk_full"
    DISK_ERROR = "disk_error"
    MAX_LOG_FILE = "max_log_file"


def helper_for(kind: ActionKind, config: AuditdConfig) -> str | None:
    """The exec helper auditd.conf names for an action of `kind` (None unless EXEC)."""
    return {
        ActionKind.SPACE_LEFT: config.space_left_exe,
        ActionKind.ADMIN_SPACE_LEFT: config.admin_space_left_exe,
        ActionKind.DISK_FULL: config.disk_full_exe,
        ActionKind.DISK_ERROR: config.disk_error_exe,
        ActionKind.MAX_LOG_FILE: config.max_log_file_exe,
    }[kind]


class FollowUp(enum.Enum):
    """What the daemon must do itself after `run_action`."""

    NONE = "none"
    #: stop writing (the log was already closed if an exec helper was started)
    SUSPEND = "suspend"
    ROTATE = "rotate"
    KEEP_LOGS = "keep_logs"
    #: init was asked to change runlevel; the C daemon (3.1.2+) then exits
    STOP = "stop"


_VALID: dict[ActionKind, frozenset[str]] = {
    ActionKind.SPACE_LEFT: frozenset(
        {"IGNORE", "SYSLOG", "ROTATE", "EMAIL", "EXEC", "SUSPEND", "SINGLE", "HALT"}
    ),
    ActionKind.DISK_FULL: frozenset(
        {"IGNORE", "SYSLOG", "ROTATE", "EXEC", "SUSPEND", "SINGLE", "HALT"}
    ),
    ActionKind.DISK_ERROR: frozenset({"IGNORE", "SYSLOG", "EXEC", "SUSPEND", "SINGLE", "HALT"}),
    ActionKind.MAX_LOG_FILE: frozenset(
        {"IGNORE", "SYSLOG", "SUSPEND", "ROTATE", "KEEP_LOGS", "EXEC"}
    ),
}
_VALID[ActionKind.ADMIN_SPACE_LEFT] = _VALID[ActionKind.SPACE_LEFT]

_LOW_SPACE = "Audit daemon is low on disk space for logging"
_NO_SPACE = "Audit daemon has no space left on logging partition"
_FULL_SUFFIX = " due to no space left on logging partition"
_ERROR_SUFFIX = " due to previously mentioned write error"
_SINGLE = "The audit daemon is now changing the system to single user mode"
_HALT = "The audit daemon is now halting the system"

_SUSPEND_TEXT: dict[ActionKind, tuple[int, str]] = {
    ActionKind.SPACE_LEFT: (
        syslog.LOG_ALERT,
        "Audit daemon is suspending logging due to low disk space.",
    ),
    ActionKind.DISK_FULL: (
        syslog.LOG_ALERT,
        "Audit daemon is suspending logging due to no space left on logging partition.",
    ),
    ActionKind.DISK_ERROR: (
        syslog.LOG_ALERT,
        "Audit daemon is suspending logging due to previously mentioned write error",
    ),
    ActionKind.MAX_LOG_FILE: (
        syslog.LOG_ERR,
        "Audit daemon is suspending logging due to logfile size.",
    ),
}
_SUSPEND_TEXT[ActionKind.ADMIN_SPACE_LEFT] = _SUSPEND_TEXT[ActionKind.SPACE_LEFT]

_UNKNOWN_TEXT = {
    ActionKind.SPACE_LEFT: _LOW_SPACE + " and unknown action requested",
    ActionKind.ADMIN_SPACE_LEFT: _LOW_SPACE + " and unknown action requested",
    ActionKind.DISK_FULL: "Unknown disk full action requested",
    ActionKind.DISK_ERROR: "Unknown disk error action requested",
    ActionKind.MAX_LOG_FILE: (
        "Audit daemon log file is larger than max size and unknown action requested"
    ),
}

_MAIL = {
    ActionKind.SPACE_LEFT: (
        "Audit Disk Space Alert",
        "The audit daemon is low on disk space for logging! Please take action\n"
        "to ensure no loss of service.",
        _LOW_SPACE,
    ),
    ActionKind.ADMIN_SPACE_LEFT: (
        "Audit Admin Space Alert",
        "The audit daemon is very low on disk space for logging! Immediate action\n"
        "is required to ensure no loss of service.",
        "Audit daemon is very low on disk space for logging",
    ),
}


def mail_text(subject: str, body: str, mail_acct: str) -> bytes:
    """The message as the C daemon feeds it to `sendmail -t`."""
    return f"To: {mail_acct}\nFrom: root\nSubject: {subject}\n\n{body}\n.\n\n".encode()


def send_mail(
    subject: str, body: str, mail_acct: str, *, sendmail_path: str = SENDMAIL_PATH
) -> ChildHandle:
    """Pipe an alert into sendmail; raises OSError (with a syslog-ready message) if it
    cannot be started.  The message is far below the pipe capacity, so this never blocks
    even if sendmail is slow to read."""
    if not os.access(sendmail_path, os.X_OK):
        raise OSError(errno.ENOENT, f"Error - {sendmail_path} isn't executable")
    rfd, wfd = os.pipe()
    try:
        child = spawn_helper(sendmail_path, ["-t", f"-f{mail_acct}"], stdin_fd=rfd)
    except OSError:
        os.close(wfd)
        raise
    finally:
        os.close(rfd)
    try:
        os.write(wfd, mail_text(subject, body, mail_acct))
    except OSError:
        pass  # sendmail exited early; its status tells the story
    finally:
        os.close(wfd)
    return child


if TYPE_CHECKING:
    class Suspendable(Protocol):
        """The log object (AuditLog) as seen by an exec action."""

        def suspend(self) -> None: ...


@dataclass(slots=True)
class ActionOutcome:
    kind: ActionKind
    action: str
    follow_up: FollowUp = FollowUp.NONE
    #: a started process the daemon must attach (mail, helper or init)
    child: ChildHandle | None = None
    #: what went wrong (already sent to notify), None if all went well
    error: str | None = None
    #: max_log_file_action=exec: logging resumes by itself when the helper exits
    resume_on_exit: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def run_action(
    action: str,
    *,
    kind: ActionKind,
    exe: str | None = None,
    mail_acct: str = "root",
    log: Suspendable | None = None,
    notify: Notify = syslog_notify,
    op: str = "write",
    error: OSError | int | None = None,
    num_logs: int | None = None,
    sendmail_path: str = SENDMAIL_PATH,
    init_path: str = INIT_PATH,
) -> ActionOutcome:
    """Run one configured action (upper-case name as in auditd.conf) for `kind`.

    `op` and `error` describe a disk error for its syslog text.  `num_logs`, when given,
    lets ROTATE be skipped silently when rotation is disabled, as the C daemon does.
    For EXEC, `log` is suspended (file closed) before the helper starts, so the helper may
    move or compress it.
    """
    action = action.upper()
    out = ActionOutcome(kind, action)

    if kind is ActionKind.DISK_FULL:
        notify(syslog.LOG_ALERT, _NO_SPACE)

    if action not in _VALID[kind]:
        out.error = _UNKNOWN_TEXT[kind]
        notify(syslog.LOG_ALERT, out.error)
        return out

    if action == "IGNORE":
        pass
    elif action == "SYSLOG":
        _syslog_action(kind, op, error, notify)
    elif action == "EMAIL":
        subject, body, text = _MAIL[kind]
        try:
            out.child = send_mail(subject, body, mail_acct, sendmail_path=sendmail_path)
        except OSError as exc:
            out.error = exc.strerror or str(exc)
            notify(syslog.LOG_ERR, out.error)
        notify(syslog.LOG_ALERT, text)
    elif action == "EXEC":
        if log is not None:
            log.suspend()
        out.follow_up = FollowUp.SUSPEND
        out.resume_on_exit = kind is ActionKind.MAX_LOG_FILE
        out.child, out.error = _exec(exe, notify)
    elif action == "SUSPEND":
        priority, text = _SUSPEND_TEXT[kind]
        notify(priority, text)
        out.follow_up = FollowUp.SUSPEND
    elif action == "ROTATE":
        if num_logs is None or num_logs > 1:
            notify(syslog.LOG_NOTICE, "Audit daemon rotating log files")
            out.follow_up = FollowUp.ROTATE
    elif action == "KEEP_LOGS":
        notify(syslog.LOG_NOTICE, "Audit daemon rotating log files with keep option")
        out.follow_up = FollowUp.KEEP_LOGS
    else:  # SINGLE or HALT
        single = action == "SINGLE"
        text = _SINGLE if single else _HALT
        if kind is ActionKind.DISK_FULL:
            text += _FULL_SUFFIX
        elif kind is ActionKind.DISK_ERROR:
            text += _ERROR_SUFFIX + ("" if single else ".")
        notify(syslog.LOG_ALERT, text)
        out.follow_up = FollowUp.STOP
        try:
            out.child = spawn_helper(init_path, ["1" if single else "0"])
        except OSError as exc:
            out.error = f"Audit daemon failed to exec {init_path} ({exc.strerror})"
            notify(syslog.LOG_ALERT, out.error)
    return out


def _syslog_action(kind: ActionKind, op: str, error: OSError | int | None, notify: Notify) -> None:
    if kind in (ActionKind.SPACE_LEFT, ActionKind.ADMIN_SPACE_LEFT):
        notify(syslog.LOG_ALERT, _LOW_SPACE)
    elif kind is ActionKind.DISK_ERROR:
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
        elif isinstance(error, int):
            reason = os.strerror(error)
        else:
            reason = "unknown error"
        notify(
            syslog.LOG_ALERT,
            f"{op}: Audit daemon detected an error writing an event to disk ({reason})",
        )
    elif kind is ActionKind.MAX_LOG_FILE:
        notify(syslog.LOG_ERR, "Audit daemon log file is larger than max size")
    # DISK_FULL: the "no space left" message was already sent.


def _exec(exe: str | None, notify: Notify) -> tuple[ChildHandle | None, str | None]:
    if not exe:
        err = "Safe_exec passed NULL for program to execute"
        notify(syslog.LOG_ALERT, err)
        return None, err
    # The check of `pyauditd --check`, again: the file may have changed since.
    problems = exec_helper_problems(exe)
    if problems:
        err = f"Audit daemon refused to exec {exe}: {'; '.join(problems)}"
        notify(syslog.LOG_ALERT, err)
        return None, err
    try:
        return spawn_helper(exe), None
    except OSError as exc:
        err = f"Audit daemon failed to exec {exe} ({exc.strerror})"
        notify(syslog.LOG_ALERT, err)
        return None, err
