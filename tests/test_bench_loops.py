"""bench/loops.py: each loop is timed over its wakeups and the table names all four."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "loops.py"


def test_loops_prints_each_loop() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--wakeups", "200", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): float(line.split("|")[2])
            for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| loop")}
    assert set(rows) == {"asyncio", "auditpy.system.evloop (pyauditd's loop)",
                         "selectors.DefaultSelector", "select.epoll"}
    assert all(value > 0 for value in rows.values())
