"""pyauditd's Daemon without root: a fake kernel link and a fake dispatcher spawner stand in
for the kernel and pyaudispd, so the record path, reloads, write failures, signals and the
kernel-request thread are tested in-process."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import syslog
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from auditpy import structs
from auditpy.auditd import daemon as daemon_module
from auditpy.auditd.daemon import COALESCE_SECONDS, Daemon, Options
from auditpy.auditd.logfile import AuditLog, LogFileError
from auditpy.auditd.startup import (
    DROPPING_RCVBUF,
    PAUSE_RECORDS,
    RCVBUF,
    TRICKLE_RECORDS,
    pause_records,
    trickle_below,
)
from auditpy.proto.netlink import AuditStatus, SignalInfo
from auditpy.system.children import ChildHandle, spawn_child
from auditpy.system.service import Signal

from .conftest import wait_for_async

SYSCALL = 1300
EOE = 1320
AUDIT_GET_REPLY = 1000  # a control reply on the event socket: never an event


def syscall(serial: int) -> tuple[int, bytes]:
    return SYSCALL, f"audit(1700000000.{serial % 1000:03d}:{serial}): arch=c000003e syscall=110 success=yes exit=1 a0=0 items=0 ppid=1 pid=2 auid=4294967295 uid=0 comm=\"t\" exe=\"/t\" key=(null)".encode()  # noqa: E501


def eoe(serial: int) -> tuple[int, bytes]:
    return EOE, f"audit(1700000000.{serial % 1000:03d}:{serial}): ".encode()


class FakeKernel:
    """The KernelLink a test controls: records are pushed in, requests are recorded with the
    thread that made them, and `gate` (when cleared) makes requests sleep as the kernel makes
    a sender sleep while its queue is over backlog_limit."""

    #: the kernel's backlog_wait_time when the daemon starts
    initial_wait = 60000

    def __init__(self, *, multicast: bool, rcvbuf: int) -> None:
        self.multicast = multicast
        self._ours, self._theirs = socket.socketpair()
        self._ours.setblocking(False)
        self.records: collections.deque[tuple[int, bytes]] = collections.deque()
        self.calls: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.pid = 0
        self.status = AuditStatus(enabled=1, backlog_limit=64, lost=3, backlog=7,
                                  backlog_wait_time=self.initial_wait)
        self.rcvbuf = rcvbuf
        self.sender = SignalInfo(auid=1000, pid=4242, context=None)
        self.closed = False

    def push(self, *records: tuple[int, bytes]) -> None:
        self.records.extend(records)
        self._theirs.send(b"x")

    def fileno(self) -> int:
        return self._ours.fileno()

    def recv_records(self, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        with contextlib.suppress(BlockingIOError):
            self._ours.recv(65536)
        out = []
        while self.records and len(out) < limit:
            out.append(self.records.popleft())
        if self.records:
            self._theirs.send(b"x")  # still readable, as a socket with more datagrams is
        return out, 0

    def recv_columns(self, limit: int) -> tuple[list[int], list[bytes], int]:
        records, enobufs = self.recv_records(limit)
        return [t for t, _p in records], [p for _t, p in records], enobufs

    def state(self) -> dict[str, str]:
        return {"kernel reads": "fake"}

    def state_counts(self) -> dict[str, int]:
        return {"truncated": 0, "rejected": 0}

    def _call(self, name: str) -> None:
        self.calls.append((name, threading.current_thread().name))
        self.gate.wait(30)

    def register(self, pid: int) -> None:
        self._call("register")
        self.pid = pid

    def unregister(self) -> None:
        self._call("unregister")
        self.pid = 0

    def get_status(self) -> AuditStatus:
        self._call("get_status")
        return structs.replace(self.status, pid=self.pid)

    def set_status(self, status: AuditStatus) -> None:
        self._call("set_status")

    def signal_info(self) -> SignalInfo | None:
        self._call("signal_info")
        return self.sender

    def set_rcvbuf(self, size: int) -> None:
        self.rcvbuf = size

    def close(self) -> None:
        self.closed = True
        self._ours.close()
        self._theirs.close()


class Harness:
    def __init__(self, root: Path, spawn: Callable[..., ChildHandle] | None = None,
                 **settings: object) -> None:
        self.root = root
        self.log = root / "log" / "audit.log"
        self.log.parent.mkdir(mode=0o700, exist_ok=True)
        (root / "etc" / "plugins.d").mkdir(parents=True, exist_ok=True)
        (root / "run").mkdir(exist_ok=True)
        self.settings: dict[str, object] = {
            "log_file": str(self.log), "log_format": "RAW", "flush": "NONE",
            "space_left": 2, "admin_space_left": 1, "priority_boost": 0,
            "plugin_dir": str(root / "etc" / "plugins.d"), **settings,
        }
        self.write_config()
        self.options = Options(config_dir=str(root / "etc"), run_dir=str(root / "run"),
                               base_dir=str(root), foreground=True)
        config, _ = daemon_module.load_config(self.options)
        self.kernels: list[FakeKernel] = []

        def open_kernel(*, multicast: bool, rcvbuf: int) -> FakeKernel:
            kernel = FakeKernel(multicast=multicast, rcvbuf=rcvbuf)
            self.kernels.append(kernel)
            return kernel

        self.daemon = Daemon(self.options, config, open_kernel=open_kernel,
                             spawn=spawn or spawn_child, handle_signals=False,
                             tune_process=False)

    @property
    def kernel(self) -> FakeKernel:
        return self.kernels[0]

    def write_config(self, **changes: object) -> None:
        self.settings.update(changes)
        path = self.root / "etc" / "auditd.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in self.settings.items()))
        os.chmod(path, 0o640)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def run_until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Run the daemon's loop until the predicate holds."""
        self.daemon.loop.run_until_complete(
            wait_for_async(predicate, timeout, getattr(predicate, "__qualname__", ""),
                           interval=0.005))

    def signal(self, signum: int) -> None:
        self.daemon.on_signal(Signal(signum))

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        return self.daemon.run()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    h.daemon.start()
    yield h
    if not h.daemon.loop.is_closed():
        h.stop()


