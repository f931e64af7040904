"""bench/rules_load.py runs end to end once and puts the rules back (its figures are not
checked: timing belongs to the benchmark, not to the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..conftest import needs
from .conftest import auditctl, get_status

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rules_load.py"

# It times augenrules (in a mount namespace of its own) beside auditctl and pyauditctl.
pytestmark = needs("augenrules", "unshare", "mount")


def test_rules_load_benchmark_runs_and_restores() -> None:
    rules_before = auditctl("-l").stdout
    status_before = get_status()
    proc = subprocess.run([sys.executable, str(BENCH), "--rounds", "1"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tools = [line.split()[0] for line in proc.stdout.splitlines()[2:5]]
    assert tools == ["pyauditctl", "augenrules", "auditctl"]
    assert "rules before the benchmark restored: yes" in proc.stdout
    assert auditctl("-l").stdout == rules_before
    after = get_status()
    assert (after.enabled, after.failure, after.backlog_limit) == (
        status_before.enabled, status_before.failure, status_before.backlog_limit)
