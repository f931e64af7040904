"""bench/attack.py runs end to end on a tiny workload and leaves the kernel as it found it
(its figures are not checked: they belong to the script, not to the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from auditpy.proto.netlink import AuditStatus

from .conftest import auditctl, get_status

ATTACK = Path(__file__).resolve().parents[2] / "bench" / "attack.py"


def test_attack_script_runs_every_attack_and_writes_its_table(
    kernel_state: AuditStatus, tmp_path: Path
) -> None:
    rules_before = auditctl("-l").stdout
    before = get_status()
    # kept directories of earlier `attack.py --keep` runs are not this run's
    kept_before = set(Path("/tmp").glob("attack-*-*/daemon.err"))
    proc = subprocess.run(
        [sys.executable, str(ATTACK), "--trials", "1", "--signals", "50", "--kills", "1",
         "--flush", "INCREMENTAL_ASYNC", "--per-kill", "2000", "--kill-after", "0.01,0.02",
         "--stall-rate", "2000", "--stall-seconds", "1", "--stall-at", "0.3",
         "--stall-for", "0.3", "--messages", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    table = (tmp_path / "ATTACK.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert rows[0] == "| attack | C auditd | pyauditd |"
    titles = [row.split(" | ")[0] for row in rows[1:]]
    for attack in ("signal storm", "kill -9 under load", "stall:", "failed reload"):
        assert any(title.startswith(f"| {attack}") for title in titles), attack
    assert all(row.count(" | ") == 2 and " - |" not in row for row in rows[1:]), table
    after = get_status()
    assert after.pid == 0
    assert (after.enabled, after.backlog_limit, after.backlog_wait_time) == (
        before.enabled, before.backlog_limit, before.backlog_wait_time)
    assert auditctl("-l").stdout == rules_before
    assert not set(Path("/tmp").glob("attack-*-*/daemon.err")) - kept_before
