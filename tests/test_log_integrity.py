"""A record is on disk whole or not at all (issue 15, items 4, 6 and 8).

* a crash in the middle of a batched write() leaves half a record; the next open cuts it off
  so the first new record is not glued to it;
* a batch cut short by a full disk or RLIMIT_FSIZE is cut back to its last whole record,
  and every record offered is counted as written or not written, exactly;
* the INCREMENTAL_ASYNC flush thread keeps the log synced when dup() fails (EMFILE) and is
  replaced when it dies, each time with a message.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auditpy.auditd import logfile
from auditpy.auditd.logfile import AuditLog, LogEvent, LogSettings

from .conftest import Notes, wait_for

ROOT = Path(__file__).parent.parent
FAILED = LogEvent.NOT_OPEN | LogEvent.DISK_FULL | LogEvent.DISK_ERROR
RECORD = re.compile(
    rb"type=USER_AVC msg=audit\(1700000000\.000:(\d+)\): pid=1 uid=0 msg='x{0,40}'\n")


def record(n: int) -> bytes:
    """Numbered records of varied length, so a cut falls anywhere in one."""
    return b"type=USER_AVC msg=audit(1700000000.000:%d): pid=1 uid=0 msg='%s'\n" % (
        n, b"x" * (n * 7 % 41))


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "audit"
    d.mkdir(mode=0o700)
    return d


def make(logdir: Path, notes: Notes, **kw: Any) -> AuditLog:
    return AuditLog(LogSettings(log_file=str(logdir / "audit.log"), **kw), notify=notes)


def numbers_on_disk(path: Path | str) -> list[int]:
    """The record numbers in the file; fails on anything that is not one whole record."""
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"no newline at the end: {data[-60:]!r}"
    numbers = []
    for line in data.splitlines(keepends=True):
        match = RECORD.fullmatch(line)
        assert match is not None, f"not one whole record: {line!r}"
        assert line == record(int(match.group(1))), f"a record was altered: {line!r}"
        numbers.append(int(match.group(1)))
    return numbers


def run_child(code: str, *args: str, timeout: float = 60) -> Any:
    """Run `code` in a fresh interpreter (for rlimits that must not touch pytest) and return
    the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Item 4: a torn final record is cut off when the log is opened


def test_torn_tail_is_cut_at_open(logdir: Path, notes: Notes) -> None:
    path = logdir / "audit.log"
    path.write_bytes(record(1) + record(2) + record(3)[:40])
    os.chmod(path, 0o600)
    log = make(logdir, notes)
    try:
        warnings = log.open()
        log.write([record(4), record(5)])
        assert numbers_on_disk(path) == [1, 2, 4, 5]
        assert log.size == path.stat().st_size
        assert log.torn_tails_repaired == 1 and log.torn_bytes_removed == 40
        assert any("40 bytes" in w for w in warnings)
        assert any("incomplete record" in t and "40 bytes" in t for t in notes.texts())
    finally:
        log.close()


def test_whole_log_is_left_alone(logdir: Path, notes: Notes) -> None:
    path = logdir / "audit.log"
    path.write_bytes(record(1) + record(2))
    os.chmod(path, 0o600)
    log = make(logdir, notes)
    try:
        assert log.open() == []
        assert log.torn_tails_repaired == 0 and log.size == path.stat().st_size
    finally:
        log.close()
    assert numbers_on_disk(path) == [1, 2]


def test_a_log_that_is_one_torn_record_becomes_empty(logdir: Path, notes: Notes) -> None:
    path = logdir / "audit.log"
    path.write_bytes(record(1)[:25])
    os.chmod(path, 0o600)
    log = make(logdir, notes)
    try:
        log.open()
        log.write([record(2)])
    finally:
        log.close()
    assert numbers_on_disk(path) == [2]
    assert log.torn_bytes_removed == 25


