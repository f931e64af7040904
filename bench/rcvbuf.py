#!/usr/bin/env python3
"""pyauditd's events/s and events lost per kill -9 against the size of its kernel socket's
receive buffer (startup.RCVBUF), with the C auditd's figures beside them.

What the kernel has handed to a daemon's socket dies with the daemon; what it could not hand
over it keeps (requeued, for the next daemon). The buffer should hold what throughput needs
and no more. For each size, --rounds lossless getppid runs (bench.py's "raw" scenario) give
events/s, and one kill -9 storm (attack.py's) gives the events lost per kill:

    python3 bench/rcvbuf.py [--sizes 128K,256K,512K,1M,2M,4M,16M] [--rounds 3] [--kills 5]

Same rules as bench.py: root, no daemon registered; kernel settings and rules are put back.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack

import bench

#: Runs pyauditd with another RCVBUF: the size is its first argument.
WRAPPER = """\
import sys
try:
    import auditpy.auditd.startup as module
except ImportError:  # a tree from before auditd.startup
    import auditpy.auditd.daemon as module
module.RCVBUF = int(sys.argv.pop(1))
from auditpy.auditd.cli import main
sys.exit(main())
"""


def size_of(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1:].upper()]
    return int(text)


def label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128K,256K,512K,1M,2M,4M,16M")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5, help="kill -9 per size (0: none)")
    parser.add_argument("--kill-backlog-limit", type=int, default=64)
    parser.add_argument("--flush", default="INCREMENTAL_ASYNC",
                        help="the daemons' flush setting during the kill -9 storms")
    parser.add_argument("--src", type=Path, default=bench.HERE.parent)
    args = parser.parse_args(argv)
    sizes = [size_of(s) for s in args.sizes.split(",")]
    if not bench.take_the_kernel(this_tree=False):
        return 1
    src = (args.src / "src").resolve()
    build = Path(tempfile.mkdtemp(prefix="bench-rcvbuf-"))
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    losses: dict[str, list[int]] = {}
    try:
        wrapper = build / "pyauditd_rcvbuf.py"
        wrapper.write_text(WRAPPER)
        loadgen = build / "loadgen"
        subprocess.run(["gcc", "-O2", "-o", str(loadgen), str(bench.HERE / "loadgen.c")],
                       check=True)
        true_copy = build / "bench-true"
        shutil.copy("/bin/true", true_copy)
        scenario = bench.SCENARIOS["raw"]
        for round_ in range(args.rounds):
            for who in ["C", *map(label, sizes)]:
                if who == "C":
                    run = bench.one_run("c", scenario, args.events, loadgen, true_copy, [], 120)
                else:
                    size = sizes[[label(s) for s in sizes].index(who)]
                    command = ["env", f"PYTHONPATH={src}", sys.executable, str(wrapper),
                               str(size)]
                    run = bench.one_run("py", scenario, args.events, loadgen, true_copy,
                                        command, 120)
                rates.setdefault(who, []).append(run.rate)
                cpu.setdefault(who, []).append(run.cpu_per_100k)
                print(f"round {round_ + 1} {who:8} {run.rate:10,.0f} events/s "
                      f"{run.cpu_per_100k:6.2f} CPU s/100k  lost {run.lost}", flush=True)
        if args.kills:
            rng = random.Random(15)
            with attack.kernel_settings(args.kill_backlog_limit, 60 * attack.kernel_hz()):
                for who in ["C", *map(label, sizes)]:
                    if who == "C":
                        target = attack.Target("c", "C auditd", (bench.C_AUDITD,))
                    else:
                        size = sizes[[label(s) for s in sizes].index(who)]
                        target = attack.Target("py", "pyauditd",
                                               (sys.executable, str(wrapper), str(size)),
                                               (("PYTHONPATH", str(src)),))
                    krun = attack.kill_storm(target, args.flush, args.kills, 50_000,
                                             loadgen, rng, (0.1, 0.4), keep=False)
                    losses[who] = krun.lost
                    print(f"kill  {who:8} lost per kill {krun.lost}", flush=True)
    finally:
        attack.stop_all()
        shutil.rmtree(build, ignore_errors=True)
    print()
    print(f"kill -9 with flush = {args.flush}")
    print("| receive buffer | events/s (median) | CPU s/100k | events lost per kill -9 |")
    print("|---|---|---|---|")
    for who in ["C", *map(label, sizes)]:
        lost = losses.get(who)
        lost_text = (f"{statistics.mean(lost):,.0f} mean, {min(lost):,}-{max(lost):,}"
                     if lost else "-")
        name = "C auditd (its default)" if who == "C" else who
        print(f"| {name} | {statistics.median(rates[who]):,.0f} | "
              f"{statistics.median(cpu[who]):.2f} | {lost_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
