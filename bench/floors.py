#!/usr/bin/env python3
"""Where the gap between the limit and pyauditd goes: the floors, measured side by side.

    python3 bench/floors.py [--rounds 5] [--events 100000] [--only ROW,...]

Issue #14 asks pyauditd for shares of the limit (bench/limit.c, a C reader that discards)
that a logger may not reach in Python, or at all. This runs, in the same rounds and on the
same lossless RAW getppid load as bench/bench.py, a ladder of readers between the two:

- the limit with its 16 MiB buffer (bench.py's), and with pyauditd's 64 KiB;
- the C writer floor: limit.c -l, each record a log line, one write(2) per batch;
- the Python floors (bench/pyfloor.py, 64 KiB): one stdlib recv per record; recvmmsg through
  ctypes without and with a bytes object per record; and the Python writer floor, the
  same lines and one os.write per batch;
- pyauditd (RAW, as bench.py runs it) and the C auditd;
- one plugin (bench.py's plugin1: a cat): pyauditd through pyaudispd, the C auditd, and the
  Python floor with one plugin, which writes each batch to the log and hands it to the
  cat's pipe without ever waiting for it.

Each step's drop is what that piece of work costs: the buffer, writing a log at all,
Python's reading, Python's writing, and what pyauditd does beyond a floor (event and serial
tracking, the loss ledger, flushing, the loop). A second table splits pyauditd's resident
memory by what it imports, for the 16 MiB target, under this interpreter and the system's
/usr/bin/python3 (whose site imports little); a third times the log write as pyauditd makes
it against libc's writev. Figures go to results/FLOORS.md.
Same rules as bench.py: root, no daemon registered; kernel settings and rules are put back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402 - found through the path set above

SMALL = 64 << 10
LARGE = 16 << 20

#: (label, how the reader runs): None for the daemons, else its command line for a run dir.
Ladder = list[tuple[str, str, Callable[[Path], list[str]] | None]]


def ladder(loadgen: Path) -> Ladder:
    limit = str(loadgen.with_name("limit"))
    floor = [sys.executable, str(HERE / "pyfloor.py")]
    return [
        ("limit", "limit (C, discards), 16 MiB buffer", lambda _root: [limit]),
        ("limit64", "limit (C, discards), 64 KiB buffer", lambda _root: [limit, "-b", str(SMALL)]),
        ("cwrite", "C writer floor: lines, one write per batch",
         lambda root: [limit, "-b", str(SMALL), "-l", str(root / "floor.log")]),
        ("recv", "Python: stdlib recv_into, one record per call, discards",
         lambda _root: [*floor, "recv"]),
        ("raw", "Python: ctypes recvmmsg 128, no per-record objects, discards",
         lambda _root: [*floor, "mmsg-raw"]),
        ("mmsg", "Python: ctypes recvmmsg 128, a bytes object per record, discards",
         lambda _root: [*floor, "mmsg"]),
        ("pywrite", "Python writer floor: as above, lines, one os.write per batch",
         lambda root: [*floor, "write", "--log", str(root / "floor.log")]),
        ("cwrite16", "C writer floor, 16 MiB buffer",
         lambda root: [limit, "-l", str(root / "floor.log")]),
        ("mmsg16", "Python: ctypes recvmmsg 128, bytes per record, discards, 16 MiB buffer",
         lambda _root: [*floor, "mmsg", "--rcvbuf", str(LARGE)]),
        ("pywrite16", "Python writer floor, 16 MiB buffer",
         lambda root: [*floor, "write", "--rcvbuf", str(LARGE), "--log", str(root / "floor.log")]),
        ("py", "pyauditd, RAW (64 KiB buffer)", None),
        ("c", "C auditd, RAW", None),
        ("pyplugin", "Python floor with one plugin: the writer floor, and the same lines to "
         "a cat's stdin pipe without blocking (what it does not take waits in memory)",
         lambda root: [*floor, "plugin", "--log", str(root / "floor.log"),
                       "--plugin", str(_shm(root) / f"{root.name}-floor-plugin.out")]),
        ("py1", "pyauditd, RAW, 1 plugin (through pyaudispd)", None),
        ("c1", "C auditd, RAW, 1 plugin", None),
    ]


def _shm(root: Path) -> Path:
    """Where the plugin floor's cat writes: tmpfs, as bench.py's plugins do."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else root


def one(name: str, reader: Callable[[Path], list[str]] | None, events: int, loadgen: Path,
        true_copy: Path, pyauditd: list[str]) -> bench.Run:
    scenario = bench.SCENARIOS["plugin1" if name in ("py1", "c1") else "raw"]
    if reader is None:
        daemon = "c" if name in ("c", "c1") else "py"
        return bench.one_run(daemon, scenario, events, loadgen, true_copy, pyauditd, 60)
    return bench.limit_run(scenario, events, loadgen, true_copy, 60, reader)


