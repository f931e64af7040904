#!/usr/bin/env python3
"""Compare pyauditd builds with each other and with the C auditd on one benchmark scenario.

A change to the record path is judged by alternating runs, since this kind of machine drifts
by 10-20% between whole benchmark runs. Each TREE is a source tree (a checkout or a
`git worktree`) whose `src/` is put first on PYTHONPATH for that run:

    git worktree add /tmp/before HEAD~1
    python3 bench/ab.py exec 10000 3 /tmp/before .

prints every run, then the median events/s and CPU seconds per 100,000 events of each.
With --limit the limit reader (bench/limit.c) runs in each round too, and each median is
also given as a share of the limit's. With --pythons each tree runs under each of the given
interpreters in every round (`--pythons python3,/usr/bin/python3`: how much the interpreter's
build moves the figures).
Same rules as bench.py: root, no daemon registered; kernel settings and rules are put back.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(bench.SCENARIOS))
    parser.add_argument("events", type=int)
    parser.add_argument("rounds", type=int)
    parser.add_argument("trees", nargs="+", type=Path, metavar="TREE")
    parser.add_argument("--limit", action="store_true",
                        help="run the limit reader in every round as well")
    parser.add_argument("--pythons", default=sys.executable,
                        help="interpreters to run each tree under, comma-separated")
    args = parser.parse_args(argv)
    if not bench.take_the_kernel(this_tree=False):
        return 1
    scenario = bench.SCENARIOS[args.scenario]
    build = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    runs: dict[str, list[bench.Run]] = {}
    try:
        loadgen = bench.build_tools(build)
        true_copy = build / "bench-true"
        shutil.copy("/bin/true", true_copy)
        pythons = args.pythons.split(",")
        runners = {
            (f"{tree} [{python}]" if len(pythons) > 1 else str(tree)): (tree, python)
            for tree in args.trees for python in pythons
        }
        for _ in range(args.rounds):
            for who in ["C auditd", *runners, *(["limit"] if args.limit else [])]:
                if who == "C auditd":
                    run = bench.one_run("c", scenario, args.events, loadgen, true_copy, [], 120)
                elif who == "limit":
                    run = bench.one_run("limit", scenario, args.events, loadgen, true_copy, [],
                                        120)
                else:
                    tree, python = runners[who]
                    src = (tree / "src").resolve()
                    # trees from before the package layout run the daemon as auditpy.cli
                    module = ("auditpy.auditd" if (src / "auditpy" / "auditd").is_dir()
                              else "auditpy.cli")
                    command = ["env", f"PYTHONPATH={src}", python, "-m", module]
                    run = bench.one_run("py", scenario, args.events, loadgen, true_copy,
                                        command, 120)
                runs.setdefault(who, []).append(run)
                print(f"{who:30} {run.rate:10,.0f} events/s  {run.cpu_per_100k:6.2f} CPU s/100k",
                      flush=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print()
    limit = statistics.median(r.rate for r in runs["limit"]) if "limit" in runs else 0.0
    for who, done in runs.items():
        rate = statistics.median(r.rate for r in done)
        cpu = statistics.median(r.cpu_per_100k for r in done)
        print(f"{who:30} median {rate:10,.0f} events/s  {cpu:6.2f} CPU s/100k"
              + (f"  {rate / limit:4.0%} of the limit" if limit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
