"""pyauditd against the real kernel: registration, records in the log, signals, rotation."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..conftest import need, wait_for
from .conftest import (
    PYAUDITD,
    DaemonDir,
    RunningDaemon,
    auditctl,
    get_status,
    start_pyauditd,
)


def send_messages(prefix: str, count: int) -> list[str]:
    texts = [f"{prefix}-{i}" for i in range(count)]
    for text in texts:
        auditctl("-m", text)
    return texts


def test_registers_and_a_second_daemon_names_the_first(
    pyauditd: RunningDaemon, tmp_path: Path, daemon_dir: DaemonDir
) -> None:
    assert get_status().pid == pyauditd.pid
    other = DaemonDir(tmp_path / "other")
    other.root.mkdir()
    for sub in (other.conf_dir, other.conf_dir / "plugins.d", other.log.parent, other.run_dir):
        sub.mkdir()
    other.write_config()
    proc = subprocess.run(
        [*PYAUDITD, "-n", "-s", "nochange", "-c", str(other.conf_dir),
         "--run-dir", str(other.run_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    assert f"pid {pyauditd.pid}" in proc.stderr
    assert get_status().pid == pyauditd.pid
    abort = other.lines()[-1]
    assert abort.startswith("type=DAEMON_ABORT ") and "op=set-pid" in abort
    assert abort.endswith("res=failed")


def test_user_messages_land_exactly_once(pyauditd: RunningDaemon) -> None:
    texts = send_messages("pytest-once", 40)
    pyauditd.wait_for_line("pytest-once-39")
    lines = [line for line in pyauditd.dir.lines() if "pytest-once-" in line]
    found = [line.split("text=", 1)[1].split(" ", 1)[0] for line in lines]
    assert sorted(found) == sorted(texts)
    assert all(line.startswith("type=USER msg=audit(") for line in lines)


def test_rule_events_all_arrive_once(pyauditd: RunningDaemon, load_generator: Path) -> None:
    rule = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={load_generator}",
            "-k", "pytest-load"]
    auditctl("-a", *rule)
    try:
        subprocess.run([str(load_generator), "3000"], check=True)
    finally:
        auditctl("-d", *rule)

    def syscalls() -> list[str]:
        return [ln for ln in pyauditd.dir.lines() if ln.startswith("type=SYSCALL")
                and 'key="pytest-load"' in ln]

    wait_for(lambda: len(syscalls()) >= 3000, 20, "3000 SYSCALL records")
    lines = syscalls()
    stamps = [ln.split("msg=audit(", 1)[1].split(")", 1)[0] for ln in lines]
    assert len(stamps) == 3000 == len(set(stamps))
    proctitles = {ln.split("msg=audit(", 1)[1].split(")", 1)[0]
                  for ln in pyauditd.dir.lines() if ln.startswith("type=PROCTITLE")}
    assert set(stamps) <= proctitles
    assert not any(ln.startswith("type=EOE") for ln in pyauditd.dir.lines())


def test_rotation_on_sigusr1_and_num_logs(pyauditd: RunningDaemon) -> None:
    d = pyauditd.dir
    for round_ in range(6):
        auditctl("-m", f"pytest-rot-{round_}")
        pyauditd.wait_for_line(f"pytest-rot-{round_}")
        pyauditd.signal(signal.SIGUSR1)
        marker = f"pytest-rot-{round_}"

        def rotated(marker: str = marker) -> bool:
            lines = d.lines()
            return bool(lines) and "DAEMON_ROTATE" in lines[0] and marker not in lines[-1]

        wait_for(rotated, 5, f"rotation {round_}")
        first = d.lines()[0]
        assert first.startswith("type=DAEMON_ROTATE ") and "op=rotate-logs" in first
        assert "res=success" in first and f"pid={os.getpid()}" in first
    names = sorted(p.name for p in d.log.parent.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]  # num_logs = 4
    assert (d.log.parent / "audit.log.1").stat().st_mode & 0o777 == 0o400
    assert d.log.stat().st_mode & 0o777 == 0o600
    assert any("pytest-rot-5" in ln for ln in d.lines(d.log.parent / "audit.log.1"))


def test_sighup_applies_a_good_config_and_keeps_the_old_on_a_bad_one(
    pyauditd: RunningDaemon,
) -> None:
    d = pyauditd.dir
    d.write_config(log_format="ENRICHED")
    pyauditd.signal(signal.SIGHUP)
    line = pyauditd.wait_for_line("type=DAEMON_CONFIG")
    assert "op=reconfigure state=changed" in line and "res=success" in line
    auditctl("-m", "pytest-enriched")
    assert "\x1d" in pyauditd.wait_for_line("pytest-enriched")

    d.write_config(log_format="ENRICHED", extra="no_such_keyword = 1\n")
    pyauditd.signal(signal.SIGHUP)
    failed = pyauditd.wait_for_line("state=no-change")
    assert failed.startswith("type=DAEMON_CONFIG ") and "res=failed" in failed
    auditctl("-m", "pytest-still-running")
    assert "\x1d" in pyauditd.wait_for_line("pytest-still-running")
    assert pyauditd.proc.poll() is None


def test_sigcont_writes_a_state_report(pyauditd: RunningDaemon) -> None:
    send_messages("pytest-state", 5)
    pyauditd.wait_for_line("pytest-state-4")
    state = pyauditd.dir.run_dir / "auditd.state"
    text = pyauditd.state_report(f"  log_file = {pyauditd.dir.log}")
    report = dict(ln.split(" = ", 1) for ln in text.splitlines() if " = " in ln and ln[0] != " ")
    assert int(report["records received"]) >= 5
    assert int(report["records written"]) >= 6
    assert report["logging suspended"] == "no"
    assert "records lost by the kernel" in report
    assert report["kernel reads"] == "recvmmsg, up to 128 records per call"
    assert report["datagrams not from the kernel (dropped)"] == "0"
    assert report["records longer than 8970 bytes (cut)"] == "0"
    assert f"  log_file = {pyauditd.dir.log}" in text
    assert (state.stat().st_mode & 0o777) == 0o640


def test_sigterm_writes_daemon_end_unregisters_and_exits_0(pyauditd: RunningDaemon) -> None:
    pid_file = pyauditd.dir.run_dir / "auditd.pid"
    assert pid_file.read_text() == f"{pyauditd.pid}\n"
    assert pyauditd.stop() == 0
    last = pyauditd.dir.lines()[-1]
    assert last.startswith("type=DAEMON_END ") and "op=terminate" in last
    assert f"pid={os.getpid()}" in last and last.endswith("res=success")
    assert get_status().pid == 0
    assert not pid_file.exists()


def test_read_only_multicast_mode_runs_beside_the_registered_daemon(
    pyauditd: RunningDaemon, tmp_path: Path
) -> None:
    other = DaemonDir(tmp_path / "reader")
    other.root.mkdir()
    for sub in (other.conf_dir, other.conf_dir / "plugins.d", other.log.parent, other.run_dir):
        sub.mkdir()
    other.write_config(kernel_link="multicast")
    proc = subprocess.Popen(
        [*PYAUDITD, "-n", "-s", "nochange", "-c", str(other.conf_dir),
         "--run-dir", str(other.run_dir)], stderr=subprocess.DEVNULL,
    )
    reader = RunningDaemon(other, proc)
    try:
        reader.wait_for_line("DAEMON_START")
        send_messages("pytest-multicast", 5)
        assert reader.wait_for_line("pytest-multicast-4").startswith("type=USER ")
        pyauditd.wait_for_line("pytest-multicast-4")
        assert get_status().pid == pyauditd.pid
    finally:
        assert reader.stop() == 0


def test_bad_config_stops_startup_with_file_and_line(
    kernel_state: AuditStatus, daemon_dir: DaemonDir
) -> None:
    daemon_dir.write_config(flush="SOMETIMES")
    proc = subprocess.run(
        [*PYAUDITD, "-n", "-c", str(daemon_dir.conf_dir), "--run-dir", str(daemon_dir.run_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 6
    assert f"{daemon_dir.conf_dir}/auditd.conf:" in proc.stderr and "flush" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert get_status().pid == 0


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    need("mount")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_suspend_on_admin_space_left_and_resume_on_sigusr2(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, small_fs: Path
) -> None:
    d = daemon_dir
    log_dir = small_fs / "log"
    log_dir.mkdir(mode=0o700)
    d.write_config(log_file=str(log_dir / "audit.log"), space_left="6", admin_space_left="4",
                   space_left_action="SYSLOG", admin_space_left_action="SUSPEND")
    ballast = small_fs / "ballast"
    log_path = log_dir / "audit.log"
    daemon = start_pyauditd(d, log_path=log_path)
    try:
        ballast.write_bytes(b"\0" * (5 << 20))  # leaves under 4 MiB free
        state = d.run_dir / "auditd.state"

        def suspended() -> bool:
            auditctl("-m", "pytest-fill")
            daemon.signal(signal.SIGCONT)
            return state.exists() and "logging suspended = yes" in state.read_text()

        wait_for(suspended, 20, "the daemon to suspend", interval=0.5)

        def not_written() -> int:
            key = "records not written (suspended or disk error) = "
            return int(daemon.state_report(key).split(key)[1].split("\n")[0])

        before = not_written()
        auditctl("-m", "pytest-while-suspended")
        wait_for(lambda: not_written() > before, 5)
        ballast.unlink()
        daemon.signal(signal.SIGUSR2)
        daemon.wait_for_line("type=DAEMON_RESUME", path=log_path)
        auditctl("-m", "pytest-after-resume")
        daemon.wait_for_line("pytest-after-resume", path=log_path)
        assert not any("pytest-while-suspended" in ln for ln in d.lines(log_path))
    finally:
        assert daemon.stop() == 0


def test_max_log_file_rotates_by_size(kernel_state: AuditStatus, daemon_dir: DaemonDir) -> None:
    daemon_dir.write_config(max_log_file="1", max_log_file_action="ROTATE", num_logs="3")
    daemon = start_pyauditd(daemon_dir)
    try:
        filler = "x" * 900
        for i in range(1400):  # about 1.4 MiB of USER records
            auditctl("-m", f"pytest-size-{i} {filler}")
        daemon.wait_for_line("pytest-size-1399")
        logs = sorted(p.name for p in daemon_dir.log.parent.iterdir())
        assert logs == ["audit.log", "audit.log.1"]
        assert (daemon_dir.log.parent / "audit.log.1").stat().st_size >= 1 << 20
        texts = [ln for p in (daemon_dir.log, daemon_dir.log.parent / "audit.log.1")
                 for ln in daemon_dir.lines(p) if "pytest-size-" in ln]
        assert len(texts) == 1400
    finally:
        assert daemon.stop() == 0


def test_daemonizes_and_reports_success_through_its_exit_status(
    kernel_state: AuditStatus, daemon_dir: DaemonDir
) -> None:
    proc = subprocess.run(
        [*PYAUDITD, "-s", "nochange", "-c", str(daemon_dir.conf_dir),
         "--run-dir", str(daemon_dir.run_dir)], capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    pid = int((daemon_dir.run_dir / "auditd.pid").read_text())
    try:
        assert get_status().pid == pid
        assert os.getsid(pid) == pid  # a session of its own, detached from ours
        auditctl("-m", "pytest-detached")
        wait_for(lambda: any("pytest-detached" in ln for ln in daemon_dir.lines()), 10)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: get_status().pid == 0, 10)
    wait_for(lambda: not (daemon_dir.run_dir / "auditd.pid").exists(), 5)
