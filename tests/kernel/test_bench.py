"""The benchmark script runs end to end on a tiny workload (its figures are not checked:
timing belongs to the benchmark, not to the test suite)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from auditpy.proto.netlink import AuditStatus

from ..conftest import needs
from .conftest import auditctl, get_status, wait_for

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"

# Both scripts run the C auditd beside pyauditd, on a load generator they compile.
pytestmark = needs("/sbin/auditd", "gcc")


def test_benchmark_runs_and_writes_its_table(kernel_state: AuditStatus, tmp_path: Path) -> None:
    rules_before = auditctl("-l").stdout
    shm_before = set(Path("/dev/shm").glob("bench-*"))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--events", "300", "--exec-events", "20", "--rounds", "1",
         "--scenarios", "raw,plugin1,exec,latency", "--latency-rates", "200",
         "--latency-seconds", "0.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "RESULTS.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| lossless, RAW")
            or ln.startswith("| fork/exec")]
    assert len(rows) == 3
    header = next(ln for ln in table.splitlines() if ln.startswith("| scenario"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[1:4] == ["C events/s", "pyauditd events/s", "limit events/s"]
    for row in rows[:2]:
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))
        # all logged by both daemons, and all read by the limit reader
        assert cells["C logged / lost"] == cells["py logged / lost"] == "300 / 0"
        assert cells["limit read / lost"] == "300 / 0"
        assert cells["py / limit"].endswith("%")
        assert re.fullmatch(r"\d+% \(\d+%-\d+%\)", cells["py / limit by round"])
        assert float(cells["limit events/s"].replace(",", "")) > 0
    assert "| 300 / 300 |" in rows[1]  # the plugin of each daemon got every event
    assert "| - / - |" in rows[0]
    # the latency table: each reader, every event timed, none missing
    latency = [ln for ln in table.splitlines() if ln.startswith("| 200 |")]
    assert [ln.split("|")[2:4] for ln in latency] == [
        [" C auditd ", " no plugin "], [" pyauditd ", " no plugin "],
        [" C auditd ", " 1 plugin "], [" pyauditd ", " 1 plugin "],
        [" limit (C reader) ", " - "], [" Python floor (bench/pyfloor.py) ", " - "]]
    assert all("| 100 (0 / -) |" in ln for ln in latency[:2] + latency[4:])
    assert all("| 100 (0 / 0) |" in ln for ln in latency[2:4])
    assert all(float(ln.rstrip(" |").rsplit("|", 1)[1]) >= 0 for ln in latency)  # CPU µs/event
    assert set(Path("/dev/shm").glob("bench-*")) == shm_before  # plugin outputs removed
    after = get_status()
    assert after.backlog_limit == kernel_state.backlog_limit
    assert after.backlog_wait_time == kernel_state.backlog_wait_time
    assert after.pid == 0
    assert auditctl("-l").stdout == rules_before


def test_build_comparison_runs(kernel_state: AuditStatus, tmp_path: Path) -> None:
    repo = BENCH.parents[1]
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("ab.py")), "raw", "200", "1", str(repo), "--limit"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    medians = [ln for ln in proc.stdout.splitlines() if " median " in ln]
    assert [ln.split()[0] for ln in medians] == ["C", str(repo), "limit"]
    assert all("of the limit" in ln for ln in medians)
    assert get_status().pid == 0
    # each tree under each interpreter (here the same one under a second name)
    python = str(tmp_path / "python3")
    os.symlink(sys.executable, python)
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("ab.py")), "raw", "200", "1", str(repo),
         "--pythons", f"{sys.executable},{python}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    medians = [ln for ln in proc.stdout.splitlines() if " median " in ln]
    assert [ln.split(" median ")[0].strip() for ln in medians] == [
        "C auditd", f"{repo} [{sys.executable}]", f"{repo} [{python}]"]
    assert get_status().pid == 0


def test_limit_reader_unregisters_when_stopped(kernel_state: AuditStatus,
                                               tmp_path: Path) -> None:
    """The limit reader gives the registration back on SIGTERM, so a benchmark interrupted
    between runs leaves no daemon registered."""
    binary = tmp_path / "limit"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(BENCH.with_name("limit.c"))],
                   check=True)
    proc = subprocess.Popen([str(binary), "nothing", str(tmp_path / "count")],
                            stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: get_status().pid == proc.pid or proc.poll() is not None, 15)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert get_status().pid == 0
    assert b"0 with key nothing" in err


def test_fanin_runs_with_its_limit(tmp_path: Path) -> None:
    """bench/fanin.py with pyauditd, the C auditd, the limit server and the Python floors
    on a tiny workload (no kernel involved: the servers have local_events = no)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("fanin.py")), "--clients", "3", "--events", "40",
         "--rounds", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "FANIN.md").read_text()
    rounds = [ln for ln in text.splitlines() if ln.startswith("| 1 |")]
    assert sorted(ln.split("|")[2].strip() for ln in rounds) == [
        "auditd", "limit", "pyauditd", "pyfloor", "pyfloor-log"]
    assert all(ln.rstrip(" |").endswith("| 120") for ln in rounds)  # every record arrived
    assert ("| | pyauditd | auditd | limit | pyfloor | pyfloor-log | pyauditd / C "
            "| pyauditd / limit | pyauditd / pyfloor-log |") in text
    assert "| of which system (system calls, loopback TCP) |" in text