def test_records_are_logged_once_eoe_never_and_control_replies_never(harness: Harness) -> None:
    harness.kernel.push(syscall(1), eoe(1), (AUDIT_GET_REPLY, b"\0" * 40), syscall(2), eoe(2))
    harness.run_until(lambda: sum("type=SYSCALL" in ln for ln in harness.lines()) == 2)
    lines = harness.lines()
    assert lines[0].startswith("type=DAEMON_START ")
    assert [ln.split(" ", 1)[0] for ln in lines[1:]] == ["type=SYSCALL", "type=SYSCALL"]
    assert harness.daemon.counters.received == 4  # two SYSCALL and two EOE records
    assert harness.kernel.pid == os.getpid()


def test_stop_unregisters_while_reading_and_ends_with_daemon_end(harness: Harness) -> None:
    harness.kernel.push(syscall(1), eoe(1))
    assert harness.stop() == 0
    names = [name for name, _thread in harness.kernel.calls]
    assert names[:2] == ["get_status", "register"] and "unregister" in names
    assert harness.lines()[-1].startswith("type=DAEMON_END ")
    assert "auid=1000" in harness.lines()[-1] and "pid=4242" in harness.lines()[-1]
    assert harness.kernel.closed


def test_a_stalled_kernel_request_never_stops_the_record_path(harness: Harness) -> None:
    """The kernel makes a sender sleep while its queue is over backlog_limit; a state report
    asks the kernel for its status. The request sleeps on its own thread while records go
    on being read and written (issue: a SIGCONT after a stall held every audited process for
    the whole backlog_wait_time)."""
    at_start = len(harness.kernel.calls)  # start-up registers and enables, blocking
    harness.kernel.gate.clear()
    harness.signal(signal.SIGCONT)
    harness.run_until(lambda: any(n == "get_status" for n, _ in harness.kernel.calls))
    for serial in range(100):
        harness.kernel.push(syscall(serial), eoe(serial))
    harness.run_until(lambda: sum("type=SYSCALL" in ln for ln in harness.lines()) == 100)
    state = harness.root / "run" / "auditd.state"
    assert not state.exists()
    harness.kernel.gate.set()
    harness.run_until(state.exists)
    text = state.read_text()
    assert "records received = 200" in text and "records lost by the kernel = 3" in text
    assert all(thread != threading.current_thread().name
               for _name, thread in harness.kernel.calls[at_start:])


def test_a_storm_of_signals_coalesces_and_sigterm_is_never_lost(harness: Harness) -> None:
    for _ in range(1500):
        harness.signal(signal.SIGHUP)
    harness.signal(signal.SIGTERM)
    assert harness.daemon.run() == 0
    lines = harness.lines()
    assert lines[-1].startswith("type=DAEMON_END ")
    reloads = sum("type=DAEMON_CONFIG" in ln for ln in lines)
    assert 1 <= reloads <= 2


