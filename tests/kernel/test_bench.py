"""The benchmark script runs end to end on a tiny workload (its figures are not checked:
timing belongs to the benchmark, not to the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from auditpy.proto.netlink import AuditStatus

from ..conftest import needs
from .conftest import auditctl, get_status

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"

# Both scripts run the C auditd beside pyauditd, on a load generator they compile.
pytestmark = needs("/sbin/auditd", "gcc")


def test_benchmark_runs_and_writes_its_table(kernel_state: AuditStatus, tmp_path: Path) -> None:
    rules_before = auditctl("-l").stdout
    shm_before = set(Path("/dev/shm").glob("bench-*"))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--events", "300", "--exec-events", "20", "--rounds", "1",
         "--scenarios", "raw,plugin1,exec", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "RESULTS.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| lossless, RAW")
            or ln.startswith("| fork/exec")]
    assert len(rows) == 3
    assert all("| 300 / 0 | 300 / 0 |" in row for row in rows[:2])  # all logged by both
    assert "| 300 / 300 |" in rows[1]  # the plugin of each daemon got every event
    assert "| - / - |" in rows[0]
    assert set(Path("/dev/shm").glob("bench-*")) == shm_before  # plugin outputs removed
    after = get_status()
    assert after.backlog_limit == kernel_state.backlog_limit
    assert after.backlog_wait_time == kernel_state.backlog_wait_time
    assert after.pid == 0
    assert auditctl("-l").stdout == rules_before


def test_build_comparison_runs(kernel_state: AuditStatus) -> None:
    repo = BENCH.parents[1]
    proc = subprocess.run(
        [sys.executable, str(BENCH.with_name("ab.py")), "raw", "200", "1", str(repo)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    medians = [ln for ln in proc.stdout.splitlines() if " median " in ln]
    assert [ln.split()[0] for ln in medians] == ["C", str(repo)]
    assert get_status().pid == 0