def test_json_scenarios_run(kernel_state: AuditStatus, tmp_path: Path) -> None:
    """C auditd + laurel and pyauditd + builtin_json each write every event as JSON."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--events", "300", "--exec-events", "20", "--rounds", "1",
         "--scenarios", "json,json-exec", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in (tmp_path / "RESULTS.md").read_text().splitlines()
            if ln.startswith("| JSON events")]
    assert len(rows) == 2
    assert "| 300 / 300 |" in rows[0] and "| 20 / 20 |" in rows[1]
    assert not list(Path("/dev/shm").glob("bench-*-events.json"))
    assert get_status().pid == 0


def test_floors_run_and_split_the_gap(kernel_state: AuditStatus, tmp_path: Path) -> None:
    """bench/floors.py: every reader of the ladder reads every event, the kernel settings
    and rules are put back, and the memory tables have each import step and each set of
    standard library modules."""
    rules_before = auditctl("-l").stdout
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("floors.py")), "--events", "200", "--rounds", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ladder, rest = (tmp_path / "FLOORS.md").read_text().split("Resident memory", 1)
    memory, writes = rest.split("One batch of", 1)
    memory, stdlib = memory.split("What the standard library alone weighs", 1)
    rows = {ln.split("|")[1].strip(): ln.split("|")[-2].strip() for ln in ladder.splitlines()
            if ln.startswith("| ") and not ln.startswith("| reader")}
    assert len(rows) == 15
    raw = next(label for label in rows if "no per-record objects" in label)
    # The raw floor counts SYSCALL records, so auditctl's own (adding the rule) may count.
    assert int(rows.pop(raw).split(" / ")[0]) >= 200
    assert set(rows.values()) == {"200 / 0"}, rows
    steps = [ln.split("|")[1].strip() for ln in memory.splitlines() if ln.startswith("| ")]
    assert steps[0] == "step" and steps[-1].startswith("running")
    assert "auditpy's own event loop (system.evloop)" in steps
    sets = [ln.split("|")[1].strip() for ln in stdlib.splitlines() if ln.startswith("| ")]
    assert sets[0] == "standard library imported" and len(sets) == 1 + 4
    assert "| os.writev |" in writes and '| b"".join + os.write |' in writes
    after = get_status()
    assert (after.pid, after.backlog_limit, after.backlog_wait_time) == (
        0, kernel_state.backlog_limit, kernel_state.backlog_wait_time)
    assert auditctl("-l").stdout == rules_before
