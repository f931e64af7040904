#!/usr/bin/env python3
"""Where pyauditd's time goes under a benchmark load: py-spy attached to the daemon (and its
dispatcher and plugins' Python processes) while one benchmark scenario runs, the samples
summed by function and by line.

    python3 bench/profiles.py [--scenario raw] [--events 600000] [--seconds 4] [--rate 500]
                             [--out bench/results]

SCENARIO is one of bench.py's (raw, enriched, plugin1, ...; the kernel is used as bench.py
uses it, with the same rules) or ``fanin`` (fanin.py's 20 clients; no kernel). py-spy
samples without pausing the process (--nonblocking) and leaves out idle threads, so a
system call shows as the line that makes it: on a busy daemon the recvmmsg, write and send
lines are the kernel's share. Writes PROFILE-SCENARIO.md into --out. py-spy is a
development tool (pip install py-spy); nothing is installed on the daemon's side.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanin

import bench

#: Lines of the report per table.
TOP = 15


class Sampler:
    """py-spy on the first process whose command line holds all of `marks`, once it
    appears (the benchmark starts it), for `seconds`; `wait` gives its raw output."""

    def __init__(self, marks: tuple[str, ...], seconds: int, rate: int, out: Path) -> None:
        self.marks, self.seconds, self.rate, self.out = marks, seconds, rate, out
        self.error = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _find(self) -> int | None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if all(mark.encode() in command for mark in self.marks):
                return int(entry)
        return None

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = self._find()
            if pid is None:
                time.sleep(0.02)
        if pid is None:
            self.error = f"no process with {' '.join(self.marks)} appeared"
            return
        done = subprocess.run(
            ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--threads", "--nonblocking",
             "--rate", str(self.rate), "--duration", str(self.seconds), "--format", "raw",
             "--output", str(self.out)], capture_output=True, text=True)
        if done.returncode != 0 and not self.out.exists():
            self.error = done.stderr.strip()[-500:]

    def wait(self) -> str:
        self._thread.join(self.seconds + 120)
        if self.error:
            raise RuntimeError(f"py-spy: {self.error}")
        return self.out.read_text() if self.out.exists() else ""


def program(frame: str) -> str:
    """A py-spy process frame (``process PID:"COMMAND LINE"``) as ``PROGRAM (PID)``."""
    pid, _, command = frame[len("process "):].partition(":")
    words = command.strip('"').split()
    name = words[words.index("-m") + 1] if "-m" in words[:-1] else (
        Path(words[1]).name if len(words) > 1 and "python" in words[0] else
        Path(words[0]).name if words else "?")
    return f"{name} ({pid})"


def summarize(raw: str) -> dict[str, tuple[int, collections.Counter[str],
                                           collections.Counter[str]]]:
    """Per process and thread: (samples, own samples by function, own samples by line).
    py-spy's raw format is one stack per line, root first, frames split by ';', then the
    count; with --subprocesses and --threads the first frames name the process (a child
    after its parent) and then the thread, ``thread (TID): NAME``."""
    threads: dict[str, tuple[int, collections.Counter[str], collections.Counter[str]]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        frames = stack.split(";")
        process, thread = "", ""
        while frames and frames[0].startswith(("process ", "thread ")):
            frame = frames.pop(0)
            if frame.startswith("process "):
                process = program(frame)
            else:
                thread = frame.partition(": ")[2] or frame
        if not frames:
            continue
        key = ", ".join(part for part in (process, thread) if part) or "main"
        total, functions, lines = threads.get(key, (0, collections.Counter(),
                                                    collections.Counter()))
        leaf = frames[-1]
        functions[leaf.split(" (")[0]] += int(count)
        lines[leaf] += int(count)
        threads[key] = (total + int(count), functions, lines)
    return threads


def report(scenario: str, command: str, raw: str, seconds: float, rate: int) -> str:
    parts = [
        f"# Profile of pyauditd: {scenario}", "",
        f"Machine: {bench.machine()}; {time.strftime('%Y-%m-%d %H:%M')}. Command: `{command}`",
        "",
        f"py-spy {rate} samples/s for {seconds:g} s while the load ran, idle threads left out "
        "(so a share is of the time the thread was running, in Python or in a system call "
        "it made); own samples: the innermost frame, by function and by line.", "",
    ]
    threads = summarize(raw)
    for key, (total, functions, lines) in sorted(threads.items(), key=lambda kv: -kv[1][0]):
        parts += [f"## {key}: {total:,} samples", "",
                  "| share | function (own samples) |", "|---|---|"]
        parts += [f"| {n / total:.1%} | {name} |" for name, n in functions.most_common(TOP)]
        parts += ["", "| share | line (own samples) |", "|---|---|"]
        parts += [f"| {n / total:.1%} | {name} |" for name, n in lines.most_common(TOP)]
        parts.append("")
    if not threads:
        parts.append("No samples: the load ended before py-spy attached (raise --events).")
    return "\n".join(parts) + "\n"


def run_scenario(name: str, events: int, sampler_args: tuple[int, int, Path]) -> str:
    """The scenario's pyauditd run, sampled; py-spy's raw output."""
    build = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        if name == "fanin":
            sampler = Sampler(("-m auditpy.auditd", "fanin-pyauditd-"), *sampler_args)
            fanin.run_round("pyauditd", 1, 20, max(1, events // 20), 1)
        else:
            loadgen = bench.build_tools(build)
            true_copy = build / "bench-true"
            shutil.copy("/bin/true", true_copy)
            sampler = Sampler(("-m auditpy.auditd", "bench-py-"), *sampler_args)
            bench.one_run("py", bench.SCENARIOS[name], events, loadgen, true_copy,
                          [sys.executable, "-m", "auditpy.auditd"], 120)
        return sampler.wait()
    finally:
        shutil.rmtree(build, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="raw", choices=[*bench.SCENARIOS, "fanin"])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=bench.HERE / "results")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("profiles.py: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    if args.scenario != "fanin" and not bench.take_the_kernel():
        return 1
    command = "python3 bench/profiles.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        raw = run_scenario(args.scenario, args.events,
                           (args.seconds, args.rate, Path(tmp) / "samples.txt"))
    text = report(args.scenario, command.strip(), raw, args.seconds, args.rate)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"PROFILE-{args.scenario}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
