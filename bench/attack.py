#!/usr/bin/env python3
"""Attack pyauditd as an operator's worst day would, side by side with the C auditd.

Four attacks, each run on pyauditd and on Debian's C auditd (/sbin/auditd -n) in turn:

- signal storm: 1,500 SIGHUPs back to back, then SIGTERM: time to exit, SIGTERM lost
  (no exit within --exit-timeout), tracebacks on stderr;
- kill -9 under load: a getppid load (lossless: the kernel holds audited processes rather
  than drop their records), the daemon killed with SIGKILL mid-load and restarted at once,
  the load paused from the kill until the new daemon is registered: events lost per kill
  (events generated minus distinct serials in the log), torn or glued records, restart time
  (SIGKILL sent -> the new process registered with the kernel), once per flush mode;
- stall + SIGCONT: a paced load, the daemon stopped (SIGSTOP) for a while, then SIGCONT
  (which also asks for a state report): how long the load took, beside the same load
  without the stall;
- failed reload: SIGHUP with a log_file that cannot be used: is DAEMON_CONFIG res=failed
  written, and are the records sent afterwards logged?

Prints every trial, then a Markdown table (also written to --out/ATTACK.md). Figures, not a
test: the defaults finish in a few minutes; take the final figures on a quiet machine. Run as
root with no audit daemon registered:

    python3 bench/attack.py [--attacks storm,kill,stall,reload] [--kills 8] [--trials 5]

It holds the machine's kernel lock (like bench.py) and puts back the kernel settings, deletes
its rules and stops (and unregisters) every daemon it started, whatever happens (Ctrl-C too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
from auditpy.proto.netlink import (
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_ENABLED,
    STATUS_PID,
    AuditStatus,
)
from auditpy.system.netlink import AuditSocket
from bench import C_AUDITD, hold_kernel_lock, set_status, status

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KEY = "attack"
AUDIT_USER = 1005
T = TypeVar("T")
ATTACKS = ("storm", "kill", "stall", "reload")
LINE = re.compile(rb"^type=[A-Z0-9_]+ msg=audit\(\d+\.\d+:(\d+)\): ")


def kernel_hz() -> int:
    """backlog_wait_time is in jiffies: the kernel's tick rate, from its config when shown."""
    try:
        out = subprocess.run(["zcat", "/proc/config.gz"], capture_output=True, text=True,
                             check=True).stdout
        found = re.search(r"^CONFIG_HZ=(\d+)$", out, re.M)
        if found:
            return int(found.group(1))
    except (OSError, subprocess.CalledProcessError):
        pass
    boot = Path(f"/boot/config-{platform.release()}")
    if boot.exists():
        found = re.search(r"^CONFIG_HZ=(\d+)$", boot.read_text(), re.M)
        if found:
            return int(found.group(1))
    return 250  # Debian's


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T:
    """The predicate's first true value, or its last value when `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the daemons and their processes ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str  # "c" or "py"
    title: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, root: Path) -> list[str]:
        conf = str(root / "etc")
        if self.key == "c":
            return [*self.command, "-n", "-s", "nochange", "-c", conf]
        return [*self.command, "-n", "-s", "nochange", "-c", conf, "--run-dir",
                str(root / "run")]


#: Every process this script started that may still run: stopped whatever happens.
CHILDREN: list[subprocess.Popen[bytes]] = []
#: Pids of the daemons started, so that a registration one of them left is undone.
DAEMON_PIDS: set[int] = set()


def spawn(argv: list[str], *, env: dict[str, str] | None = None,
          stderr: Path | None = None) -> subprocess.Popen[bytes]:
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(open(stderr, "ab")) if stderr else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **env} if env else None)
    CHILDREN.append(proc)
    return proc


def stop_all() -> None:
    """Put everything this script started out of the way: stopped processes are continued
    first, daemons get SIGTERM (and unregister), the rest SIGKILL."""
    for proc in CHILDREN:
        if proc.poll() is not None:
            continue
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM if proc.pid in DAEMON_PIDS else signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    CHILDREN.clear()
    release_registration()


def release_registration() -> None:
    """A daemon killed with SIGKILL stays the kernel's until the kernel notices; a request
    to unregister makes it check the connection (audit_replace) and let go of a dead one."""
    try:
        pid = status().pid
    except OSError:
        return
    if pid and pid in DAEMON_PIDS and not Path(f"/proc/{pid}").exists():
        with contextlib.suppress(OSError, TimeoutError):
            set_status(AuditStatus(mask=STATUS_PID, pid=0))


class Daemon:
    """One daemon of a target in a directory of its own (configuration, log, run dir)."""

    def __init__(self, target: Target, root: Path) -> None:
        self.target = target
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "log" / "audit.log"

    @property
    def stderr_path(self) -> Path:
        return self.root / "daemon.err"

    def write_config(self, **overrides: str) -> None:
        conf = self.root / "etc"
        (conf / "plugins.d").mkdir(parents=True, exist_ok=True)
        (self.root / "log").mkdir(mode=0o700, exist_ok=True)
        (self.root / "run").mkdir(exist_ok=True)
        settings = {
            "log_file": str(self.log), "log_format": "RAW", "flush": "INCREMENTAL_ASYNC",
            "freq": "50", "num_logs": "2", "max_log_file": "0",
            "max_log_file_action": "IGNORE", "space_left": "2", "admin_space_left": "1",
            "space_left_action": "SYSLOG", "admin_space_left_action": "SUSPEND",
            "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND",
            "priority_boost": "4", "q_depth": "2000", "overflow_action": "SYSLOG",
            "plugin_dir": str(conf / "plugins.d"),
        }
        settings.update(overrides)
        path = conf / "auditd.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        os.chmod(path, 0o640)

    def start(self) -> subprocess.Popen[bytes]:
        proc = spawn(self.target.argv(self.root), env=dict(self.target.env),
                     stderr=self.stderr_path)
        DAEMON_PIDS.add(proc.pid)
        self.proc = proc
        return proc

    def wait_started(self) -> None:
        """Registered, and its DAEMON_START on disk: the daemon is reading."""
        self.wait_registered()
        if self.wait_line(b"type=DAEMON_START") is None:
            raise RuntimeError(f"{self.target.title}: no DAEMON_START")

    def wait_registered(self, timeout: float = 15.0, interval: float = 0.002) -> float:
        """Seconds until the kernel names our process as its daemon (from now)."""
        proc = self.proc
        assert proc is not None
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if status().pid == proc.pid:
                return time.monotonic() - start
            if proc.poll() is not None:
                break
            time.sleep(interval)
        raise RuntimeError(f"{self.target.title} did not register: {self.stderr()[-2000:]}")

    def wait_line(self, needle: bytes, timeout: float = 10.0) -> bytes | None:
        def find() -> bytes | None:
            with contextlib.suppress(FileNotFoundError):
                for line in self.log.read_bytes().splitlines():
                    if needle in line:
                        return line
            return None
        return wait_for(find, timeout)

    def stderr(self) -> str:
        path = self.stderr_path
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        wait_for(lambda: status().pid != proc.pid, 5)
        release_registration()


@contextmanager
def daemon_dir(target: Target, keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=f"attack-{target.key}-"))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def kernel_settings(backlog_limit: int, backlog_wait_time: int) -> Iterator[None]:
    before = status()
    mask = STATUS_ENABLED | STATUS_BACKLOG_LIMIT | STATUS_BACKLOG_WAIT_TIME
    try:
        set_status(AuditStatus(mask=mask, enabled=1, backlog_limit=backlog_limit,
                               backlog_wait_time=backlog_wait_time))
        yield
    finally:
        set_status(AuditStatus(mask=mask, enabled=before.enabled,
                               backlog_limit=before.backlog_limit,
                               backlog_wait_time=before.backlog_wait_time))


def load_rule(loadgen: Path) -> list[str]:
    return ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={loadgen}",
            "-k", KEY]


# -- reading the log ----------------------------------------------------------------------------


@dataclass
class LogScan:
    """What a log holds: the load's events (by serial), lines that are not one whole
    record (torn, or two glued together), duplicates."""

    serials: set[int] = field(default_factory=set)
    duplicates: int = 0
    torn: int = 0
    lines: int = 0


def scan_log(paths: list[Path]) -> LogScan:
    scan = LogScan()
    marker = f'key="{KEY}"'.encode()
    for path in paths:
        if not path.exists():
            continue
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            scan.torn += 1  # a torn tail (the daemon still running repairs it at its next open)
        for line in data.split(b"\n"):
            if not line:
                continue
            scan.lines += 1
            found = LINE.match(line)
            if found is None or line.count(b" msg=audit(") != 1:
                scan.torn += 1
                continue
            if line.startswith(b"type=SYSCALL ") and line.endswith(marker):
                serial = int(found.group(1))
                if serial in scan.serials:
                    scan.duplicates += 1
                scan.serials.add(serial)
    return scan


class EventCounter:
    """The load's SYSCALL records in a growing log, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.counter = bench.LogCounter(path, KEY)

    def settle(self, expected: int, quiet: float, timeout: float) -> int:
        """Count until `expected` are logged or nothing new came for `quiet` seconds."""
        last, still = -1, time.monotonic()
        deadline = still + timeout
        while time.monotonic() < deadline:
            now = self.counter.poll()
            if now >= expected:
                return now
            if now != last:
                last, still = now, time.monotonic()
            elif time.monotonic() - still >= quiet:
                return now
            time.sleep(0.02)
        return self.counter.poll()