def test_an_overlong_unterminated_tail_is_kept_as_its_own_line(logdir: Path,
                                                               notes: Notes) -> None:
    """No crash of ours leaves more than one record without a newline: such a tail is not
    ours to cut, but the next record must still start a line of its own."""
    path = logdir / "audit.log"
    junk = b"j" * (logfile.TORN_TAIL_LIMIT + 10)
    path.write_bytes(record(1) + junk)
    os.chmod(path, 0o600)
    log = make(logdir, notes)
    try:
        log.open()
        log.write([record(2)])
    finally:
        log.close()
    assert path.read_bytes() == record(1) + junk + b"\n" + record(2)
    assert log.torn_tails_repaired == 1 and log.torn_bytes_removed == 0
    assert any("added one" in t for t in notes.texts())


@pytest.mark.parametrize("how", ["resume", "reopen", "failed rotation"])
def test_torn_tail_is_cut_whenever_the_log_is_opened(
    logdir: Path, notes: Notes, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume (SIGUSR2), a reload that reopens, and a rotation whose rename failed all open
    an existing file that may end in a torn record."""
    path = logdir / "audit.log"
    log = make(logdir, notes, num_logs=3)
    try:
        log.open()
        log.write([record(1), record(2)])
        torn = record(3)[:33]
        if how == "resume":
            log.suspend()
            with path.open("ab") as f:
                f.write(torn)
            log.resume()
        elif how == "reopen":
            with path.open("ab") as f:
                f.write(torn)
            assert log.reopen(LogSettings(log_file=str(path), num_logs=3, flush="DATA"))
        else:
            with path.open("ab") as f:
                f.write(torn)
            real_rename = os.rename

            def no_rename(src: str, dst: str) -> None:
                if src == str(path):
                    raise OSError(errno.EBUSY, "Device or resource busy")
                real_rename(src, dst)

            monkeypatch.setattr(os, "rename", no_rename)
            result = log.rotate()
            monkeypatch.undo()
            assert result.reopened and [e.op for e in result.errors] == ["rotate2"]
        log.write([record(4)])
        assert numbers_on_disk(path) == [1, 2, 4]
        assert log.torn_bytes_removed == 33
    finally:
        log.close()


_WRITER = r"""
import os, sys
from auditpy.auditd.logfile import AuditLog, LogSettings
from tests.test_log_integrity import record
log = AuditLog(LogSettings(log_file=sys.argv[1]), notify=lambda priority, text: None)
log.open()
first = int(sys.argv[2])
batch = [record(n) for n in range(first, first + 60000)]  # ~4 MiB per write()
os.write(1, b"ready\n")
while True:
    log.write(batch)
"""


def _inside_a_write(path: Path, size: int) -> bool:
    """The file is past `size` and ends inside a record: a write() is copying its batch."""
    if path.stat().st_size <= size:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def test_records_stay_whole_across_kill_9_in_the_middle_of_writes(logdir: Path) -> None:
    """The attack itself: SIGKILL a writer of large batches, restart, write, repeat.  Each
    kill is sent while the file does not end in a newline, that is while a write() is
    copying its batch in, so that it leaves half a record (a kill sent at a random moment
    landed between writes in every one of eight kills about half the time: the writer also
    formats each batch); every restart must find the file whole again before it appends."""
    path = logdir / "audit.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    torn_seen = repaired = 0
    for kill in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(kill * 100000)],
            stdout=subprocess.PIPE, env=env, cwd=ROOT,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            size = (kill + 1) * 2_000_000
            wait_for(lambda: _inside_a_write(path, size), 20, "a write in progress",  # noqa: B023
                     interval=0.001)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        if not path.read_bytes().endswith(b"\n"):
            torn_seen += 1
        log = AuditLog(LogSettings(log_file=str(path)), notify=lambda p, t: None)
        try:
            log.open()
            log.write([record(kill * 100000 + 99999)])  # the restarted daemon's first record
        finally:
            log.close()
        numbers_on_disk(path)  # whole records only: nothing glued to a torn one
        repaired += log.torn_tails_repaired
    assert repaired == torn_seen
    assert torn_seen > 0, "no kill landed inside a write(): the attack did not happen"


# --------------------------------------------------------------------------------------
# Item 8: a batch cut short is cut back to whole records, and counted exactly


class ShortDisk:
    """os.write that takes the first `room` bytes and then fails with `error`."""

    def __init__(self, room: int, error: int = errno.ENOSPC) -> None:
        self.room = room
        self.error = error
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            raise OSError(self.error, os.strerror(self.error))
        n = min(self.room, len(data))
        self.room -= n
        return self.real(fd, bytes(data[:n]))


def test_cut_short_batch_keeps_its_whole_records(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make(logdir, notes)
    batch = [record(n) for n in range(10, 20)]
    try:
        log.open()
        log.write([record(1)])
        room = sum(map(len, batch[:4])) + 17  # four whole records and a piece of the fifth
        monkeypatch.setattr(os, "write", ShortDisk(room))
        events = log.write(batch)
        monkeypatch.undo()
        assert events & LogEvent.DISK_FULL
        assert numbers_on_disk(log.path) == [1, 10, 11, 12, 13]
        assert log.records_written == 1 + 4
        assert log.size == os.stat(log.path).st_size
        assert log.bytes_written == os.stat(log.path).st_size
        assert log.last_unwritten == 6 and log.records_not_written == 6
        assert not log.write([record(30)]) & FAILED  # and not glued to anything
        assert numbers_on_disk(log.path) == [1, 10, 11, 12, 13, 30]
        assert log.consecutive_errors == 0
    finally:
        log.close()


def test_cut_falls_back_to_the_start_of_the_batch(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the file cannot be cut at the end of the last whole record, the whole batch goes."""
    log = make(logdir, notes)
    batch = [record(n) for n in range(10, 20)]
    real_ftruncate = os.ftruncate
    start = len(record(1))

    def picky(fd: int, length: int) -> None:
        if length != start:
            raise OSError(errno.EIO, "Input/output error")
        real_ftruncate(fd, length)

    try:
        log.open()
        log.write([record(1)])
        monkeypatch.setattr(os, "write", ShortDisk(sum(map(len, batch[:3])) + 5))
        monkeypatch.setattr(os, "ftruncate", picky)
        assert log.write(batch) & LogEvent.DISK_FULL
        monkeypatch.undo()
        log.write([record(30)])
        assert numbers_on_disk(log.path) == [1, 30]
        assert log.records_written == 2
        assert log.records_not_written == 10
    finally:
        log.close()


def test_a_tail_that_cannot_be_cut_blocks_writes_until_it_can(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending after a torn record would glue the next one to it; while the cut keeps
    failing nothing is written (and all of it is counted), then the cut comes first."""
    log = make(logdir, notes)
    batch = [record(n) for n in range(10, 20)]

    def no_ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        log.open()
        monkeypatch.setattr(os, "write", ShortDisk(sum(map(len, batch[:2])) + 9))
        monkeypatch.setattr(os, "ftruncate", no_ftruncate)
        assert log.write(batch) & LogEvent.DISK_FULL
        assert log.last_unwritten == 8 and log.records_written == 2
        monkeypatch.setattr(os, "write", ShortDisk(10**6))  # space again, truncate still fails
        assert log.write([record(30)]) & FAILED == LogEvent.DISK_FULL
        assert log.last_unwritten == 1 and log.consecutive_errors == 2
        assert any("Cannot cut an incomplete record" in t for t in notes.texts())
        monkeypatch.undo()
        assert not log.write([record(31)]) & FAILED
        assert numbers_on_disk(log.path) == [10, 11, 31]
        assert log.records_written == 3 and log.records_not_written == 8 + 1
        assert log.consecutive_errors == 0
    finally:
        log.close()


def test_fsync_failure_is_not_a_lost_record(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make(logdir, notes, flush="INCREMENTAL", freq=2)

    def no_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    try:
        log.open()
        assert log.write([]) == LogEvent.NONE
        monkeypatch.setattr(os, "fsync", no_fsync)
        assert log.write([record(1), record(2)]) & FAILED == LogEvent.DISK_ERROR
        assert log.last_unwritten == 0 and log.records_written == 2
    finally:
        monkeypatch.undo()
        log.close()


def test_closed_log_counts_every_record_as_not_written(logdir: Path, notes: Notes) -> None:
    log = make(logdir, notes)
    assert log.write([record(1), record(2)]) == LogEvent.NOT_OPEN
    assert log.last_unwritten == 2 and log.records_not_written == 2


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_free_fill(directory: Path, log: AuditLog,
                   on_failure: Callable[[list[bytes]], None]) -> int:
    """disk_full_action IGNORE/SYSLOG: keep writing 50-record batches into a disk that fills
    up, gets 96 KiB back after five failed writes, and fills up again; returns how many
    records were offered."""
    filler = directory / "filler"
    filler.write_bytes(b"f" * 96 * 1024)
    offered = failures = 0
    log.open()
    try:
        for k in range(400):
            batch = [record(k * 50 + i) for i in range(50)]
            offered += len(batch)
            if log.write(batch) & FAILED:
                failures += 1
                on_failure(batch)
                if failures == 5:
                    filler.unlink()  # an administrator makes room
    finally:
        log.close()
    assert failures >= 6, "the disk never filled twice"
    return offered


def test_full_tmpfs_never_cuts_or_glues_a_record(tiny_fs: Path, notes: Notes) -> None:
    log = AuditLog(LogSettings(log_file=str(tiny_fs / "audit.log")), notify=notes)
    fill_free_fill(tiny_fs, log, lambda batch: None)
    on_disk = numbers_on_disk(log.path)
    assert on_disk == sorted(set(on_disk))
    assert len(on_disk) == log.records_written


def test_full_tmpfs_counts_written_and_not_written_exactly(tiny_fs: Path, notes: Notes) -> None:
    """written + not written = offered, with the daemon's interface: after a failed write
    it adds `last_unwritten`, not the batch size."""
    log = AuditLog(LogSettings(log_file=str(tiny_fs / "audit.log")), notify=notes)
    unwritten: list[int] = []
    offered = fill_free_fill(tiny_fs, log, lambda batch: unwritten.append(log.last_unwritten))
    assert len(numbers_on_disk(log.path)) == log.records_written
    assert log.records_written + sum(unwritten) == offered
    assert log.records_not_written == sum(unwritten)
    assert any(0 < n < 50 for n in unwritten)  # a batch was written in part


_FSIZE_CHILD = r"""
import json, os, resource, sys
from auditpy.auditd.logfile import AuditLog, LogEvent, LogSettings
from tests.test_log_integrity import record
log = AuditLog(LogSettings(log_file=sys.argv[1]), notify=lambda p, t: None)
log.open()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_003, hard))  # cuts a batch at a random byte
offered = unwritten = 0
results = []
for k in range(60):
    if k == 40:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    batch = [record(k * 100 + i) for i in range(100)]
    offered += len(batch)
    events = log.write(batch)
    if events & (LogEvent.NOT_OPEN | LogEvent.DISK_FULL | LogEvent.DISK_ERROR):
        unwritten += log.last_unwritten
        results.append(log.last_error.error.errno)