def test_a_refused_reload_changes_nothing(harness: Harness, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """A new log_file that cannot be opened: the old file stays open and in force, records
    keep being logged to it, the failure is recorded, and SIGUSR2 does not try the refused
    path."""
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    harness.write_config(log_file=str(other / "audit.log"))
    real_open = AuditLog._open_checked

    def refuse(self: AuditLog, warnings: list[str]) -> int:
        if self.path.startswith(str(other)):
            raise LogFileError(f"Couldn't open log file {self.path} (refused by the test)")
        return real_open(self, warnings)

    monkeypatch.setattr(AuditLog, "_open_checked", refuse)
    harness.signal(signal.SIGHUP)
    harness.run_until(lambda: any("type=DAEMON_CONFIG" in ln for ln in harness.lines()))
    failed = [ln for ln in harness.lines() if "type=DAEMON_CONFIG" in ln]
    assert "res=failed" in failed[0] and "state=no-change" in failed[0]
    assert harness.daemon.config.log_file == str(harness.log)
    harness.signal(signal.SIGUSR2)
    harness.run_until(lambda: any("type=DAEMON_RESUME" in ln for ln in harness.lines()))
    harness.kernel.push(syscall(7), eoe(7))
    harness.run_until(lambda: any(":7): arch" in ln for ln in harness.lines()))
    assert not (other / "audit.log").exists()


def test_reload_applies_a_new_format(harness: Harness) -> None:
    harness.write_config(name_format="USER", name="pytest-node")
    harness.signal(signal.SIGHUP)
    harness.run_until(lambda: any("type=DAEMON_CONFIG" in ln for ln in harness.lines()))
    assert "res=success" in next(ln for ln in harness.lines() if "DAEMON_CONFIG" in ln)
    harness.kernel.push(syscall(9), eoe(9))
    harness.run_until(lambda: any(":9): arch" in ln for ln in harness.lines()))
    assert next(ln for ln in harness.lines() if ":9): arch" in ln).startswith(
        "node=pytest-node type=SYSCALL ")


def test_alerts_are_logged_as_critical(harness: Harness, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    """One map from syslog priorities to log levels: ALERT was ERROR in the daemon and
    CRITICAL in the log module."""
    with caplog.at_level(logging.DEBUG, logger="auditpy"):
        harness.daemon._notify(syslog.LOG_ALERT, "disk is full")
        harness.daemon._notify(syslog.LOG_NOTICE, "rotating")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {"disk is full": logging.CRITICAL, "rotating": logging.INFO}


def test_disk_error_runs_its_action_and_counts_what_was_not_written(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = harness.daemon.log_file
    assert log_file is not None

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(daemon_module.AuditLog, "write", AuditLog.write)
    monkeypatch.setattr(os, "write", failing_write)
    harness.kernel.push(syscall(1), eoe(1), syscall(2), eoe(2))
    harness.run_until(lambda: harness.daemon.counters.received == 4)
    monkeypatch.undo()
    assert harness.daemon.counters.suspended_dropped == 2  # the two SYSCALL lines
    assert harness.daemon._write_failing


class SpawnRecorder:
    """Starts a shell that copies its stdin (the dispatcher stream) to a file, in place of
    pyaudispd, and remembers the argv it was asked for."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], *, stdin_fd: int | None = None,
                 env: Mapping[str, str] | None = None, new_session: bool = False,
                 blocked_signals: Iterable[int] = ()) -> ChildHandle:
        self.argvs.append(list(argv))
        return spawn_child(["/bin/sh", "-c", f"exec cat > {self.out}"], stdin_fd=stdin_fd)


def test_records_that_arrive_before_the_dispatcher_starts_reach_it(tmp_path: Path) -> None:
    recorder = SpawnRecorder(tmp_path / "dispatched")
    h = Harness(tmp_path, spawn=recorder)
    plugin = tmp_path / "etc" / "plugins.d" / "p.conf"
    plugin.write_text("active = yes\npath = /bin/cat\n")
    os.chmod(plugin, 0o640)
    h.daemon.start()
    h.kernel.push(syscall(1), eoe(1))  # possibly before the plugin directory is read
    h.run_until(lambda: recorder.out.exists() and b":1): arch" in recorder.out.read_bytes())
    assert recorder.argvs[0][1:3] == ["-m", "auditpy.audispd"]
    h.stop()


def test_records_read_are_written_before_an_overrun_is_said(harness: Harness) -> None:
    """What the daemon has read dies with it if it is killed: it is written before anything
    that may take time in the same wakeup, such as saying (syslog) that the socket overran."""
    kernel = harness.kernel
    real_recv = kernel.recv_records
    overruns = iter([3])

    def recv_with_overrun(limit: int) -> tuple[list[tuple[int, bytes]], int]:
        records, _ = real_recv(limit)
        return records, next(overruns, 0) if records else 0

    kernel.recv_records = recv_with_overrun  # type: ignore[method-assign]
    on_disk_when_said: list[int] = []

    class Witness(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "overrun" in record.getMessage():
                on_disk_when_said.append(
                    sum("type=SYSCALL" in ln for ln in harness.lines()))

    witness = Witness()
    logging.getLogger("auditpy").addHandler(witness)
    try:
        kernel.push(*(r for serial in range(50) for r in (syscall(serial), eoe(serial))))
        harness.run_until(lambda: on_disk_when_said)
    finally:
        logging.getLogger("auditpy").removeHandler(witness)
    assert on_disk_when_said == [50]
    assert harness.daemon.counters.enobufs == 3


def test_start_up_leaves_out_what_the_configuration_does_not_use() -> None:
    """A restarted daemon registers sooner when it imports only what it needs: the network
    listener, the metrics endpoint and the ENRICHED tables are loaded when used."""
    code = ("import sys, auditpy.auditd.cli, auditpy.auditd.daemon; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    for module in ("auditpy.auditd.listener", "auditpy.auditd.metrics",
                   "auditpy.auditd.exposition", "auditpy.proto.enrich",
                   "auditpy.config.plugins"):
        assert module not in loaded


def test_a_daemon_registered_early_keeps_that_registration_and_log(tmp_path: Path) -> None:
    """cli registers before importing the daemon's loop (startup.register_early): start()
    takes that kernel link and log over, and registers no second time."""
    from auditpy.auditd.startup import register_early

    h = Harness(tmp_path)
    config = h.daemon.config
    kernels: list[FakeKernel] = []

    def open_kernel(*, multicast: bool, rcvbuf: int) -> FakeKernel:
        kernels.append(FakeKernel(multicast=multicast, rcvbuf=rcvbuf))
        return kernels[-1]

    registered = register_early(config, open_kernel=open_kernel)  # type: ignore[arg-type]
    assert registered is not None and kernels[0].pid == os.getpid()
    h.daemon.loop.close()
    daemon = Daemon(h.options, config, open_kernel=open_kernel, handle_signals=False,
                    tune_process=False, registered=registered)
    h.daemon = daemon
    daemon.start()
    assert len(kernels) == 1 and daemon.log_file is registered.log_file
    assert [n for n, _t in kernels[0].calls].count("register") == 1
    kernels[0].push(syscall(1), eoe(1))
    h.run_until(lambda: any("type=SYSCALL" in ln for ln in h.lines()))
    assert h.stop() == 0
    assert kernels[0].pid == 0 and kernels[0].closed


def test_an_early_registration_that_fails_is_undone(tmp_path: Path) -> None:
    """Refused (another daemon is registered): the kernel link and the log are closed again;
    start() then goes the ordinary way, and says why the registration failed."""
    from auditpy.auditd.startup import register_early

    h = Harness(tmp_path)
    opened: list[FakeKernel] = []
    logs: list[AuditLog] = []
    real_open = AuditLog.open

    def remember(self: AuditLog) -> list[str]:
        logs.append(self)
        return real_open(self)

    class Refusing(FakeKernel):
        def register(self, pid: int) -> None:
            raise OSError(17, "another audit daemon is registered")

    def open_kernel(*, multicast: bool, rcvbuf: int) -> FakeKernel:
        opened.append(Refusing(multicast=multicast, rcvbuf=rcvbuf))
        return opened[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AuditLog, "open", remember)
        assert register_early(h.daemon.config, open_kernel=open_kernel) is None  # type: ignore[arg-type]
    assert opened[0].closed and logs and not logs[0].is_open
    h.daemon.loop.close()


def test_the_socket_buffer_follows_whether_the_kernel_waits_or_drops(harness: Harness) -> None:
    """backlog_wait_time > 0: the kernel keeps what it cannot hand over, and a small buffer
    loses little in a crash; 0: it drops what neither its backlog nor our buffer holds, so
    the buffer grows to absorb bursts; and shrinks again when the wait comes back."""
    kernel = harness.kernel
    assert kernel.rcvbuf == RCVBUF

    def report_with(wait: int) -> None:
        kernel.status = structs.replace(kernel.status, backlog_wait_time=wait)
        state = harness.root / "run" / "auditd.state"
        state.unlink(missing_ok=True)
        harness.signal(signal.SIGCONT)  # the state report asks the kernel for its status
        harness.run_until(state.exists)

    report_with(0)
    assert kernel.rcvbuf == DROPPING_RCVBUF
    report_with(15000)
    assert kernel.rcvbuf == RCVBUF


def test_a_read_is_a_trickle_only_below_most_of_what_the_buffer_holds() -> None:
    """The kernel wakes a kauditd that found the socket full only once it is empty: a read
    that found the buffer nearly full is never followed by a pause, and a pause waits for
    fewer records than that, so that the read after it paces the next."""
    assert trickle_below(RCVBUF) == 99  # the 64 KiB buffer holds about 130 records
    assert pause_records(RCVBUF) == PAUSE_RECORDS
    assert trickle_below(DROPPING_RCVBUF) == TRICKLE_RECORDS
    assert trickle_below(1) == pause_records(1) == 1
    sizes = [1 << n for n in range(30)]
    assert [trickle_below(s) for s in sizes] == sorted(trickle_below(s) for s in sizes)
    assert all(pause_records(s) < trickle_below(s) for s in sizes if trickle_below(s) > 1)


def test_reads_pause_for_a_trickle_and_not_for_a_full_buffer(harness: Harness) -> None:
    """With the waiting kernel's small buffer, a read of 110 records (most of what it
    holds) goes straight back to the socket; a read of 5 pauses; with the large buffer of
    a dropping kernel, 110 records are a trickle."""
    daemon = harness.daemon
    harness.run_until(lambda: daemon._reading)

    def read(count: int) -> float:
        harness.kernel.push(*[syscall(n) for n in range(count)])
        return daemon._read_batch()

    assert read(110) == 0.0
    assert 0 < read(5) <= COALESCE_SECONDS
    daemon._buffer_size(DROPPING_RCVBUF)
    assert 0 < read(110) <= COALESCE_SECONDS


def test_a_kernel_that_drops_gets_the_large_buffer_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst may come as soon as the daemon is registered: the buffer is sized before the
    first read, not at the first poll."""
    monkeypatch.setattr(FakeKernel, "initial_wait", 0)
    h = Harness(tmp_path)
    h.daemon.start()
    try:
        assert h.kernel.rcvbuf == DROPPING_RCVBUF
    finally:
        h.stop()


@pytest.mark.parametrize(("enable", "enabled", "calls"), [
    ("enable", 1, ["get_status", "register"]),
    ("enable", 0, ["get_status", "register", "set_status"]),
    ("disable", 1, ["get_status", "set_status", "register"]),
    ("enable", 2, ["get_status", "register"]),
    ("nochange", 0, ["get_status", "register"]),
])
def test_start_makes_no_request_that_could_sleep_once_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enable: str, enabled: int,
    calls: list[str]
) -> None:
    """Once registered the daemon empties the kernel's queue, and the kernel makes a sender
    sleep while that queue is over backlog_limit: a request before the loop reads could
    wait for itself for backlog_wait_time. So start reads the status and disables before
    registering, and only enables after (while audit was disabled nothing was queued)."""
    h = Harness(tmp_path)
    h.daemon.options = structs.replace(h.options, enable=enable)
    original = FakeKernel.__init__

    def init(self: FakeKernel, *, multicast: bool, rcvbuf: int) -> None:
        original(self, multicast=multicast, rcvbuf=rcvbuf)
        self.status = structs.replace(self.status, enabled=enabled)
    monkeypatch.setattr(FakeKernel, "__init__", init)
    h.daemon.start()
    try:
        assert [name for name, _thread in h.kernel.calls] == calls
    finally:
        h.stop()


def test_enabled_wanted() -> None:
    from auditpy.auditd.startup import enabled_wanted

    assert [enabled_wanted(e, c) for e in ("enable", "disable", "nochange") for c in (0, 1, 2)] \
        == [1, None, None, None, 0, None, None, None, None]