# -- attack 1: the signal storm -----------------------------------------------------------------


@dataclass
class StormTrial:
    exited: bool
    seconds: float
    traceback: bool
    unregistered: bool


def signal_storm(target: Target, signals: int, exit_timeout: float, keep: bool) -> StormTrial:
    with daemon_dir(target, keep) as root:
        daemon = Daemon(target, root)
        daemon.write_config()
        proc = daemon.start()
        try:
            daemon.wait_started()
            for _ in range(signals):
                os.kill(proc.pid, signal.SIGHUP)
            os.kill(proc.pid, signal.SIGTERM)
            sent = time.monotonic()
            try:
                proc.wait(exit_timeout)
                exited = True
            except subprocess.TimeoutExpired:
                exited = False
            seconds = time.monotonic() - sent
            unregistered = bool(wait_for(lambda: status().pid != proc.pid, 5))
        finally:
            daemon.stop()
        err = daemon.stderr()
        return StormTrial(exited, seconds, "Traceback" in err or "Exception ignored" in err,
                          unregistered)


# -- attack 2: kill -9 under load ---------------------------------------------------------------


@dataclass
class KillRun:
    flush: str
    generated: int = 0
    logged: int = 0
    duplicates: int = 0
    torn: int = 0
    kills: int = 0
    under_load: int = 0
    #: events the log lacks after each kill (generated minus logged, by serial)
    lost: list[int] = field(default_factory=list)
    restart: list[float] = field(default_factory=list)
    kernel_lost: int = 0


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def pause(load: subprocess.Popen[bytes]) -> None:
    """Stop the load, and wait until it has stopped. A process the kernel holds (its queue
    over backlog_limit) sleeps on the same exclusive wait queue as a sender of a kernel
    request, and a request could take the wake-up meant for it (it would then sleep out
    backlog_wait_time): the restart is timed by asking the kernel, only once no audited
    process sleeps there."""
    load.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 120
    while process_state(load.pid) not in ("T", "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.0005)


def kill_storm(target: Target, flush: str, kills: int, per_cycle: int, loadgen: Path,
               rng: random.Random, kill_after: tuple[float, float], keep: bool) -> KillRun:
    run = KillRun(flush)
    with daemon_dir(target, keep) as root:
        daemon = Daemon(target, root)
        daemon.write_config(flush=flush)
        daemon.start()
        try:
            daemon.wait_started()
            counter = EventCounter(daemon.log)
            lost_before = status().lost
            with bench.rule(load_rule(loadgen)):
                for _ in range(kills):
                    load = spawn([str(loadgen), "getppid", str(per_cycle)])
                    time.sleep(rng.uniform(*kill_after))
                    if load.poll() is None:
                        run.under_load += 1
                        pause(load)
                    old = daemon.proc
                    assert old is not None
                    killed = time.monotonic()
                    old.kill()
                    old.wait()
                    daemon.start()
                    daemon.wait_registered()
                    run.restart.append(time.monotonic() - killed)
                    run.kills += 1
                    with contextlib.suppress(OSError):
                        load.send_signal(signal.SIGCONT)
                    load.wait(120)
                    run.generated += per_cycle
                    logged = counter.settle(run.generated, quiet=1.0, timeout=60)
                    run.lost.append(run.generated - logged - sum(run.lost))
            run.kernel_lost = status().lost - lost_before
        finally:
            daemon.stop()
        scan = scan_log(sorted(daemon.log.parent.glob("audit.log*")))
        run.logged = len(scan.serials)
        run.duplicates = scan.duplicates
        run.torn = scan.torn
    return run


# -- attack 3: stall + SIGCONT ------------------------------------------------------------------


@dataclass
class StallRun:
    stalled: bool
    seconds: float
    generated: int
    logged: int
    state_report: bool


def stall(target: Target, loadgen: Path, rate: int, seconds: float, stop_at: float,
          stop_for: float, stalled: bool, keep: bool) -> StallRun:
    with daemon_dir(target, keep) as root:
        daemon = Daemon(target, root)
        daemon.write_config()
        proc = daemon.start()
        try:
            daemon.wait_started()
            counter = EventCounter(daemon.log)
            with bench.rule(load_rule(loadgen)):
                started = time.monotonic()
                load = spawn([str(loadgen), "paced", str(rate), str(seconds)])
                if stalled:
                    time.sleep(max(0.0, started + stop_at - time.monotonic()))
                    os.kill(proc.pid, signal.SIGSTOP)
                    time.sleep(stop_for)
                    os.kill(proc.pid, signal.SIGCONT)
                try:
                    load.wait(max(120.0, seconds * 10))
                except subprocess.TimeoutExpired:
                    load.kill()
                    load.wait()
                took = time.monotonic() - started
                generated = int(rate * seconds)
                logged = counter.settle(generated, quiet=2.0, timeout=120)
            # The C daemon's state report (SIGCONT) goes to /var/run/auditd.state, pyauditd's
            # to its --run-dir: both are looked for, written since the daemon started.
            report = any(p.exists() and p.stat().st_mtime >= started - 1
                         for p in (root / "run" / "auditd.state",
                                   Path("/var/run/auditd.state")))
        finally:
            daemon.stop()
    return StallRun(stalled, took, generated, logged, report and stalled)


# -- attack 4: a refused reload -----------------------------------------------------------------


@dataclass
class ReloadRun:
    config_failed_record: bool
    logged_after: int
    sent_after: int
    running: bool
    #: the kernel's enabled flag as the messages went out (a user message is dropped while 0)
    enabled: int = 1


def failed_reload(target: Target, messages: int, keep: bool) -> ReloadRun:
    with daemon_dir(target, keep) as root:
        daemon = Daemon(target, root)
        daemon.write_config()
        proc = daemon.start()
        try:
            daemon.wait_started()
            blocker = root / "not-a-directory"
            blocker.write_text("")
            daemon.write_config(log_file=str(blocker / "audit.log"))
            os.kill(proc.pid, signal.SIGHUP)
            line = daemon.wait_line(b"type=DAEMON_CONFIG", timeout=5)
            failed = line is not None and b"res=failed" in line
            # The records: user messages, as `auditctl -m` sends them.
            enabled = status().enabled
            sock = AuditSocket()
            try:
                for i in range(messages):
                    sock.request(AUDIT_USER, f"attack-after-refusal-{i}".encode() + b"\0")
            finally:
                sock.close()

            def logged() -> int:
                with contextlib.suppress(FileNotFoundError):
                    return daemon.log.read_bytes().count(b"attack-after-refusal-")
                return 0
            wait_for(lambda: logged() >= messages, 5)
            running = proc.poll() is None
        finally:
            daemon.stop()
        # Counted before the directory goes (it went first, and every count read 0).
        count = logged()
    return ReloadRun(failed, count, messages, running, enabled)


# -- the report ---------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values) * 1000:.0f} ms median, "
            f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f}")