log.close()
print(json.dumps({"offered": offered, "unwritten": unwritten, "written": log.records_written,
                  "not_written": log.records_not_written, "errors": results}))
"""


def test_rlimit_fsize_cut_batch_counts_exact(logdir: Path) -> None:
    path = logdir / "audit.log"
    out = run_child(_FSIZE_CHILD, str(path))
    assert out["errors"] and set(out["errors"]) == {errno.EFBIG}
    on_disk = numbers_on_disk(path)
    assert len(on_disk) == out["written"]
    assert out["written"] + out["unwritten"] == out["offered"] == 6000
    assert out["not_written"] == out["unwritten"]
    # the records before the limit are all there, in order, and those after it too
    assert on_disk == sorted(on_disk) and on_disk[-1] == 5999
    assert path.stat().st_size > 100_003


# --------------------------------------------------------------------------------------
# Item 6: the INCREMENTAL_ASYNC flush thread never stops syncing unnoticed


_NOFILE_CHILD = r"""
import json, os, resource, sys, threading, time
from auditpy.auditd.logfile import AuditLog, LogSettings
notes = []
log = AuditLog(LogSettings(log_file=sys.argv[1], flush="INCREMENTAL_ASYNC", freq=10),
               notify=lambda p, t: notes.append(t))
log.open()
line = b"type=USER msg=audit(1700000000.000:1): pid=1 msg='x'\n"
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hogs = []
try:
    while True:
        hogs.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass


def synced_after(before, timeout):
    deadline = time.monotonic() + timeout
    while log.fsyncs == before and time.monotonic() < deadline:
        time.sleep(0.002)
    return log.fsyncs > before

points = synced = 0
for _ in range(40):  # 40 flush points with no descriptor to spare
    before = log.fsyncs
    log.write([line] * 10)
    points += 1
    synced += synced_after(before, 0.25)
workers = [t for t in threading.enumerate() if t.name == "auditpy-log-flush"]
for fd in hogs:
    os.close(fd)
deadline = time.monotonic() + 10
while not any("again" in n for n in notes) and time.monotonic() < deadline:
    log.write([line] * 10)
    time.sleep(0.005)
before = log.fsyncs
log.write([line] * 10)
background = synced_after(before, 5)
log.close()
print(json.dumps({"points": points, "synced": synced, "alive": len(workers),
                  "notes": notes, "background": background}))
"""


def test_flush_thread_keeps_the_log_synced_when_dup_fails(logdir: Path) -> None:
    """nofile 64 and every descriptor taken: dup() fails with EMFILE.  Each flush point is
    still synced (inline), the thread survives, says so once, and takes over again once a
    descriptor is free."""
    out = run_child(_NOFILE_CHILD, str(logdir / "audit.log"))
    assert out["synced"] >= out["points"] - 1  # the first one only discovers the failure
    assert out["alive"] == 1
    failing = [n for n in out["notes"] if "cannot duplicate" in n]
    assert len(failing) == 1 and "Too many open files" in failing[0]
    assert any("again after" in n for n in out["notes"])
    assert out["background"]


def test_a_dead_flush_thread_is_noticed_and_replaced(
    logdir: Path, notes: Notes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "auditpy-log-flush"]

    monkeypatch.setattr(logfile, "FLUSHER_RESTART_DELAY", 0.3)
    log = make(logdir, notes, flush="INCREMENTAL_ASYNC", freq=10)
    batch = [record(n) for n in range(10)]
    real_dup = os.dup

    def broken_dup(fd: int) -> int:
        raise RuntimeError("bug in the worker")

    try:
        log.open()
        monkeypatch.setattr(os, "dup", broken_dup)
        log.write(batch)  # the worker wakes up and dies
        wait_for(lambda: workers() == [], interval=0.005)
        monkeypatch.setattr(os, "dup", real_dup)
        before = log.fsyncs
        log.write(batch)  # noticed at the next flush point: fsynced inline meanwhile
        assert log.fsyncs == before + 1
        died = [t for t in notes.texts() if "Log flush thread stopped" in t]
        assert len(died) == 1 and "RuntimeError: bug in the worker" in died[0]
        assert "new thread starts in 0.3 s" in died[0]
        assert log.flush_thread_restarts == 1
        def write_until_restarted() -> list[threading.Thread]:
            log.write(batch)  # a flush point notices the delay is over
            return workers()

        wait_for(write_until_restarted, 5, "a new flush thread", interval=0.02)
        assert len(workers()) == 1
        before = log.fsyncs
        log.write(batch)
        wait_for(lambda: log.fsyncs > before, interval=0.005)  # a worker syncs again
        assert len(workers()) == 1
    finally:
        log.close()
    assert workers() == []
