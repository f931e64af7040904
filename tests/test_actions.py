"""Actions: syslog texts, follow-ups, mail, exec helpers and their reaping."""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditpy.auditd import actions
from auditpy.auditd.actions import (
    ActionKind,
    ChildHandle,
    FollowUp,
    mail_text,
    run_action,
    spawn_helper,
)
from auditpy.auditd.logfile import AuditLog, LogSettings
from auditpy.config.auditd_conf import load_auditd_conf
from auditpy.config.files import exec_helper_problems
from auditpy.system import evloop

from .conftest import Notes, proc_state, wait_for

K = ActionKind

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="helpers must be root-owned")


@pytest.fixture(autouse=True)
def never_the_real_thing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slip in a test must never run the real init or mailer."""
    real = os.posix_spawn

    def guarded(path: str, *args: object, **kw: object) -> int:
        if os.path.realpath(path) in {
            os.path.realpath(actions.INIT_PATH),
            os.path.realpath(actions.SENDMAIL_PATH),
        }:
            raise AssertionError(f"test tried to run {path}")
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "posix_spawn", guarded)


class FakeLog:
    def __init__(self) -> None:
        self.suspended = 0

    def suspend(self) -> None:
        self.suspended += 1


def script(path: Path, body: str, mode: int = 0o755) -> str:
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, mode)
    return str(path)


def wait_zombie(pid: int) -> None:
    """The child stays a zombie until its one owner reaps it: nobody else may."""
    wait_for(lambda: proc_state(pid) == "Z", what=f"pid {pid} to exit (a zombie)",
             context=lambda: f"state {proc_state(pid)}")


def run_until_exit(child: ChildHandle) -> ChildHandle:
    loop = evloop.Loop()
    try:
        done: evloop.Future[ChildHandle] = loop.create_future()
        child.attach(loop, done.set_result)
        return loop.run_until_complete(evloop.wait_for(done, 10))
    finally:
        loop.close()


# --------------------------------------------------------------------------- texts


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (K.SPACE_LEFT, "Audit daemon is low on disk space for logging"),
        (K.ADMIN_SPACE_LEFT, "Audit daemon is low on disk space for logging"),
        (K.MAX_LOG_FILE, "Audit daemon log file is larger than max size"),
    ],
)
def test_syslog_texts(kind: ActionKind, text: str, notes: Notes) -> None:
    out = run_action("syslog", kind=kind, notify=notes)
    assert out.ok and out.follow_up is FollowUp.NONE and out.child is None
    assert notes.texts() == [text]


def test_disk_error_syslog_names_op_and_error(notes: Notes) -> None:
    run_action(
        "SYSLOG", kind=K.DISK_ERROR, op="fsync", error=OSError(errno.EIO, "EIO"), notify=notes
    )
    run_action("SYSLOG", kind=K.DISK_ERROR, error=errno.EROFS, notify=notes)
    assert notes.texts() == [
        "fsync: Audit daemon detected an error writing an event to disk (EIO)",
        "write: Audit daemon detected an error writing an event to disk "
        f"({os.strerror(errno.EROFS)})",
    ]


@pytest.mark.parametrize("action", ["IGNORE", "SYSLOG"])
def test_disk_full_always_says_so(action: str, notes: Notes) -> None:
    out = run_action(action, kind=K.DISK_FULL, notify=notes)
    assert out.ok and out.follow_up is FollowUp.NONE
    assert notes.texts() == ["Audit daemon has no space left on logging partition"]


def test_ignore_is_silent(notes: Notes) -> None:
    for kind in (K.SPACE_LEFT, K.DISK_ERROR, K.MAX_LOG_FILE):
        assert run_action("IGNORE", kind=kind, notify=notes).follow_up is FollowUp.NONE
    assert notes.items == []


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (K.SPACE_LEFT, "Audit daemon is suspending logging due to low disk space."),
        (
            K.DISK_FULL,
            "Audit daemon is suspending logging due to no space left on logging partition.",
        ),
        (
            K.DISK_ERROR,
            "Audit daemon is suspending logging due to previously mentioned write error",
        ),
        (K.MAX_LOG_FILE, "Audit daemon is suspending logging due to logfile size."),
    ],
)
def test_suspend(kind: ActionKind, text: str, notes: Notes) -> None:
    log = FakeLog()
    out = run_action("SUSPEND", kind=kind, notify=notes, log=log)
    assert out.follow_up is FollowUp.SUSPEND
    assert notes.texts()[-1] == text
    assert log.suspended == 0  # the daemon suspends, not the action


def test_rotate_and_keep_logs(notes: Notes) -> None:
    assert run_action("ROTATE", kind=K.MAX_LOG_FILE, notify=notes).follow_up is FollowUp.ROTATE
    assert run_action("ROTATE", kind=K.SPACE_LEFT, num_logs=5, notify=notes).follow_up is (
        FollowUp.ROTATE
    )
    out = run_action("ROTATE", kind=K.DISK_FULL, num_logs=1, notify=notes)
    assert out.follow_up is FollowUp.NONE
    out = run_action("KEEP_LOGS", kind=K.MAX_LOG_FILE, notify=notes)
    assert out.follow_up is FollowUp.KEEP_LOGS
    assert notes.texts() == [
        "Audit daemon rotating log files",
        "Audit daemon rotating log files",
        "Audit daemon has no space left on logging partition",
        "Audit daemon rotating log files with keep option",
    ]


@pytest.mark.parametrize(
    ("action", "kind", "text"),
    [
        ("EMAIL", K.DISK_FULL, "Unknown disk full action requested"),
        ("ROTATE", K.DISK_ERROR, "Unknown disk error action requested"),
        ("HALT", K.MAX_LOG_FILE, "larger than max size and unknown action requested"),
        ("BOGUS", K.SPACE_LEFT, "low on disk space for logging and unknown action requested"),
    ],
)
def test_invalid_combinations(action: str, kind: ActionKind, text: str, notes: Notes) -> None:
    out = run_action(action, kind=kind, notify=notes)
    assert not out.ok and out.error is not None and text in out.error
    assert out.follow_up is FollowUp.NONE and out.child is None
    assert text in notes.texts()[-1]


# --------------------------------------------------------------------------- email


def test_mail_text() -> None:
    assert mail_text("Subj", "Body\nmore", "root") == (
        b"To: root\nFrom: root\nSubject: Subj\n\nBody\nmore\n.\n\n"
    )


@needs_root
def test_email_through_sendmail(tmp_path: Path, notes: Notes) -> None:
    out_file = tmp_path / "mail"
    args_file = tmp_path / "args"
    env_file = tmp_path / "env"
    sendmail = script(
        tmp_path / "sendmail",
        f'/bin/cat > {out_file}\necho "$@" > {args_file}\n/bin/cat /proc/$$/environ > {env_file}\n',
    )
    out = run_action(
        "EMAIL",
        kind=K.ADMIN_SPACE_LEFT,
        mail_acct="ops@example.org",
        notify=notes,
        sendmail_path=sendmail,
    )
    assert out.ok and out.child is not None and out.follow_up is FollowUp.NONE
    assert run_until_exit(out.child).returncode == 0
    mail = out_file.read_text()
    assert mail.startswith("To: ops@example.org\nFrom: root\nSubject: Audit Admin Space Alert\n\n")
    assert "very low on disk space" in mail
    assert args_file.read_text() == "-t -fops@example.org\n"
    assert env_file.read_bytes() == b""
    assert notes.texts() == ["Audit daemon is very low on disk space for logging"]


def test_missing_sendmail_is_reported_not_raised(tmp_path: Path, notes: Notes) -> None:
    missing = str(tmp_path / "no-sendmail")
    out = run_action("EMAIL", kind=K.SPACE_LEFT, notify=notes, sendmail_path=missing)
    assert not out.ok and out.child is None
    assert out.error == f"Error - {missing} isn't executable"
    assert notes.texts() == [out.error, "Audit daemon is low on disk space for logging"]


# --------------------------------------------------------------------------- exec


@needs_root
def test_exec_helper_runs_with_empty_env_and_is_reaped_once(
    tmp_path: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report"
    helper = script(
        tmp_path / "helper",
        f'echo "argc=$#" > {report}\n'
        f"/bin/cat /proc/$$/environ >> {report}\n"
        # shell builtins only: a forked grep would see the shell's mask while it waits
        'while read -r k v; do case "$k" in SigBlk:|SigIgn:) echo "$k $v";; esac; done'
        f" < /proc/$$/status >> {report}\n"
        "exit 3\n",
    )
    log = FakeLog()
    waitids: list[int] = []
    real_waitid = os.waitid

    def counting_waitid(idtype: int, ident: int, options: int) -> os.waitid_result | None:
        waitids.append(ident)
        return real_waitid(idtype, ident, options)

    monkeypatch.setattr(os, "waitid", counting_waitid)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the daemon ignores lots
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        out = run_action("EXEC", kind=K.DISK_FULL, exe=helper, log=log, notify=notes)
    finally:
        signal.signal(signal.SIGHUP, old_hup)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    assert out.ok and out.follow_up is FollowUp.SUSPEND and not out.resume_on_exit
    assert log.suspended == 1
    child = out.child
    assert child is not None and child.pidfd >= 0
    wait_zombie(child.pid)
    assert not child.reaped
    run_until_exit(child)
    assert child.returncode == 3 and child.reaped and child.pidfd == -1
    assert proc_state(child.pid) is None  # gone, not a zombie
    assert len(waitids) == 1
    assert child.reap() == 3 and len(waitids) == 1  # exactly once
    lines = report.read_text().splitlines()
    assert lines[0] == "argc=0"
    masks = dict(line.split() for line in lines[1:])
    # standard signals (1..31) must be unblocked and at default; dash itself ignores the
    # glibc-internal 32 and 33, so those bits are not ours to judge
    assert int(masks["SigBlk:"], 16) == 0
    assert int(masks["SigIgn:"], 16) & 0x7FFFFFFF == 0


@needs_root
def test_exec_with_real_log_closes_it_first(tmp_path: Path, notes: Notes) -> None:
    logdir = tmp_path / "log"
    logdir.mkdir()
    log = AuditLog(LogSettings(log_file=str(logdir / "audit.log")), notify=notes)
    log.open()
    helper = script(tmp_path / "helper", f"/bin/mv {logdir}/audit.log {logdir}/moved\n")
    out = run_action("EXEC", kind=K.MAX_LOG_FILE, exe=helper, log=log, notify=notes)
    assert out.resume_on_exit and log.suspended and not log.is_open
    assert out.child is not None and out.child.wait(10) == 0
    log.resume()
    try:
        assert sorted(os.listdir(logdir)) == ["audit.log", "moved"]
    finally:
        log.close()


@needs_root
@needs_root
def test_a_helper_that_passes_the_check_is_run(tmp_path: Path, notes: Notes) -> None:
    """`pyauditd --check` and the action apply one rule: a set-uid helper (4755, which the
    C daemon accepts) passed the check and was then refused when the disk filled."""
    helper = script(tmp_path / "helper", "exit 0\n", mode=0o4755)
    conf = tmp_path / "auditd.conf"
    conf.write_text(
        f"log_file = {tmp_path}/audit.log\nspace_left = 2\nadmin_space_left = 1\n"
        f"disk_full_action = exec {helper}\n"
    )
    config, _warnings = load_auditd_conf(str(conf))
    assert config.disk_full_exe == helper
    out = run_action("EXEC", kind=K.DISK_FULL, exe=helper, log=FakeLog(), notify=notes)
    assert out.ok and out.child is not None, out.error
    assert out.child.wait(10) == 0


def test_a_helper_never_gets_the_daemons_stdin(tmp_path: Path, notes: Notes) -> None:
    """A daemon's stdin may be a record stream (a plugin's is): a helper must neither read
    nor hold it open, so it gets /dev/null."""
    report = tmp_path / "stdin"
    helper = script(tmp_path / "helper", f"readlink /proc/$$/fd/0 > {report}\n")
    reader, writer = os.pipe()
    saved = os.dup(0)
    os.dup2(reader, 0)
    try:
        out = run_action("EXEC", kind=K.SPACE_LEFT, exe=helper, log=FakeLog(), notify=notes)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, reader, writer):
            os.close(fd)
    assert out.child is not None and out.child.wait(10) == 0
    assert report.read_text().strip() == "/dev/null"


def test_exec_refuses_bad_helper(tmp_path: Path, notes: Notes) -> None:
    helper = script(tmp_path / "helper", "exit 0\n", mode=0o777)
    log = FakeLog()
    out = run_action("EXEC", kind=K.SPACE_LEFT, exe=helper, log=log, notify=notes)
    assert not out.ok and out.child is None and "0777" in (out.error or "")
    assert out.follow_up is FollowUp.SUSPEND and log.suspended == 1  # C closes the log first
    out = run_action("EXEC", kind=K.SPACE_LEFT, exe=None, notify=notes)
    assert out.error == "Safe_exec passed NULL for program to execute"


def check_exe(path: str) -> str | None:
    """The check run_action makes before an exec (the one `pyauditd --check` makes too)."""
    return "; ".join(exec_helper_problems(path)) or None


def test_check_exe(tmp_path: Path) -> None:
    assert check_exe("relative/path") is not None
    assert check_exe(str(tmp_path / "missing")) is not None
    assert check_exe(str(tmp_path)) is not None
    if os.geteuid() == 0:
        for mode, ok in ((0o755, True), (0o750, True), (0o555, True), (0o700, False)):
            p = tmp_path / f"x{mode:o}"
            script(p, "exit 0\n", mode=mode)
            assert (check_exe(str(p)) is None) is ok, oct(mode)
        os.chown(p, 1000, 0)
        os.chmod(p, 0o755)
        assert "not owned by root" in (check_exe(str(p)) or "")


def test_spawn_failure_raises_from_spawn_helper_only(tmp_path: Path, notes: Notes) -> None:
    with pytest.raises(OSError):
        spawn_helper(str(tmp_path / "nope"))


@needs_root
def test_exec_spawn_failure_reported(
    tmp_path: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = script(tmp_path / "helper", "exit 0\n")

    def boom(*a: object, **kw: object) -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "posix_spawn", boom)
    out = run_action("EXEC", kind=K.DISK_ERROR, exe=helper, notify=notes)
    assert not out.ok and "failed to exec" in (out.error or "")


# --------------------------------------------------------------------------- runlevels


_SINGLE = "The audit daemon is now changing the system to single user mode"
_HALT = "The audit daemon is now halting the system"


@needs_root
@pytest.mark.parametrize(
    ("action", "kind", "level", "text"),
    [
        ("SINGLE", K.SPACE_LEFT, "1", _SINGLE),
        ("HALT", K.ADMIN_SPACE_LEFT, "0", _HALT),
        ("HALT", K.DISK_FULL, "0", _HALT + " due to no space left on logging partition"),
        ("SINGLE", K.DISK_ERROR, "1", _SINGLE + " due to previously mentioned write error"),
    ],
)
def test_runlevel_changes(
    tmp_path: Path, notes: Notes, action: str, kind: ActionKind, level: str, text: str
) -> None:
    argv = tmp_path / "argv"
    fake_init = script(tmp_path / "init", f'echo "$0 $@" > {argv}\n')
    out = run_action(action, kind=kind, notify=notes, init_path=fake_init)
    assert out.ok and out.follow_up is FollowUp.STOP
    assert out.child is not None and out.child.wait(10) == 0
    assert argv.read_text() == f"{fake_init} {level}\n"
    assert notes.texts()[-1] == text


def test_runlevel_failure_still_stops(tmp_path: Path, notes: Notes) -> None:
    out = run_action("HALT", kind=K.DISK_ERROR, notify=notes, init_path=str(tmp_path / "init"))
    assert not out.ok and out.follow_up is FollowUp.STOP
    assert notes.texts()[0].endswith("due to previously mentioned write error.")


# --------------------------------------------------------------------------- ChildHandle


@pytest.fixture
def sleeper() -> Iterator[ChildHandle]:
    child = spawn_helper("/bin/sleep", ["30"])
    try:
        yield child
    finally:
        if not child.reaped:
            child.send_signal(signal.SIGKILL)
            child.wait(10)


def test_wait_timeout_and_signal(sleeper: ChildHandle) -> None:
    assert sleeper.reap() is None
    assert sleeper.wait(0.05) is None and not sleeper.reaped and sleeper.pidfd >= 0
    assert sleeper.send_signal(signal.SIGTERM)
    assert sleeper.wait(10) == -signal.SIGTERM
    assert not sleeper.send_signal(signal.SIGTERM)  # reaped: never signals a recycled pid
    assert proc_state(sleeper.pid) is None


def test_attach_unregisters_before_closing(sleeper: ChildHandle) -> None:
    loop = evloop.Loop()
    try:
        seen: list[int | None] = []
        exited: evloop.Future[None] = loop.create_future()

        def on_exit(child: ChildHandle) -> None:
            seen.append(child.returncode)
            exited.set_result(None)

        fd = sleeper.pidfd
        sleeper.attach(loop, on_exit)
        loop.call_soon(sleeper.send_signal, signal.SIGKILL)
        loop.run_until_complete(evloop.wait_for(exited, 10))
        assert seen == [-signal.SIGKILL]
        assert not loop.remove_reader(fd)  # already unregistered
        with pytest.raises(OSError):
            os.fstat(fd)  # and closed
    finally:
        loop.close()


def test_spawn_helper_stdin(tmp_path: Path) -> None:
    out_file = tmp_path / "out"
    r, w = os.pipe()
    os.write(w, b"hello\n")
    os.close(w)
    child = spawn_helper("/bin/sh", ["-c", f"/bin/cat > {out_file}"], stdin_fd=r)
    os.close(r)
    assert child.wait(10) == 0
    assert out_file.read_bytes() == b"hello\n"
    assert stat.S_ISREG(os.stat(out_file).st_mode)
