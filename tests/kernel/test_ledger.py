"""The loss ledger against the real kernel: a full disk, and a multicast reader too slow to
keep up. What the ledger says is lost equals what is missing from the log."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..conftest import need
from .conftest import DaemonDir, auditctl, start_pyauditd, wait_for


def state(run_dir: Path, daemon_pid: int) -> dict[str, float]:
    """The ledger lines of a fresh state report, as {series: value}."""
    path = run_dir / "auditd.state"
    path.unlink(missing_ok=True)
    subprocess.run(["kill", "-CONT", str(daemon_pid)], check=True)
    wait_for(path.exists, 15, "a state report")
    figures = {}
    for line in path.read_text().splitlines():
        match = re.match(r"  (auditpy_\S+) (\d+)$", line)
        if match:
            figures[match.group(1)] = float(match.group(2))
    return figures


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    need("mount")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def rule(load_generator: Path, key: str) -> list[str]:
    return ["-a", "always,exit", "-F", "arch=b64", "-S", "getppid",
            "-F", f"exe={load_generator}", "-k", key]


def test_a_full_disk_counts_exactly_what_is_missing(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, tiny_fs: Path, load_generator: Path
) -> None:
    log_dir = tiny_fs / "log"
    log_dir.mkdir(mode=0o700)
    daemon_dir.write_config(log_file=str(log_dir / "audit.log"), space_left="2",
                            admin_space_left="1", space_left_action="IGNORE",
                            admin_space_left_action="IGNORE", disk_full_action="IGNORE",
                            flush="NONE")
    daemon = start_pyauditd(daemon_dir, log_path=log_dir / "audit.log")
    args = rule(load_generator, "pytest-ledger-full")
    auditctl(*args)
    events = 3000
    try:
        subprocess.run([str(load_generator), str(events)], check=True)
        figures: dict[str, float] = {}

        def settled() -> bool:
            figures.update(state(daemon_dir.run_dir, daemon.pid))
            return figures.get("auditpy_records_received_total", 0) >= 3 * events
        wait_for(settled, 30, "every record received")
    finally:
        auditctl("-d", *args[1:], check=False)
        daemon.stop()
    log = (log_dir / "audit.log").read_bytes().decode(errors="replace")
    assert log.endswith("\n")  # whole records only
    on_disk = {m for m in re.findall(r"type=SYSCALL msg=audit\([\d.]+:(\d+)\).*pytest-ledger",
                                     log)}
    missing_events = events - len(on_disk)
    assert missing_events > 0, "the disk never filled"
    not_written = figures['auditpy_records_lost_total{cause="log_disk_full"}']
    kernel_lines = sum(1 for ln in log.splitlines() if not ln.startswith("type=DAEMON_"))
    # The identity, exactly: what was received is on disk, counted as not written, or EOE.
    assert (figures["auditpy_records_received_total"] - figures["auditpy_eoe_records_total"]
            - not_written) <= kernel_lines  # lines written after the last report may follow
    # Each missing event is its SYSCALL and PROCTITLE records (its EOE is never logged); a
    # few more records (the rule's CONFIG_CHANGE events) may be missing as well.
    assert 2 * missing_events <= not_written <= 2 * missing_events + 12, (
        missing_events, not_written)


def test_a_slow_multicast_reader_reports_its_gaps(
    kernel_state: AuditStatus, tmp_path: Path, load_generator: Path
) -> None:
    """A multicast reader stopped while events are made loses what its socket cannot hold;
    the kernel counts none of it. The serial gaps it reports equal the events missing from
    its log: serials, between the first and the last it read, of which no EOE (nor a record
    of a one-record event) arrived."""
    registered = start_pyauditd(daemon_dir_at(tmp_path / "reg"))
    d = daemon_dir_at(tmp_path / "mc", kernel_link="multicast")
    reader = subprocess.Popen(
        [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
         str(d.conf_dir), "--run-dir", str(d.run_dir)], stderr=subprocess.DEVNULL)
    args = rule(load_generator, "pytest-ledger-mc")
    figures: dict[str, float] = {}
    try:
        wait_for(lambda: any("type=DAEMON_START" in ln for ln in d.lines()), 20, "the reader")
        auditctl(*args)
        reader.send_signal(signal.SIGSTOP)
        subprocess.run([str(load_generator), "120000"], check=True)
        reader.send_signal(signal.SIGCONT)
        previous = [-1.0]

        def settled() -> bool:
            figures.update(state(d.run_dir, reader.pid))
            now = figures.get("auditpy_records_received_total", 0)
            done = now == previous[0]
            previous[0] = now
            return done
        wait_for(settled, 60, "the reader to drain its socket")
        # More events, none lost now, carry the newest serial past every gap's horizon.
        subprocess.run([str(load_generator), "3000"], check=True)
        previous[0] = -1.0
        wait_for(settled, 60, "the reader to read everything")
    finally:
        auditctl("-d", *args[1:], check=False)
        reader.send_signal(signal.SIGCONT)
        reader.terminate()
        reader.wait(20)
        registered.stop()
    by_serial: dict[int, set[str]] = {}
    for line in d.lines():
        match = re.match(r"type=(\S+) msg=audit\([\d.]+:(\d+)\)", line)
        if match and not match.group(1).startswith("DAEMON_"):
            by_serial.setdefault(int(match.group(2)), set()).add(match.group(1))
    first, last = min(by_serial), max(by_serial)
    missing = sum(1 for s in range(first, last) if s not in by_serial)
    # Where the socket filled up, an event can have lost some of its records (its EOE
    # among them, which is what the watch reads) and kept others.
    partial = sum(1 for types in by_serial.values()
                  if ("SYSCALL" in types and "PROCTITLE" not in types)
                  or ("PROCTITLE" in types and "SYSCALL" not in types))
    gaps = figures["auditpy_serial_gaps_total"]
    assert missing > 1000, "the stopped reader lost nothing: its socket held everything"
    assert missing <= gaps <= missing + partial + 2, (missing, partial, gaps)
    assert figures['auditpy_records_lost_total{cause="serial_gap"}'] == gaps


def daemon_dir_at(root: Path, **settings: str) -> DaemonDir:
    d = DaemonDir(root)
    d.root.mkdir()
    for sub in (d.conf_dir, d.conf_dir / "plugins.d", d.log.parent, d.run_dir):
        sub.mkdir()
    d.write_config(flush="NONE", **settings)
    return d
