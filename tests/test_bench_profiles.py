"""bench/profiles.py: py-spy's samples summed per process and thread, and a run on the fan-in
load (no kernel: the server has local_events = no)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "profiles.py"


def _module() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_profiles", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


DAEMON = 'process 10:"/usr/bin/python3 -m auditpy.auditd -n -c /tmp/x"'
CHILD = 'process 11:"/usr/bin/python3 -m auditpy.audispd --config-dir /tmp/x"'
PLUGIN = 'process 12:"/bin/cat"'


def test_samples_are_summed_per_process_and_thread() -> None:
    raw = "\n".join([
        f"{DAEMON};thread (10): MainThread;run (a.py:1);read (m.py:5) 30",
        f"{DAEMON};thread (10): MainThread;run (a.py:1);read (m.py:6) 10",
        f"{DAEMON};thread (10): MainThread;run (a.py:1);write (l.py:9) 20",
        f"{DAEMON};thread (13): auditpy-log-flush;_sync (l.py:287) 7",
        f"{DAEMON};{CHILD};thread (11): MainThread;pump (f.py:3) 5",
        f"{PLUGIN};thread (12) 1",  # no Python frame: left out
        "not a sample line",
    ])
    threads = _module().summarize(raw)
    assert set(threads) == {"auditpy.auditd (10), MainThread",
                            "auditpy.auditd (10), auditpy-log-flush",
                            "auditpy.audispd (11), MainThread"}
    total, functions, lines = threads["auditpy.auditd (10), MainThread"]
    assert total == 60
    assert functions.most_common() == [("read", 40), ("write", 20)]
    assert lines["read (m.py:5)"] == 30 and lines["read (m.py:6)"] == 10
    assert threads["auditpy.audispd (11), MainThread"][0] == 5


def test_program_names() -> None:
    program = _module().program
    assert program(DAEMON) == "auditpy.auditd (10)"
    assert program('process 7:"/usr/bin/python3 /opt/tool.py --x"') == "tool.py (7)"
    assert program(PLUGIN) == "cat (12)"


@pytest.mark.skipif(shutil.which("py-spy") is None or os.geteuid() != 0,
                    reason="needs py-spy, and root for the daemon")
def test_profile_of_the_fanin_load(tmp_path: Path) -> None:
    """A profile of pyauditd serving 20 clients: the daemon's main thread was sampled."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scenario", "fanin", "--events", "200000",
         "--seconds", "1", "--rate", "200", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "PROFILE-fanin.md").read_text()
    assert text.startswith("# Profile of pyauditd: fanin")
    assert "## auditpy.auditd (" in text and ", MainThread: " in text
    assert "| share | line (own samples) |" in text
