"""bench/loops.py: each loop is timed over its wakeups, hot and after a pause, and the two
tables name every loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "loops.py"


def test_loops_prints_each_loop() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--wakeups", "200", "--rounds", "1",
                           "--paused-wakeups", "3", "--pause-ms", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tables: list[dict[str, float]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(("| loop", "| woken after")):
            tables.append({})
        elif line.startswith("| ") and tables:
            tables[-1][line.split("|")[1].strip()] = float(line.split("|")[2])
    hot, paused = tables
    assert set(hot) == {"asyncio", "auditpy.system.evloop (pyauditd's loop)",
                        "selectors.DefaultSelector", "select.epoll"}
    c_figure = {"C: epoll_wait (bench/wake.c)"} if shutil.which("gcc") else set()
    assert set(paused) == {"asyncio", "auditpy.system.evloop (pyauditd's loop)",
                           "select.epoll", "ctypes: libc epoll_wait"} | c_figure
    assert all(value > 0 for value in [*hot.values(), *paused.values()])
