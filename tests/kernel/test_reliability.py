"""pyauditd on an operator's worst day: signal storms, signals during start-up, a stall
followed by a state report, a refused reload. Each of these broke an earlier pyauditd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditpy.proto.netlink import (
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    AuditStatus,
)

from ..conftest import wait_for
from .conftest import (
    DaemonDir,
    RunningDaemon,
    auditctl,
    get_status,
    set_status,
    start_pyauditd,
)


def test_a_storm_of_signals_never_loses_sigterm(pyauditd: RunningDaemon) -> None:
    """1,500 SIGHUPs back to back, then SIGTERM: the daemon stops at once, cleanly, with no
    traceback (asyncio's wake-up socket used to fill, dropping SIGTERM or deadlocking)."""
    for _ in range(1500):
        os.kill(pyauditd.pid, signal.SIGHUP)
    os.kill(pyauditd.pid, signal.SIGTERM)
    try:
        code = pyauditd.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("pyauditd did not stop within 15 s of SIGTERM after a signal storm")
    assert code == 0
    err = pyauditd.stderr()
    assert "Traceback" not in err and "Exception ignored" not in err
    assert pyauditd.dir.lines()[-1].startswith("type=DAEMON_END ")
    wait_for(lambda: get_status().pid != pyauditd.pid, 5, "pyauditd unregistered")


def started(d: DaemonDir) -> bool:
    """DAEMON_START is in the log (SIGUSR1 may have rotated it into audit.log.1)."""
    return any("type=DAEMON_START" in p.read_text() for p in d.log.parent.glob("audit.log*"))


def wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def blocked(pid: int, signum: int) -> bool:
    """Whether `pid` has `signum` blocked (the SigBlk mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigBlk:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_signals_during_start_up_do_not_kill_the_daemon(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, signum: int
) -> None:
    """Signals sent from the first instruction of `main` (when the process shows them blocked)
    until it has registered: the daemon must come up and handle them (it used to die of the
    default action: its handlers came after registration and the dispatcher's start)."""
    for _attempt in range(3):
        with open(daemon_dir.root / "daemon.err", "ab") as errors:
            proc = subprocess.Popen(
                [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
                 str(daemon_dir.conf_dir), "--run-dir", str(daemon_dir.run_dir)],
                stderr=errors,
            )
        try:
            # No pause between looks: the window from blocking to registering is short.
            wait_for(lambda p=proc: blocked(p.pid, signum) or p.poll() is not None, 20,
                     "pyauditd to block the signal", interval=0)

            def registered_while_signalled(p: subprocess.Popen[bytes] = proc) -> bool:
                if get_status().pid == p.pid or p.poll() is not None:
                    return True
                os.kill(p.pid, signum)
                return False

            wait_for(registered_while_signalled, 20, "pyauditd to register", interval=0)
            assert proc.poll() is None, f"pyauditd died of {signal.Signals(signum).name}"
            # SIGUSR1 may have rotated DAEMON_START into audit.log.1
            wait_for(lambda: started(daemon_dir))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, (daemon_dir.root / "daemon.err").read_text()
        wait_for(lambda pid=proc.pid: get_status().pid != pid, 5, "pyauditd unregistered")


def test_a_state_report_after_a_stall_holds_nobody(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, load_generator: Path
) -> None:
    """Stop the daemon while audited processes run, until the kernel's queue is over
    backlog_limit; then SIGCONT, which also asks for a state report. The report's kernel
    request sleeps up to backlog_wait_time (60 s here) while the queue is over the limit;
    made from the thread that reads records, it kept everybody waiting that long."""
    set_status(AuditStatus(mask=STATUS_BACKLOG_LIMIT | STATUS_BACKLOG_WAIT_TIME,
                           backlog_limit=64, backlog_wait_time=15000))
    daemon = start_pyauditd(daemon_dir)
    rule = ["-a", "always,exit", "-F", "arch=b64", "-S", "getppid", "-F",
            f"exe={load_generator}", "-k", "pytest-stall"]
    auditctl(*rule)
    load: subprocess.Popen[bytes] | None = None
    try:
        daemon.signal(signal.SIGSTOP)
        load = subprocess.Popen([str(load_generator), "20000"])
        # Held by the kernel once its queue is full. Watched through /proc, not asked of
        # the kernel: a request from the test would compete for the same wake-ups.
        wait_for(lambda: wchan(load.pid) == "audit_log_start", 20,
                 "the audited process held by the kernel")
        started = time.monotonic()
        daemon.signal(signal.SIGCONT)
        load.wait(50)
        took = time.monotonic() - started
        assert took < 20, f"the audited process was held {took:.1f} s after SIGCONT"
        wait_for(lambda: (daemon.dir.run_dir / "auditd.state").exists(), 30, "a state report")
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        auditctl("-d", *rule[1:], check=False)
        daemon.signal(signal.SIGCONT)
        daemon.stop()


def test_a_refused_reload_keeps_logging(
    pyauditd: RunningDaemon, daemon_dir: DaemonDir, tmp_path: Path
) -> None:
    """A new log_file that passes the checks but cannot be opened (its directory is made
    unusable between the check and the open is hard to arrange; a log_file whose directory
    is a file is refused by the check, and must change nothing either)."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    daemon_dir.write_config(log_file=str(blocked / "audit.log"))
    pyauditd.signal(signal.SIGHUP)
    pyauditd.wait_for_line("type=DAEMON_CONFIG")
    config_line = next(ln for ln in daemon_dir.lines() if "type=DAEMON_CONFIG" in ln)
    assert "res=failed" in config_line
    for i in range(20):
        auditctl("-m", f"pytest-after-refusal-{i}")
    pyauditd.wait_for_line("pytest-after-refusal-19")
    # the report's line for the log file, once the report is written whole
    assert f"log_file = {daemon_dir.log}" in pyauditd.state_report("  log_file = ")