def storm_rows(trials: dict[str, list[StormTrial]], signals: int,
               exit_timeout: float) -> list[tuple[str, str, str]]:
    def cells(fn: Callable[[list[StormTrial]], str]) -> tuple[str, str]:
        return fn(trials.get("c", [])), fn(trials.get("py", []))
    title = f"signal storm ({signals:,} SIGHUP, then SIGTERM)"
    return [
        (f"{title}: exited within {exit_timeout:g} s", *cells(
            lambda ts: f"{sum(t.exited for t in ts)} of {len(ts)}")),
        (f"{title}: time to exit", *cells(
            lambda ts: ms([t.seconds for t in ts if t.exited]))),
        (f"{title}: SIGTERM lost", *cells(
            lambda ts: f"{sum(not t.exited for t in ts)} of {len(ts)}")),
        (f"{title}: tracebacks on stderr", *cells(
            lambda ts: f"{sum(t.traceback for t in ts)} of {len(ts)}")),
        (f"{title}: registration released", *cells(
            lambda ts: f"{sum(t.unregistered for t in ts)} of {len(ts)}")),
    ]


def kill_rows(runs: dict[str, list[KillRun]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    flushes = sorted({r.flush for rs in runs.values() for r in rs})
    for flush in flushes:
        c = next((r for r in runs.get("c", []) if r.flush == flush), None)
        py = next((r for r in runs.get("py", []) if r.flush == flush), None)

        def cells(fn: Callable[[KillRun], str], c: KillRun | None = c,
                  py: KillRun | None = py) -> tuple[str, str]:
            return (fn(c) if c else "-"), (fn(py) if py else "-")
        title = f"kill -9 under load, flush = {flush}"
        rows += [
            (f"{title}: kills (under load)", *cells(lambda r: f"{r.kills} ({r.under_load})")),
            (f"{title}: events lost per kill", *cells(
                lambda r: f"{statistics.mean(r.lost):,.0f} mean, {min(r.lost):,}-{max(r.lost):,}"
                if r.lost else "-")),
            (f"{title}: events generated / logged", *cells(
                lambda r: f"{r.generated:,} / {r.logged:,}")),
            (f"{title}: torn or glued records", *cells(lambda r: f"{r.torn}")),
            (f"{title}: duplicated events", *cells(lambda r: f"{r.duplicates}")),
            (f"{title}: kernel's lost counter", *cells(lambda r: f"{r.kernel_lost:,}")),
            (f"{title}: restart, kill -9 to registered", *cells(lambda r: ms(r.restart))),
        ]
    return rows


def stall_rows(runs: dict[str, list[StallRun]], rate: int, seconds: float, stop_for: float,
               ) -> list[tuple[str, str, str]]:
    def cells(stalled: bool, fn: Callable[[list[StallRun]], str]) -> tuple[str, str]:
        out = []
        for key in ("c", "py"):
            chosen = [r for r in runs.get(key, []) if r.stalled == stalled]
            out.append(fn(chosen) if chosen else "-")
        return out[0], out[1]

    def took(rs: list[StallRun]) -> str:
        return ", ".join(f"{r.seconds:.1f} s" for r in rs)

    def logged(rs: list[StallRun]) -> str:
        return ", ".join(f"{r.logged:,} / {r.generated:,}" for r in rs)
    title = f"stall: {seconds:g} s load at {rate:,} events/s"
    return [
        (f"{title}, no stall: load time", *cells(False, took)),
        (f"{title}, daemon stopped {stop_for:g} s then SIGCONT: load time", *cells(True, took)),
        (f"{title}, stopped and continued: events logged / generated", *cells(True, logged)),
        (f"{title}, stopped and continued: state report written", *cells(
            True, lambda rs: f"{sum(r.state_report for r in rs)} of {len(rs)}")),
    ]


def reload_rows(runs: dict[str, list[ReloadRun]]) -> list[tuple[str, str, str]]:
    def cells(fn: Callable[[ReloadRun], str]) -> tuple[str, str]:
        out = [fn(runs[k][0]) if runs.get(k) else "-" for k in ("c", "py")]
        return out[0], out[1]
    title = "failed reload (SIGHUP, log_file in a non-directory)"
    return [
        (f"{title}: DAEMON_CONFIG res=failed written", *cells(
            lambda r: "yes" if r.config_failed_record else "no")),
        (f"{title}: records logged afterwards", *cells(
            lambda r: f"{r.logged_after} of {r.sent_after}")),
        (f"{title}: still running", *cells(lambda r: "yes" if r.running else "no")),
    ]


def interpreter_start() -> str:
    """How long a bare interpreter takes to start here, with and without site (a .pth file
    of the machine's may import more than the daemon does)."""
    def best(args: list[str]) -> float:
        times = []
        for _ in range(5):
            t = time.monotonic()
            subprocess.run([sys.executable, *args, "-c", "pass"], check=True)
            times.append(time.monotonic() - t)
        return min(times) * 1000
    return (f"`{Path(sys.executable).name} -c pass` takes {best([]):.0f} ms here "
            f"({best(['-S']):.0f} ms with -S, without site)")


def table(rows: list[tuple[str, str, str]], notes: list[str]) -> str:
    load = os.getloadavg()
    lines = [
        f"Attacks of {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python "
        f"{platform.python_version()}, C auditd = Debian {bench.c_version()}; load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when the table was made.",
        "",
        "| attack | C auditd | pyauditd |",
        "|---|---|---|",
        *[f"| {a} | {c} | {py} |" for a, c, py in rows],
        "",
        *notes,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--daemons", default="c,py", help="c, py or both")
    parser.add_argument("--pyauditd", default=f"{sys.executable} -m auditpy.auditd",
                        help="the pyauditd command (split at spaces)")
    parser.add_argument("--src", type=Path, default=REPO,
                        help="the source tree whose src/ pyauditd runs from")
    parser.add_argument("--trials", type=int, default=5, help="signal storms per daemon")
    parser.add_argument("--signals", type=int, default=1500)
    parser.add_argument("--exit-timeout", type=float, default=15.0)
    parser.add_argument("--kills", type=int, default=8, help="kill -9 per daemon and flush")
    parser.add_argument("--flush", default="INCREMENTAL_ASYNC,SYNC")
    parser.add_argument("--per-kill", type=int, default=50_000,
                        help="events generated between two kills")
    parser.add_argument("--kill-after", default="0.1,0.4",
                        help="seconds of load before a kill: uniform between these")
    parser.add_argument("--kill-backlog-limit", type=int, default=64,
                        help="backlog_limit for the kill -9 attack (the kernel's default)")
    parser.add_argument("--stall-rate", type=int, default=50_000)
    parser.add_argument("--stall-seconds", type=float, default=10.0)
    parser.add_argument("--stall-at", type=float, default=2.0)
    parser.add_argument("--stall-for", type=float, default=2.0)
    parser.add_argument("--messages", type=int, default=100,
                        help="records sent after the failed reload")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' directories")
    args = parser.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    if unknown := set(attacks) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("the attacks need root", file=sys.stderr)
        return 1
    src = (args.src / "src").resolve()
    py = Target("py", "pyauditd", tuple(args.pyauditd.split()),
                (("PYTHONPATH", str(src)),))
    c = Target("c", "C auditd", (C_AUDITD,))
    targets = [t for t in (c, py) if t.key in args.daemons.split(",")]
    low, high = (float(x) for x in args.kill_after.split(","))
    kill_after = (low, high)
    rng = random.Random(args.seed)
    hz = kernel_hz()
    # A SIGTERM must still run the finally blocks that stop the daemons, delete the rules
    # and put the kernel settings back (Ctrl-C raises KeyboardInterrupt, which does).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    hold_kernel_lock()
    if status().pid:
        print(f"an audit daemon (pid {status().pid}) is registered; stop it first",
              file=sys.stderr)
        return 1
    build = Path(tempfile.mkdtemp(prefix="attack-build-"))
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    try:
        # The rule matches this program alone, by its path.
        loadgen = build / "attack-loadgen"
        subprocess.run(["gcc", "-O2", "-o", str(loadgen), str(HERE / "loadgen.c")],
                       check=True)
        wait_60s = 60 * hz
        if "storm" in attacks:
            storms: dict[str, list[StormTrial]] = {}
            with kernel_settings(8192, wait_60s):
                for i in range(args.trials):
                    for target in targets if i % 2 == 0 else targets[::-1]:
                        trial = signal_storm(target, args.signals, args.exit_timeout,
                                             args.keep)
                        storms.setdefault(target.key, []).append(trial)
                        print(f"storm  {target.title:9} exited={trial.exited} "
                              f"in {trial.seconds * 1000:.0f} ms traceback={trial.traceback}",
                              flush=True)
            rows += storm_rows(storms, args.signals, args.exit_timeout)
        if "kill" in attacks:
            kills: dict[str, list[KillRun]] = {}
            with kernel_settings(args.kill_backlog_limit, wait_60s):
                for flush in args.flush.split(","):
                    for target in targets:
                        run = kill_storm(target, flush, args.kills, args.per_kill, loadgen,
                                         rng, kill_after, args.keep)
                        kills.setdefault(target.key, []).append(run)
                        print(f"kill   {target.title:9} flush={flush}: lost per kill "
                              f"{run.lost}, torn {run.torn}, restart "
                              f"{[round(s * 1000) for s in run.restart]} ms", flush=True)
            rows += kill_rows(kills)
            notes.append(
                f"kill -9: {args.kills} kills per daemon and flush mode, each after "
                f"{kill_after[0]:g}-{kill_after[1]:g} s of a getppid load of "
                f"{args.per_kill:,} events (backlog_limit {args.kill_backlog_limit}, "
                f"backlog_wait_time 60 s); the load is stopped (SIGSTOP) just before the kill "
                "and continued once the new daemon is registered. Events lost: generated "
                "minus distinct serials logged, counted after each restart once the log "
                "stopped growing. Restart: from SIGKILL to the new process registered with "
                "the kernel, the new one started as soon as the old one was reaped. On a "
                "kernel booted without audit=1 what the kernel had not yet handed to the "
                "killed daemon is dropped (kauditd_hold_skb), for both daemons."
            )
        if "stall" in attacks:
            stalls: dict[str, list[StallRun]] = {}
            with kernel_settings(64, wait_60s):
                for stalled in (False, True):
                    for target in targets:
                        srun = stall(target, loadgen, args.stall_rate, args.stall_seconds,
                                     args.stall_at, args.stall_for, stalled, args.keep)
                        stalls.setdefault(target.key, []).append(srun)
                        print(f"stall  {target.title:9} stalled={stalled}: "
                              f"{srun.seconds:.1f} s, {srun.logged:,}/{srun.generated:,} "
                              "logged", flush=True)
            rows += stall_rows(stalls, args.stall_rate, args.stall_seconds, args.stall_for)
            notes.append(
                f"stall: backlog_limit 64, backlog_wait_time 60 s; the daemon is stopped "
                f"(SIGSTOP) {args.stall_at:g} s into the load, continued (SIGCONT, which "
                "also asks for a state report) after the stop; load time: from the start of "
                "the paced load until its last call returned."
            )
        if "reload" in attacks:
            reloads: dict[str, list[ReloadRun]] = {}
            with kernel_settings(8192, wait_60s):
                for target in targets:
                    rrun = failed_reload(target, args.messages, args.keep)
                    reloads.setdefault(target.key, []).append(rrun)
                    print(f"reload {target.title:9}: res=failed {rrun.config_failed_record}, "
                          f"{rrun.logged_after}/{rrun.sent_after} logged after "
                          f"(kernel enabled={rrun.enabled} as they were sent)", flush=True)
            rows += reload_rows(reloads)
        notes.append(f"Interpreter: {interpreter_start()}; pyauditd ran as "
                     f"`{args.pyauditd}` from {src}.")
    finally:
        stop_all()
        shutil.rmtree(build, ignore_errors=True)
    text = table(rows, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ATTACK.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