def table(rows: Ladder, runs: dict[str, list[bench.Run]], events: int, rounds: int) -> str:
    limit = bench.median([r.rate for r in runs["limit"]])
    limit64 = bench.median([r.rate for r in runs["limit64"]])
    lines = [
        f"Floors of {time.strftime('%Y-%m-%d')} on {bench.machine()}, C auditd = Debian "
        f"{bench.c_version()}; {events} getppid events per run, lossless (as bench.py's RAW), "
        f"median of {rounds} rounds. Command: "
        f"`python3 bench/floors.py --rounds {rounds} --events {events}`.",
        "",
        "| reader | events/s | share of limit (16 MiB) | share of limit (64 KiB) "
        "| CPU s/100k | read / lost |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, _reader in rows:
        rate = bench.median([r.rate for r in runs[key]])
        lines.append(
            f"| {label} | {rate:,.0f}{bench.capped(runs[key])} | "
            f"{bench.share(rate, limit, percent=True)} | "
            f"{bench.share(rate, limit64, percent=True)} | "
            f"{bench.median([r.cpu_per_100k for r in runs[key]]):.2f} | "
            f"{bench.logged_lost(runs[key])} |")
    lines += [
        "",
        "CPU: the reader's own (with the C auditd, pyauditd: the daemon's), seconds per "
        "100,000 events (an event is 3 records), so 10 x CPU s/100k is µs per event. read: "
        "events with the key in the log or, for the floors, counted as read.",
    ]
    return "\n".join(lines) + "\n"


#: The import steps of pyauditd's start, in the order it makes them, each measured on top of
#: the ones before: what each costs in resident memory.
RSS_STEPS = [
    ("interpreter with -S (no site)", ""),
    ("site (.pth files of this machine)", "import site; site.main()"),
    ("logging", "import logging"),
    ("ctypes, json, socket, select, mmap, threading",
     "import ctypes, json, socket, select, mmap, threading"),
    ("auditpy's own event loop (system.evloop)", "import auditpy.system.evloop"),
    ("auditpy's daemon modules", "import auditpy.auditd.cli, auditpy.auditd.daemon, "
                                  "auditpy.config.plugins"),
]


#: What the standard library alone weighs: what pyauditd imports from it today, then what its
#: modules imported before auditpy.structs and type checking without typing, then asyncio,
#: which it stood on before its own loop. Each set in a fresh interpreter after site.
_LEAST = "selectors, socket, select, logging, threading, ctypes, struct, signal, json, mmap"
_MORE = "argparse, dataclasses, typing, concurrent.futures, subprocess"
RSS_SETS = [
    ("interpreter and site", ""),
    (f"what pyauditd imports: {_LEAST}", f"import {_LEAST}"),
    (f"the same with {_MORE} (what its modules used before)", f"import {_LEAST}, {_MORE}"),
    ("the same with asyncio, without ssl (what it stood on before its own loop)",
     f"import {_LEAST}, {_MORE}; "
     "sys.modules['ssl'] = None; import asyncio; del sys.modules['ssl']"),
]


def rss_sets(python: str) -> list[tuple[int, int]]:
    """(VmRSS KiB, modules) of each RSS_SETS entry under `python`, each in a fresh process."""
    figures = []
    for _label, step in RSS_SETS:
        code = ["import sys", f"sys.path.insert(0, {str(HERE.parent / 'src')!r})",
                "import site; site.main()", step,
                "print(next(int(l.split()[1]) for l in open('/proc/self/status') "
                "if l.startswith('VmRSS')), len(sys.modules))"]
        out = subprocess.run([python, "-S", "-c", "\n".join(code)], capture_output=True,
                             text=True, check=True).stdout.split()
        figures.append((int(out[0]), int(out[1])))
    return figures


def rss_sets_table(pythons: list[str], sets: list[list[tuple[int, int]]]) -> str:
    lines = ["| standard library imported | " + " | ".join(
        f"{p}: MiB | modules" for p in pythons) + " |", "|---|" + "---|---|" * len(pythons)]
    for i, (label, _step) in enumerate(RSS_SETS):
        lines.append(f"| {label} | " + " | ".join(
            f"{column[i][0] / 1024:.1f} | {column[i][1]}" for column in sets) + " |")
    return ("What the standard library alone weighs (VmRSS after the imports, each row a fresh "
            "interpreter started with -S, then site): pyauditd's own modules and its running "
            "state come on top of the row it would stand on.\n\n" + "\n".join(lines) + "\n")


def rss_steps(python: str) -> list[tuple[str, int, int]]:
    """(step, KiB it adds, modules after it) under `python`, the steps in one interpreter."""
    code = ["import sys", f"sys.path.insert(0, {str(HERE.parent / 'src')!r})",
            "def rss():\n for l in open('/proc/self/status'):\n"
            "  if l.startswith('VmRSS'): return int(l.split()[1])",
            "prev = rss()", "print(prev, len(sys.modules))"]
    for _label, step in RSS_STEPS[1:]:
        code += [step, "now = rss()", "print(now - prev, len(sys.modules))", "prev = now"]
    out = subprocess.run([python, "-S", "-c", "\n".join(code)], capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [(label, int(line.split()[0]), int(line.split()[1]))
            for (label, _step), line in zip(RSS_STEPS, out, strict=False)]


def running_rss(python: str, events: int, loadgen: Path, true_copy: Path) -> int:
    """pyauditd's peak RSS (KiB) under `python` while it logs a RAW run."""
    run = bench.one_run("py", bench.SCENARIOS["raw"], events, loadgen, true_copy,
                        [python, "-m", "auditpy.auditd"], 60)
    return run.rss_kib


def rss_table(pythons: list[str], steps: list[list[tuple[str, int, int]]], peaks: list[int],
              events: int) -> str:
    header = "| step | " + " | ".join(f"{p}: adds MiB | total MiB | modules" for p in pythons)
    lines = [header + " |", "|---|" + "---|---|---|" * len(pythons)]
    totals = [0] * len(pythons)
    for i, (label, _step) in enumerate(RSS_STEPS):
        cells = []
        for n, column in enumerate(steps):
            _label, kib, modules = column[i]
            totals[n] += kib
            cells.append(f"{kib / 1024:.1f} | {totals[n] / 1024:.1f} | {modules}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| running: peak while it logs {events:,} events, RAW | " + " | ".join(
        f"{(peak - total) / 1024:.1f} | {peak / 1024:.1f} | -"
        for peak, total in zip(peaks, totals, strict=True)) + " |")
    return ("Resident memory of pyauditd by import step (VmRSS; the steps in one interpreter "
            "started with -S, each on top of the ones before; the last row is the daemon "
            "itself, started as `PYTHON -m auditpy.auditd`):\n\n" + "\n".join(lines) + "\n")


def write_paths(records: int = 133, calls: int = 5000) -> str:
    """One batch's log lines written as pyauditd writes them (one join, one os.write) and
    with libc's writev (os.writev: the parts as they are, no join), in this process, on
    a file under /var/tmp: what gathering in the kernel instead would buy. 133 records is
    what the 64 KiB buffer holds."""
    payload = (b"audit(1700000000.123:4567): arch=c000003e syscall=110 success=yes exit=1 "
               b"a0=1 a1=2 a2=3 a3=4 items=0 ppid=1 pid=2 auid=0 uid=0 gid=0 euid=0 suid=0 "
               b"fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=1 comm=\"loadgen\" "
               b"exe=\"/tmp/loadgen\" key=\"bench\"")
    parts = [b"\n"] * (3 * records)
    parts[0::3] = [b"type=SYSCALL msg="] * records
    parts[1::3] = [payload] * records
    ways: dict[str, Callable[[int], object]] = {
        "b\"\".join + os.write": lambda fd: os.write(fd, b"".join(parts)),
        "os.writev": lambda fd: os.writev(fd, parts),
    }
    lines = ["| write path | CPU µs per batch |", "|---|---|"]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        fd = os.open(Path(tmp) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for name, write in ways.items():
                figures = []
                for _round in range(3):
                    for _ in range(calls // 10):
                        write(fd)
                    start = time.process_time()
                    for _ in range(calls):
                        write(fd)
                    figures.append((time.process_time() - start) / calls * 1e6)
                    os.ftruncate(fd, 0)
                lines.append(f"| {name} | {bench.median(figures):.1f} |")
        finally:
            os.close(fd)
    return (f"One batch of {records} log lines ({records * (len(payload) + 18):,} bytes) "
            f"written {calls:,} times, median of 3:\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--pyauditd", default=f"{sys.executable} -m auditpy.auditd")
    parser.add_argument("--only", help="comma-separated rows (limit always runs): a part of "
                        "the ladder, without the memory tables")
    args = parser.parse_args(argv)
    if not bench.take_the_kernel():
        return 1
    build = Path(tempfile.mkdtemp(prefix="bench-floors-"))
    try:
        loadgen = bench.build_tools(build)
        true_copy = build / "bench-true"
        shutil.copy("/bin/true", true_copy)
        rows = ladder(loadgen)
        if args.only:
            wanted = {"limit", "limit64", *args.only.split(",")}
            rows = [row for row in rows if row[0] in wanted]
        runs: dict[str, list[bench.Run]] = {key: [] for key, _l, _r in rows}
        for round_ in range(args.rounds):
            turn = round_ % len(rows)  # each goes first in turn
            for key, _label, reader in rows[turn:] + rows[:turn]:
                run = one(key, reader, args.events, loadgen, true_copy, args.pyauditd.split())
                runs[key].append(run)
                print(f"round {round_ + 1} {key:8}: {run.rate:10,.0f} events/s  "
                      f"{run.events:8,} read  {run.lost:6,} lost  cpu {run.cpu:6.2f}s",
                      flush=True)
        pythons = [p for p in dict.fromkeys([sys.executable, "/usr/bin/python3"])
                   if Path(p).exists()]
        peaks = [] if args.only else [running_rss(p, args.events, loadgen, true_copy)
                                      for p in pythons]
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if args.only:
        print()
        print(table(rows, runs, args.events, args.rounds))
        return 0
    text = (table(rows, runs, args.events, args.rounds) + "\n"
            + rss_table(pythons, [rss_steps(p) for p in pythons], peaks, args.events) + "\n"
            + rss_sets_table(pythons, [rss_sets(p) for p in pythons]) + "\n"
            + write_paths())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "FLOORS.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
