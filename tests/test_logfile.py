"""AuditLog against real files: modes, flush flags, rotation, keep_logs, errors."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditpy.auditd.diskspace import SpaceEvent, SpacePolicy, SpaceSettings
from auditpy.auditd.logfile import (
    AuditLog,
    LogEvent,
    LogFileError,
    LogSettings,
    _Flusher,
)

from .conftest import Notes, need, wait_for

GID = 4242
LINE = b"type=SYSCALL msg=audit(1700000000.123:42): arch=c000003e syscall=257 success=yes\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mount)")


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "audit"
    d.mkdir(mode=0o755)
    return d


def make(logdir: Path, notes: Notes, **kw: object) -> AuditLog:
    settings = LogSettings(log_file=str(logdir / "audit.log"), **kw)  # type: ignore[arg-type]
    return AuditLog(settings, notify=notes)


def mode_of(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- settings


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        LogSettings(flush="SOMETIMES")
    with pytest.raises(ValueError):
        LogSettings(max_log_file_action="EMAIL")
    with pytest.raises(ValueError):
        LogSettings(num_logs=-1)
    assert LogSettings(max_log_file=0, max_log_file_action="ROTATE").size_limit == 0
    assert LogSettings(max_log_file=8, max_log_file_action="IGNORE").size_limit == 0
    assert LogSettings(max_log_file=8, max_log_file_action="SYSLOG").size_limit == 8 << 20
    a = LogSettings(freq=1)
    assert not a.needs_reopen(LogSettings(freq=50, num_logs=5))
    assert a.needs_reopen(LogSettings(flush="SYNC"))
    assert a.needs_reopen(LogSettings(log_gid=4))


# --------------------------------------------------------------------------- open


@needs_root
def test_open_creates_file_and_fixes_directory(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    try:
        assert log.open() == []
        st = os.stat(log.path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert mode_of(logdir) == 0o700
        assert log.size == 0 and log.is_open
    finally:
        log.close()


@needs_root
def test_open_with_log_group(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, log_gid=GID)
    try:
        log.open()
        st = os.stat(log.path)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid) == (0, GID)
        dst = os.stat(logdir)
        assert stat.S_IMODE(dst.st_mode) == 0o750 and dst.st_gid == GID
    finally:
        log.close()


def test_missing_directory_is_named(tmp_path: Path, notes: Notes) -> None:
    log = AuditLog(LogSettings(log_file=str(tmp_path / "nope" / "audit.log")), notify=notes)
    with pytest.raises(LogFileError, match=str(tmp_path / "nope")):
        log.open()
    assert not log.is_open


def test_symlink_and_fifo_refused(logdir: Path, notes: Notes) -> None:
    target = logdir / "elsewhere"
    target.write_bytes(b"")
    (logdir / "audit.log").symlink_to(target)
    with pytest.raises(LogFileError, match="symbolic link"):
        make(logdir, notes).open()
    (logdir / "audit.log").unlink()
    os.mkfifo(logdir / "audit.log")
    with pytest.raises(LogFileError, match="not a regular file"):
        make(logdir, notes).open()


@needs_root
def test_existing_file_owner_and_mode_checks(logdir: Path, notes: Notes) -> None:
    path = logdir / "audit.log"
    path.write_bytes(LINE * 3)
    os.chown(path, 1000, 1000)
    with pytest.raises(LogFileError, match="not owned by root"):
        make(logdir, notes).open()
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    log = make(logdir, notes)
    try:
        warnings = log.open()
        assert any("0644" in w for w in warnings)
        assert warnings[0] in notes.texts()
        assert mode_of(path) == 0o600  # fixed, not just warned about
        assert log.size == len(LINE) * 3  # existing content counts toward max_log_file
    finally:
        log.close()


def test_open_flags_per_flush_mode(logdir: Path, notes: Notes) -> None:
    for mode, want, unwanted in (
        ("NONE", 0, os.O_DSYNC),
        ("INCREMENTAL", 0, os.O_DSYNC),
        ("DATA", os.O_DSYNC, os.O_SYNC & ~os.O_DSYNC),
        ("SYNC", os.O_SYNC, 0),
    ):
        log = make(logdir, notes, flush=mode, freq=10)
        try:
            log.open()
            fl = fcntl.fcntl(log.fd, fcntl.F_GETFL)
            assert fl & os.O_APPEND
            assert fl & os.O_ACCMODE == os.O_WRONLY
            assert fl & want == want, mode
            assert fl & unwanted == 0, mode
            assert fcntl.fcntl(log.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            log.close()


@needs_root
def test_open_fixes_modes_of_rotated_logs(logdir: Path, notes: Notes) -> None:
    for i in (1, 2):
        (logdir / f"audit.log.{i}").write_bytes(b"old\n")
        os.chmod(logdir / f"audit.log.{i}", 0o644)
    log = make(logdir, notes, num_logs=5, log_gid=GID)
    try:
        log.open()
        for i in (1, 2):
            st = os.stat(logdir / f"audit.log.{i}")
            assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_gid == GID
    finally:
        log.close()


# --------------------------------------------------------------------------- writing


def test_write_counts_and_content(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    try:
        log.open()
        assert log.write([]) == LogEvent.NONE
        log.write([LINE] * 64)
        log.write([LINE])
        assert log.records_written == 65
        assert log.bytes_written == log.size == 65 * len(LINE)
        assert Path(log.path).read_bytes() == LINE * 65
    finally:
        log.close()


def test_write_when_closed(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    assert log.write([LINE]) == LogEvent.NOT_OPEN
    assert log.records_written == 0


def test_partial_writes_are_completed(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make(logdir, notes)
    calls: list[int] = []
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:100]))

    try:
        log.open()
        monkeypatch.setattr(os, "write", short_write)
        ev = log.write([LINE] * 10)
        monkeypatch.undo()
        assert LogEvent.DISK_ERROR not in ev and LogEvent.DISK_FULL not in ev
        assert len(calls) == -(-len(LINE) * 10 // 100)
        assert Path(log.path).read_bytes() == LINE * 10
        assert log.records_written == 10 and log.size == len(LINE) * 10
    finally:
        log.close()


def test_other_errors_are_disk_errors(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make(logdir, notes)

    def failing(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "Input/output error")

    try:
        log.open()
        monkeypatch.setattr(os, "write", failing)
        assert log.write([LINE]) == LogEvent.DISK_ERROR
        assert log.write([LINE]) == LogEvent.DISK_ERROR
        monkeypatch.undo()
        err = log.last_error
        assert err is not None and err.op == "write" and err.error.errno == errno.EIO
        assert log.consecutive_errors == 2 and log.records_written == 0
        log.write([LINE])
        assert log.consecutive_errors == 0
    finally:
        log.close()


def test_incremental_fsyncs_every_freq_records(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, flush="INCREMENTAL", freq=10)
    try:
        log.open()
        for _ in range(5):
            log.write([LINE] * 5)
        assert log.fsyncs == 2
    finally:
        log.close()


def test_incremental_async_uses_one_worker(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, flush="INCREMENTAL_ASYNC", freq=10)

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "auditpy-log-flush"]

    try:
        log.open()
        assert len(workers()) == 1
        for _ in range(30):
            log.write([LINE])
        wait_for(lambda: log.fsyncs >= 1, what="a background fsync")
        log.rotate()  # num_logs 0: skipped, worker unaffected
        assert len(workers()) == 1
    finally:
        log.close()
    assert workers() == []


def test_background_syncs_keep_their_distance(tmp_path: Path) -> None:
    """Kicks while a sync is recent wait for min_interval and share one fsync; a kick after
    a quiet spell syncs at once."""
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    flusher = _Flusher(lambda: os.dup(fd), lambda: 1, min_interval=0.5)

    def wait_syncs(n: int) -> None:
        wait_for(lambda: flusher.syncs >= n, what=f"sync {n}", interval=0.005)
        assert flusher.syncs == n

    try:
        started = time.monotonic()
        flusher.kick()
        wait_syncs(1)
        for _ in range(100):
            flusher.kick()
        wait_syncs(2)
        assert time.monotonic() - started >= 0.5
        # The quiet spell is what the rest of this test is about: longer than min_interval
        # with no kick, no sync may start (a hundred kicks were one sync), and the next kick
        # must sync at once. Nothing in the flusher shows time passing, so this sleeps.
        time.sleep(0.6)
        assert flusher.syncs == 2  # a hundred kicks, one sync
        quiet = time.monotonic()
        flusher.kick()
        wait_syncs(3)
        assert time.monotonic() - quiet < 0.5  # no pause: the last sync is long past
    finally:
        flusher.stop()
        os.close(fd)
    assert flusher.error is None


def test_background_flusher_syncs_the_old_file_before_letting_it_go(tmp_path: Path) -> None:
    """After a rotation the old file's unsynced tail is synced too.  The old "file" here is a
    pipe, whose fsync fails (EINVAL), so the attempt shows as an error."""
    read_end, write_end = os.pipe()
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    current = {"fd": write_end, "generation": 1}
    flusher = _Flusher(lambda: os.dup(current["fd"]), lambda: current["generation"],
                       min_interval=0.0)

    try:
        flusher.kick()
        wait_for(lambda: flusher.error, what="the failed fsync of the pipe")
        assert flusher.syncs == 0
        flusher.error = None
        current.update(fd=log_fd, generation=2)  # "rotated": a new file
        flusher.kick()
        wait_for(lambda: flusher.syncs, what="the new file's sync")
        assert flusher.syncs == 1  # the new file
        error = flusher.error  # the old one was tried first
        assert error is not None and error.op == "fsync"
    finally:
        flusher.stop()
        for fd in (read_end, write_end, log_fd):
            os.close(fd)


def test_size_limit_event(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, max_log_file=1, max_log_file_action="ROTATE", num_logs=3)
    big = [b"x" * 1023 + b"\n"] * 256  # 256 KiB per batch
    try:
        log.open()
        events = [log.write(big) for _ in range(4)]
        assert [LogEvent.SIZE_LIMIT in e for e in events] == [False, False, False, True]
        assert log.over_size_limit
        assert log.rotate()
        assert not log.over_size_limit
        assert LogEvent.SIZE_LIMIT not in log.write(big)
    finally:
        log.close()


def test_space_sampling_rule(logdir: Path, notes: Notes) -> None:
    settings = LogSettings(log_file=str(logdir / "audit.log"))
    log = AuditLog(settings, notify=notes, space_sample_bytes=4096, space_sample_seconds=3600)
    try:
        log.open()
        assert LogEvent.SPACE_SAMPLE in log.write([LINE])  # first write after open
        assert log.last_statvfs is not None
        seen = [LogEvent.SPACE_SAMPLE in log.write([LINE]) for _ in range(100)]
        per = 4096 // len(LINE) + 1
        assert sum(seen) == 100 // per
    finally:
        log.close()


# --------------------------------------------------------------------------- rotation


def test_rotate_disabled(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, num_logs=1)
    try:
        log.open()
        res = log.rotate()
        assert not res
        assert res.reason == "Log rotation disabled (num_logs < 2), skipping"
        assert res.reason in notes.texts()
        assert sorted(os.listdir(logdir)) == ["audit.log"]
    finally:
        log.close()


@needs_root
@pytest.mark.parametrize("gid", [0, GID])
def test_rotate_names_and_modes(logdir: Path, notes: Notes, gid: int) -> None:
    log = make(logdir, notes, num_logs=4, log_gid=gid)
    try:
        log.open()
        for gen in range(6):
            log.write([f"gen{gen}\n".encode()])
            res = log.rotate()
            assert res and res.reopened and not res.errors
        log.write([b"gen6\n"])
        assert sorted(os.listdir(logdir)) == [f"audit.log{s}" for s in ("", ".1", ".2", ".3")]
        assert (logdir / "audit.log").read_bytes() == b"gen6\n"
        for i in (1, 2, 3):
            p = logdir / f"audit.log.{i}"
            assert p.read_bytes() == f"gen{6 - i}\n".encode()
            st = os.stat(p)
            assert stat.S_IMODE(st.st_mode) == (0o440 if gid else 0o400)
            assert st.st_gid == gid
        assert mode_of(logdir / "audit.log") == (0o640 if gid else 0o600)
        assert log.size == 5
    finally:
        log.close()


def test_rotate_two_logs(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, num_logs=2)
    try:
        log.open()
        for gen in range(3):
            log.write([f"g{gen}\n".encode()])
            assert log.rotate()
        assert sorted(os.listdir(logdir)) == ["audit.log", "audit.log.1"]
        assert (logdir / "audit.log.1").read_bytes() == b"g2\n"
    finally:
        log.close()


def test_rotate_rename_failure_is_reported(logdir: Path, notes: Notes) -> None:
    (logdir / "audit.log.1").mkdir()
    (logdir / "audit.log.1" / "x").write_bytes(b"")
    log = make(logdir, notes, num_logs=2)
    try:
        log.open()
        log.write([LINE])
        res = log.rotate()
        assert res.reopened
        assert [e.op for e in res.errors] == ["rotate2"]
        assert res.errors[0].error.errno in (errno.EISDIR, errno.ENOTEMPTY)
        assert any(t.startswith("Error rotating logs from") for t in notes.texts())
        assert mode_of(logdir / "audit.log") == 0o600  # writable again, logging goes on
        log.write([LINE])
        assert (logdir / "audit.log").read_bytes() == LINE * 2
    finally:
        log.close()


def test_rotate_while_suspended_stays_closed(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, num_logs=3)
    try:
        log.open()
        log.write([LINE])
        log.suspend()
        res = log.rotate()
        assert res and not res.reopened and not log.is_open
        assert sorted(os.listdir(logdir)) == ["audit.log.1"]
        log.resume()
        assert log.is_open and (logdir / "audit.log").exists()
    finally:
        log.close()


def test_keep_logs_never_deletes(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, num_logs=2, max_log_file_action="KEEP_LOGS")
    try:
        log.open()
        for gen in range(6):
            log.write([f"gen{gen}\n".encode()])
            assert log.keep_logs()
        names = sorted(os.listdir(logdir))
        assert names == ["audit.log"] + [f"audit.log.{i}" for i in range(1, 7)]
        assert (logdir / "audit.log.6").read_bytes() == b"gen0\n"
        assert (logdir / "audit.log.1").read_bytes() == b"gen5\n"
        assert log.remove_excess_logs() == []  # keep_logs files are meant to stay

        for i in range(1, 7):  # an admin archives them all
            (logdir / f"audit.log.{i}").unlink()
        log.write([b"after\n"])
        assert log.keep_logs()
        assert any("Last known log disappeared" in t for t in notes.texts())
        assert any(t.endswith("audit.log.1") for t in notes.texts())
        assert sorted(os.listdir(logdir)) == ["audit.log", "audit.log.1"]
    finally:
        log.close()


def test_keep_logs_fills_first_gap_above_existing(logdir: Path, notes: Notes) -> None:
    for i in (1, 2):
        (logdir / f"audit.log.{i}").write_bytes(f"old{i}\n".encode())
    log = make(logdir, notes, max_log_file_action="KEEP_LOGS")
    try:
        log.open()
        log.write([b"cur\n"])
        log.keep_logs()
        assert [(logdir / f"audit.log.{i}").read_bytes() for i in (1, 2, 3)] == [
            b"cur\n",
            b"old1\n",
            b"old2\n",
        ]
    finally:
        log.close()


def test_remove_excess_logs(logdir: Path, notes: Notes) -> None:
    for i in (1, 2, 3, 4, 5, 7):
        (logdir / f"audit.log.{i}").write_bytes(b"")
    log = make(logdir, notes, num_logs=3, max_log_file_action="ROTATE")
    removed = log.remove_excess_logs()
    assert removed == [str(logdir / f"audit.log.{i}") for i in (3, 4, 5)]
    assert sorted(os.listdir(logdir)) == ["audit.log.1", "audit.log.2", "audit.log.7"]
    assert sum("exceeds num_logs parameter" in t for t in notes.texts()) == 3


# --------------------------------------------------------------------------- suspend/reload


def test_suspend_and_resume_recreates_moved_file(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    try:
        log.open()
        log.write([LINE])
        log.suspend()
        assert log.suspended and log.fd == -1
        assert log.write([LINE]) == LogEvent.NOT_OPEN
        os.rename(logdir / "audit.log", logdir / "archived")  # what an exec helper does
        log.resume()
        assert not log.suspended and log.size == 0
        log.write([LINE])
        assert (logdir / "audit.log").read_bytes() == LINE
        assert (logdir / "archived").read_bytes() == LINE
    finally:
        log.close()


def test_resume_failure_stays_suspended(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    log.open()
    log.suspend()
    os.rename(logdir, logdir.with_name("gone"))
    with pytest.raises(LogFileError):
        log.resume()
    assert log.suspended and not log.is_open


def test_reopen_only_when_needed(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes, flush="INCREMENTAL", freq=5)
    try:
        log.open()
        fd = log.fd
        assert not log.reopen(LogSettings(log_file=log.path, flush="INCREMENTAL", freq=50))
        assert log.fd == fd
        assert log.reopen(LogSettings(log_file=log.path, flush="DATA"))
        assert fcntl.fcntl(log.fd, fcntl.F_GETFL) & os.O_DSYNC
        new = logdir / "new.log"
        assert log.reopen(LogSettings(log_file=str(new)))
        log.write([LINE])
        assert new.read_bytes() == LINE
    finally:
        log.close()


def test_reopen_ends_suspension(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    try:
        log.open()
        log.suspend()
        assert log.reopen(LogSettings(log_file=log.path, flush="SYNC"))
        assert log.is_open and not log.suspended
    finally:
        log.close()


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    need("mount")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_enospc_on_tmpfs_is_reported_not_raised(tiny_fs: Path, notes: Notes) -> None:
    log = AuditLog(
        LogSettings(log_file=str(tiny_fs / "audit.log")), notify=notes, space_sample_bytes=16384
    )
    policy = SpacePolicy(
        SpaceSettings(space_left=1, space_left_action="SYSLOG", disk_full_action="SUSPEND")
    )
    fired: list[SpaceEvent] = []
    batch = [LINE] * 64
    try:
        log.open()
        for _ in range(1000):
            ev = log.write(batch)
            if LogEvent.SPACE_SAMPLE in ev:
                assert log.last_statvfs is not None
                fired += [t.event for t in policy.evaluate_statvfs(log.last_statvfs)]
            if LogEvent.DISK_FULL in ev:
                fired += [t.event for t in policy.disk_full()]
                break
        else:
            pytest.fail("1 MiB tmpfs never filled up")
        err = log.last_error
        assert err is not None and err.disk_full and err.op == "write"
        assert log.size == os.stat(log.path).st_size  # the partial tail is accounted for
        assert log.size > 900 * 1024
        assert SpaceEvent.SPACE_LEFT in fired and fired[-1] is SpaceEvent.DISK_FULL
        assert fired.count(SpaceEvent.DISK_FULL) == 1
        assert LogEvent.DISK_FULL in log.write(batch)  # still no exception
        assert policy.disk_full() == []  # once
    finally:
        log.close()
