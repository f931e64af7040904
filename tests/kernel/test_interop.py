"""Debian's ausearch and aureport read pyauditd's log and answer as for the C auditd's log
of the same workload."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..conftest import needs, wait_for
from .conftest import DaemonDir, RunningDaemon, auditctl, get_status, start_pyauditd

C_AUDITD = "/sbin/auditd"


def start_c_auditd(d: DaemonDir) -> RunningDaemon:
    with open(d.root / "daemon.err", "ab") as errors:
        proc = subprocess.Popen([C_AUDITD, "-n", "-s", "nochange", "-c", str(d.conf_dir)],
                                stderr=errors)
    running = RunningDaemon(d, proc)
    try:
        wait_for(lambda: get_status().pid == proc.pid or proc.poll() is not None,
                 what="the C auditd registered with the kernel", context=running.stderr)
        if proc.poll() is not None:
            pytest.fail(f"the C auditd exited: {running.stderr()}")
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture
def workload_tools(tmp_path: Path, load_generator: Path) -> Iterator[tuple[Path, Path, Path]]:
    true_copy = tmp_path / "pytest-true"
    shutil.copy("/bin/true", true_copy)
    watched = tmp_path / "watched"
    watched.mkdir()
    yield load_generator, true_copy, watched


def run_workload(tag: str, tools: tuple[Path, Path, Path]) -> None:
    load_generator, true_copy, watched = tools
    rules = [
        ["-a", "always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={load_generator}",
         "-k", "pytest-cmp-load"],
        ["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-F", f"exe={true_copy}",
         "-k", "pytest-cmp-exec"],
        ["-w", str(watched), "-p", "wa", "-k", "pytest-cmp-watch"],
    ]
    for rule in rules:
        auditctl(*rule)
    try:
        for i in range(10):
            auditctl("-m", f"pytest-cmp-msg-{i}")
        subprocess.run([str(load_generator), "300"], check=True)
        for _ in range(20):
            subprocess.run([str(true_copy), "an arg", "x"], check=True)
        for i in range(5):
            (watched / f"{tag}-{i}").write_text("x")
            (watched / f"{tag}-{i}").unlink()
    finally:
        for rule in rules:
            auditctl("-W" if rule[0] == "-w" else "-d", *rule[1:], check=False)


def without_own_events(log: Path, daemon_pid: int) -> None:
    """Drop the events of the daemon's own registration.

    They differ by nature (the daemon's exe), and the C auditd logs only half of its own:
    it swallows the first message after registering (meant to be the ack), which is the
    kernel's `op=set audit_pid=` record; pyauditd keeps it.
    """
    lines = log.read_bytes().split(b"\n")
    own = (f" pid={daemon_pid} ".encode(), f"op=set audit_pid={daemon_pid} ".encode())
    stamps = {ln.split(b"msg=audit(", 1)[1].split(b")", 1)[0]
              for ln in lines if any(mark in ln for mark in own) and b"msg=audit(" in ln}
    kept = [ln for ln in lines
            if b"msg=audit(" not in ln or ln.split(b"msg=audit(", 1)[1].split(b")", 1)[0]
            not in stamps or b"type=DAEMON_" in ln]
    log.write_bytes(b"\n".join(kept))


def ausearch_count(log: Path, *args: str) -> int:
    out = subprocess.run(["ausearch", "-if", str(log), *args], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line == "----")


def key_summary(log: Path) -> dict[str, str]:
    out = subprocess.run(["aureport", "-if", str(log), "-k", "--summary"],
                         capture_output=True, text=True).stdout
    return {m.group(2): m.group(1) for m in re.finditer(r"^(\d+)\s+(pytest-\S+)", out, re.M)}


def summary_report(log: Path) -> dict[str, str]:
    """aureport's summary, less what depends on the moment and on process ids."""
    out = subprocess.run(["aureport", "-if", str(log)], capture_output=True, text=True).stdout
    lines = (ln.split(": ", 1) for ln in out.splitlines() if ln.startswith("Number of"))
    return {k: v for k, v in lines if k not in ("Number of process IDs",)}


def interpreted_user_messages(log: Path) -> list[str]:
    out = subprocess.run(["ausearch", "-if", str(log), "-m", "USER", "-i"],
                         capture_output=True, text=True).stdout
    texts = [ln for ln in out.splitlines() if "pytest-cmp-msg" in ln]
    return sorted(re.sub(r"msg=audit\([^)]*\)|pid=\d+", "", t) for t in texts)


@needs(C_AUDITD, "ausearch", "aureport")
@pytest.mark.parametrize("log_format", ["RAW", "ENRICHED"])
def test_ausearch_and_aureport_agree_with_the_c_daemon(
    kernel_state: AuditStatus, tmp_path: Path, workload_tools: tuple[Path, Path, Path],
    log_format: str,
) -> None:
    results = {}
    for name in ("c", "py"):
        d = DaemonDir(tmp_path / name)
        d.root.mkdir()
        for sub in (d.conf_dir, d.conf_dir / "plugins.d", d.log.parent, d.run_dir):
            sub.mkdir()
        d.write_config(log_format=log_format)
        daemon = start_c_auditd(d) if name == "c" else start_pyauditd(d)
        try:
            run_workload(name, workload_tools)
            wait_for(lambda d=d: sum("pytest-cmp-watch" in ln for ln in d.lines()) >= 10, 10)
        finally:
            assert daemon.stop() == 0
        wait_for(lambda: get_status().pid == 0, 5)
        without_own_events(d.log, daemon.pid)
        results[name] = {
            "load events": ausearch_count(d.log, "-k", "pytest-cmp-load"),
            "exec events": ausearch_count(d.log, "-k", "pytest-cmp-exec"),
            "watch events": ausearch_count(d.log, "-k", "pytest-cmp-watch"),
            "user messages": ausearch_count(d.log, "-m", "USER"),
            "daemon start": ausearch_count(d.log, "-m", "DAEMON_START"),
            "daemon end": ausearch_count(d.log, "-m", "DAEMON_END"),
            "key summary": key_summary(d.log),
            "user texts": interpreted_user_messages(d.log),
            "summary": summary_report(d.log),
        }
    # every call, plus the CONFIG_CHANGE records of adding and removing the rule
    assert results["py"]["load events"] == 300 + 2, results
    assert results["py"]["exec events"] == 20 + 2, results
    assert results["py"]["daemon start"] == results["py"]["daemon end"] == 1, results
    assert results["py"] == results["c"]


@needs(C_AUDITD)
def test_enriched_lines_match_the_c_daemon_for_the_same_kind_of_record(
    kernel_state: AuditStatus, tmp_path: Path, workload_tools: tuple[Path, Path, Path],
) -> None:
    """The translated part after 0x1d is the same for records that differ only in serials."""
    suffixes = {}
    for name in ("c", "py"):
        d = DaemonDir(tmp_path / name)
        d.root.mkdir()
        for sub in (d.conf_dir, d.conf_dir / "plugins.d", d.log.parent, d.run_dir):
            sub.mkdir()
        d.write_config(log_format="ENRICHED")
        daemon = start_c_auditd(d) if name == "c" else start_pyauditd(d)
        try:
            run_workload(name, workload_tools)
            wait_for(lambda d=d: sum("pytest-cmp-watch" in ln for ln in d.lines()) >= 10, 10)
        finally:
            assert daemon.stop() == 0
        found = set()
        for line in d.lines():
            if "\x1d" in line and ("pytest-cmp" in line or "type=PATH" in line):
                kind = line.split(" ", 1)[0]
                found.add((kind, line.split("\x1d", 1)[1]))
        suffixes[name] = found
    assert suffixes["py"] == suffixes["c"]
    assert suffixes["c"]  # the comparison was not between two empty sets


@needs("aureport")
def test_daemon_records_read_by_aureport(pyauditd: RunningDaemon) -> None:
    pyauditd.signal(signal.SIGUSR1)
    pyauditd.wait_for_line("DAEMON_ROTATE")
    assert pyauditd.stop() == 0
    logs = sorted(pyauditd.dir.log.parent.glob("audit.log*"))
    out = subprocess.run(["aureport", "-if", str(logs[-1]), "-i"],
                         capture_output=True, text=True).stdout
    assert "Number of changes in configuration" in out


def test_auditctl_signal_drives_pyauditd(pyauditd: RunningDaemon) -> None:
    """`auditctl --signal` finds the daemon through the kernel's registration, not a pid
    file: operators and service scripts reach pyauditd as they reach the C daemon."""
    d = pyauditd.dir
    state = d.run_dir / "auditd.state"
    assert not state.exists()
    auditctl("--signal", "CONT")
    wait_for(lambda: state.exists() and "records received" in state.read_text(), 5)

    auditctl("--signal", "USR1")
    wait_for(lambda: (lines := d.lines()) and "DAEMON_ROTATE" in lines[0], 5)
    assert "op=rotate-logs" in d.lines()[0] and "res=success" in d.lines()[0]

    d.write_config(log_format="ENRICHED")
    auditctl("--signal", "HUP")
    line = pyauditd.wait_for_line("type=DAEMON_CONFIG")
    assert "op=reconfigure state=changed" in line and "res=success" in line

    auditctl("--signal", "TERM")
    assert pyauditd.proc.wait(10) == 0
    assert d.lines()[-1].startswith("type=DAEMON_END ")
    assert get_status().pid == 0
