#!/usr/bin/env python3
"""Latency: from an audited system call to its record in the log, and at a plugin.

The throughput figures hide how long a record waits: a daemon that batches reads does well
on events/s and may still hold each record for milliseconds. Here the load generator makes
calls at a steady rate (`loadgen stamped`: the i-th getppid() gets i as its first argument,
which the SYSCALL record shows as a0, and CLOCK_REALTIME is read right before each call),
and two probes (bench/latprobe.c) read CLOCK_REALTIME as each record arrives: one follows
the log file with inotify, one is a `format = string` plugin. The kernel's own timestamp
in `audit(SEC.MSEC:SERIAL)` has only millisecond resolution, so it is not used.

For each rate, the C auditd and pyauditd run in turn with the same configuration, without
a plugin (log latency) and with the probe plugin (log and plugin latency), and the limit
reader (bench/limit.c, which stamps what it reads) gives the kernel's own hand-over time.
Beside them, without a plugin, the Python floor (`bench/pyfloor.py write --pause-ms 20`:
recvmmsg through ctypes, the lines, one write per read, and pyauditd's pause while records
trickle in, as a sleep): the least CPU per event a Python logger spends under the same
latency bound.
Percentiles are over every event of every round. Run as root with no daemon registered:

    python3 bench/latency.py [--rates 100,10000] [--seconds 10,2] [--rounds 1]

Writes LATENCY.md into --out. Kernel settings and rules are put back as in bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

KEY = "lat"
#: the Python floor's pause after a small read: pyauditd's longest (auditd.daemon)
COALESCE_MS = 20.0


@dataclass(frozen=True)
class Setup:
    name: str
    title: str
    plugin: bool


SETUPS = [Setup("log", "no plugin", False), Setup("plugin", "1 plugin", True)]


@dataclass
class Samples:
    """Latencies in nanoseconds, pooled over rounds, and how many events went missing."""

    log: list[int] = field(default_factory=list)
    plugin: list[int] = field(default_factory=list)
    sent: int = 0
    missing_log: int = 0
    missing_plugin: int = 0
    #: CPU seconds of the reader's process tree while the load ran and was logged
    cpu: float = 0.0


def read_pairs(path: Path) -> dict[int, int]:
    """"number nanoseconds" lines; the first arrival of each number counts."""
    out: dict[int, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.setdefault(int(parts[0]), int(parts[1]))
    return out


def lines_in(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def percentile(values: list[int], p: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] / 1e6


def start_daemon(daemon: str, root: Path, setup: Setup, probe: Path,
                 pyauditd: list[str]) -> subprocess.Popen[bytes]:
    conf = bench.write_config(root, bench.Scenario("latency", "latency"))
    if setup.plugin:
        # a script without arguments: the C auditd 3.0.9 refuses `args` with several
        program = root / "plugin.sh"
        program.write_text(f"#!/bin/sh\nexec {probe} plugin {KEY} {root / 'plugin.out'}\n")
        os.chmod(program, 0o755)
        (conf / "plugins.d" / "lat.conf").write_text(
            f"active = yes\ndirection = out\npath = {program}\ntype = always\n"
            "format = string\n")
        os.chmod(conf / "plugins.d" / "lat.conf", 0o640)
    if daemon == "c":
        argv = [bench.C_AUDITD, "-n", "-s", "nochange", "-c", str(conf)]
    else:
        argv = [*pyauditd, "-n", "-s", "nochange", "-c", str(conf), "--run-dir",
                str(root / "run")]
    with open(root / "daemon.err", "wb") as errors:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    descendants = bench.tree(proc.pid)[1:]
    bench.stop_reader(proc)
    for pid in descendants:  # the C daemon's plugins may outlive it
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def one_run(daemon: str, setup: Setup, rate: float, events: int, loadgen: Path,
            pyauditd: list[str], samples: Samples) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"latency-{daemon}-"))
    probe = loadgen.with_name("latprobe")
    log_out, plugin_out, stamps = root / "log.out", root / "plugin.out", root / "stamps"
    follower: subprocess.Popen[bytes] | None = None
    try:
        with bench.kernel_settings(None):
            if daemon == "limit":
                proc = subprocess.Popen(
                    [str(loadgen.with_name("limit")), KEY, str(root / "count"), str(log_out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif daemon == "pyfloor":
                # the daemon's interpreter, where its command names one
                python = (pyauditd[0] if "python" in Path(pyauditd[0]).name
                          else sys.executable)
                (root / "log").mkdir()
                with open(root / "daemon.err", "wb") as errors:
                    proc = subprocess.Popen(
                        [python, str(bench.HERE / "pyfloor.py"), "write", "--log",
                         str(root / "log" / "audit.log"), "--pause-ms",
                         f"{COALESCE_MS:g}", KEY, str(root / "count")],
                        stdout=subprocess.DEVNULL, stderr=errors)
            else:
                proc = start_daemon(daemon, root, setup, probe, pyauditd)
            try:
                if not bench.wait_for(lambda: bench.status().pid == proc.pid
                                      or proc.poll() is not None, 15) or proc.poll() is not None:
                    raise RuntimeError(f"{daemon} did not register: "
                                       f"{(root / 'daemon.err').read_text()[-2000:]}")
                if daemon != "limit":
                    log = root / "log" / "audit.log"
                    follower = subprocess.Popen([str(probe), "log", str(log), KEY, str(log_out)])
                    if not bench.wait_for(log_out.exists, 10):
                        raise RuntimeError("the log follower did not start")
                if setup.plugin and daemon != "limit" and not bench.wait_for(
                        plugin_out.exists, 15):
                    raise RuntimeError(f"{daemon}: the probe plugin did not start")
                rule = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F",
                        f"exe={loadgen}", "-k", KEY]
                with bench.rule(rule):
                    cpu_before = bench.cpu_seconds(bench.tree(proc.pid))
                    subprocess.run([str(loadgen), "stamped", str(events), str(rate), str(stamps)],
                                   check=True)
                    if daemon == "limit":
                        counter = bench.CountFile(root / "count")
                        bench.wait_for(lambda: counter.poll() >= events, 10)
                    else:
                        bench.wait_for(lambda: lines_in(log_out) >= events, 10)
                        if setup.plugin:
                            bench.wait_for(lambda: lines_in(plugin_out) >= events, 10)
                    samples.cpu += bench.cpu_seconds(bench.tree(proc.pid)) - cpu_before
            finally:
                if follower is not None:
                    follower.send_signal(signal.SIGTERM)
                    follower.wait(10)
                if daemon in ("limit", "pyfloor"):
                    bench.stop_reader(proc)  # (the limit writes its stamps as it exits)
                else:
                    stop_daemon(proc)
        sent = read_pairs(stamps)
        samples.sent += len(sent)
        for path, into, missing in ((log_out, samples.log, "missing_log"),
                                    (plugin_out, samples.plugin, "missing_plugin")):
            if path is plugin_out and not (setup.plugin and daemon != "limit"):
                continue
            got = read_pairs(path)
            into.extend(got[i] - t for i, t in sent.items() if i in got)
            setattr(samples, missing, getattr(samples, missing)
                    + sum(1 for i in sent if i not in got))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_all(rates: list[float], seconds: list[float], rounds: int, loadgen: Path,
            pyauditd: list[str]) -> dict[tuple[float, str, str], Samples]:
    results: dict[tuple[float, str, str], Samples] = {}
    for rate, duration in zip(rates, seconds, strict=True):
        events = max(1, round(rate * duration))
        for round_ in range(rounds):
            runs = [(d, s) for s in SETUPS for d in ("c", "py")] + [
                ("limit", SETUPS[0]), ("pyfloor", SETUPS[0])]
            turn = round_ % len(runs)
            for daemon, setup in runs[turn:] + runs[:turn]:
                key = (rate, daemon, "-" if daemon in ("limit", "pyfloor") else setup.name)
                samples = results.setdefault(key, Samples())
                one_run(daemon, setup, rate, events, loadgen, pyauditd, samples)
                print(f"latency {rate:8,.0f}/s {daemon:5} {key[2]:6} round {round_ + 1}: "
                      f"log p50 {percentile(samples.log, 50):6.2f} ms "
                      f"p99 {percentile(samples.log, 99):6.2f} ms"
                      + (f", plugin p50 {percentile(samples.plugin, 50):6.2f} ms "
                         f"p99 {percentile(samples.plugin, 99):6.2f} ms" if samples.plugin
                         else ""), flush=True)
    return results


def table(results: dict[tuple[float, str, str], Samples], rounds: int) -> str:
    names = {"c": "C auditd", "py": "pyauditd", "limit": "limit (C reader)",
             "pyfloor": "Python floor (bench/pyfloor.py)"}
    titles = {s.name: s.title for s in SETUPS}
    lines = [
        f"Latency from the call to the record (ms), {rounds} round(s), every event counted:",
        "",
        "| events/s | reader | plugins | log p50 | log p99 | log max | plugin p50 | "
        "plugin p99 | plugin max | events (missing in log / plugin) | CPU µs/event |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(values: list[int]) -> str:
        if not values:
            return "- | - | -"
        return " | ".join(f"{percentile(values, p):.2f}" for p in (50, 99, 100))

    for (rate, daemon, setup), s in results.items():
        lines.append(
            f"| {rate:,.0f} | {names[daemon]} | {titles.get(setup, '-')} | {cells(s.log)} | "
            f"{cells(s.plugin)} | {s.sent:,} ({s.missing_log:,} / "
            f"{s.missing_plugin if setup == 'plugin' else '-'}) | "
            f"{s.cpu / s.sent * 1e6 if s.sent else 0:.1f} |"
        )
    lines += [
        "",
        "The load generator reads CLOCK_REALTIME right before each getppid() call, spaced "
        "evenly at the rate; log: when a follower woken by inotify read the record's line "
        "from the log file; plugin: when a `format = string` plugin read it from its input; "
        "limit: when the C reader (bench/limit.c) got it from recvmmsg, the kernel's own "
        "hand-over; Python floor: bench/pyfloor.py's write mode (recvmmsg through ctypes, "
        "the lines, one write per read) with pyauditd's pause while records trickle in (a "
        f"sleep after a small read, at most {COALESCE_MS:g} ms), its log followed as the "
        "daemons' are. Both daemons use the "
        "benchmark's auditd.conf (flush INCREMENTAL_ASYNC, freq 50). CPU: the reader's "
        "process tree (daemon, dispatcher, plugin) from the "
        "first call until every event was read, per event sent.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,10000", help="events per second, one run each")
    parser.add_argument("--seconds", default="10,2", help="how long each rate runs")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=bench.HERE / "results")
    parser.add_argument("--pyauditd", default=f"{sys.executable} -m auditpy.auditd")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    seconds = [float(s) for s in args.seconds.split(",")]
    if len(seconds) != len(rates):
        parser.error("--seconds needs one duration per rate")
    if not bench.take_the_kernel(this_tree=False):
        return 1
    build = Path(tempfile.mkdtemp(prefix="latency-build-"))
    try:
        loadgen = bench.build_tools(build)
        started = time.monotonic()
        results = run_all(rates, seconds, args.rounds, loadgen, args.pyauditd.split())
    finally:
        shutil.rmtree(build, ignore_errors=True)
    text = table(results, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "LATENCY.md").write_text(text)
    print()
    print(text)
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
