#!/usr/bin/env python3
"""Benchmark pyauditd side by side with the C auditd on this kernel.

For each scenario both daemons and the limit (bench/limit.c: a C reader that registers and
discards what it reads) run in turn, several rounds alternating, on one shared configuration;
the figures are medians, and the ratios are pyauditd / C and pyauditd / limit from the same
run.
Writes RESULTS.md (a Markdown table) and RESULTS.png (a chart, if matplotlib is installed)
into --out. Run as root with no audit daemon registered:

    python3 bench/bench.py [--events 100000] [--rounds 3] [--scenarios raw,enriched,...]

The kernel settings it changes (enabled, backlog_limit, backlog_wait_time) and the rules it
adds are put back whatever happens.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import fcntl
import os
import platform
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import auditpy
from auditpy.proto.netlink import (
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_ENABLED,
    AuditStatus,
)
from auditpy.system.netlink import AuditSocket

HERE = Path(__file__).resolve().parent
C_AUDITD = "/sbin/auditd"
#: What each round runs: the C auditd, pyauditd and the limit (bench/limit.c: a C reader
#: that registers and discards what it reads, the fastest a daemon could be handed records).
DAEMONS = ("c", "py", "limit")
CLK_TCK = os.sysconf("SC_CLK_TCK")


#: Taken by the kernel tests too, so a benchmark never runs beside them on one machine.
KERNEL_LOCK = "/run/auditpy-kernel.lock"


def hold_kernel_lock() -> None:
    """Wait for the machine's kernel audit state to be ours (held until this process ends)."""
    if os.environ.get("AUDITPY_KERNEL_LOCK_HELD"):
        return  # started by a test session that holds it
    fd = os.open(KERNEL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def take_the_kernel(*, this_tree: bool = True) -> bool:
    """What every benchmark does before it touches the kernel: root, a SIGTERM (timeout,
    Ctrl-C) that still runs the finally blocks stopping the daemons, deleting the rules and
    putting the kernel settings back, the kernel lock, and no daemon registered. With
    `this_tree` the daemons run this tree's code (not an installed one), with or without
    site (-S). False (said on stderr) when the benchmark cannot run."""
    if os.geteuid() != 0:
        print("the benchmark needs root", file=sys.stderr)
        return False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if this_tree:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parent / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    hold_kernel_lock()
    if status().pid:
        print(f"an audit daemon (pid {status().pid}) is registered; stop it first",
              file=sys.stderr)
        return False
    return True


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    log_format: str = "RAW"
    plugins: int = 0
    workload: str = "getppid"
    lossy: bool = False
    #: one more plugin that never reads its input
    stuck: bool = False
    #: whole events as JSON: laurel 0.5.1 as a plugin of the C daemon, builtin_json in
    #: pyauditd's dispatcher; the run ends when every event is in the JSON output
    json: bool = False


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("raw", "lossless, RAW"),
        Scenario("enriched", "lossless, ENRICHED", log_format="ENRICHED"),
        Scenario("plugin1", "lossless, RAW, 1 plugin", plugins=1),
        Scenario("plugin3", "lossless, RAW, 3 plugins", plugins=3),
        Scenario("stuck", "lossless, RAW, 1 plugin + 1 stuck plugin", plugins=1, stuck=True),
        Scenario("lossy", "burst, backlog_wait_time 0", lossy=True),
        Scenario("exec", "fork/exec of true, execve rule", workload="exec"),
        Scenario("json", "JSON events: C + laurel vs builtin_json, getppid", json=True),
        Scenario("json-exec", "JSON events: C + laurel vs builtin_json, fork/exec",
                 workload="exec", json=True),
    ]
}


@dataclass
class Run:
    events: int
    seconds: float
    cpu: float
    rss_kib: int
    dispatcher_rss_kib: int
    lost: int
    #: the run hit --max-seconds before every event was logged
    capped: bool = False
    #: the fewest events any (working) plugin received, when there are plugins
    delivered: int | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu / self.events * 100_000 if self.events else 0.0


@dataclass
class Result:
    scenario: Scenario
    runs: dict[str, list[Run]] = field(
        default_factory=lambda: {daemon: [] for daemon in DAEMONS})


# -- the kernel -------------------------------------------------------------------------------


def status() -> AuditStatus:
    sock = AuditSocket()
    try:
        return sock.get_status()
    finally:
        sock.close()


def set_status(st: AuditStatus) -> None:
    sock = AuditSocket()
    try:
        sock.set_status(st)
    finally:
        sock.close()


@contextmanager
def kernel_settings(backlog_wait_time: int | None) -> Iterator[None]:
    before = status()
    try:
        set_status(AuditStatus(
            mask=STATUS_ENABLED | STATUS_BACKLOG_LIMIT | STATUS_BACKLOG_WAIT_TIME,
            enabled=1, backlog_limit=8192,
            backlog_wait_time=before.backlog_wait_time if backlog_wait_time is None
            else backlog_wait_time,
        ))
        yield
    finally:
        set_status(AuditStatus(
            mask=STATUS_ENABLED | STATUS_BACKLOG_LIMIT | STATUS_BACKLOG_WAIT_TIME,
            enabled=before.enabled, backlog_limit=before.backlog_limit,
            backlog_wait_time=before.backlog_wait_time,
        ))


@contextmanager
def rule(args: list[str]) -> Iterator[None]:
    subprocess.run(["auditctl", "-a", *args], check=True, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        subprocess.run(["auditctl", "-d", *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


# -- processes ----------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields_ = f.read().rsplit(")", 1)[1].split()
            total += int(fields_[11]) + int(fields_[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def peak_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class MarkerCounter:
    """Counts markers in a file's whole lines as it grows, reading only what is new."""

    def __init__(self, path: Path, *markers: bytes) -> None:
        self.path = path
        self.markers = markers
        self.offset = 0
        self.tail = b""
        self.count = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        self.count += sum(data[:cut].count(marker) for marker in self.markers)
        return self.count


class LogCounter(MarkerCounter):
    """Counts the SYSCALL records of a rule key in an audit log.

    The key ends those lines (RAW) or comes right before the ENRICHED separator; the
    CONFIG_CHANGE records of adding and deleting the rule carry it in mid-line.
    """

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(path, f'key="{key}"\n'.encode(), f'key="{key}"\x1d'.encode())


class JsonCounter(MarkerCounter):
    """Counts the syscall events of a rule key in a JSON output."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(path, f'"key":"{key}","ARGV"'.encode())


# -- one run ----------------------------------------------------------------------------------


def plugin_outputs(root: Path, scenario: Scenario) -> list[Path]:
    """Where each working plugin writes what it receives: tmpfs when there is one, so that
    counting what plugins got costs them no disk I/O."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else root
    return [base / f"{root.name}-plugin{i}.out" for i in range(scenario.plugins)]


def write_config(root: Path, scenario: Scenario, daemon: str = "c") -> Path:
    conf = root / "etc"
    plugins = conf / "plugins.d"
    plugins.mkdir(parents=True)
    (root / "log").mkdir(mode=0o700)
    (root / "run").mkdir()
    (conf / "auditd.conf").write_text(
        f"log_file = {root}/log/audit.log\n"
        f"log_format = {scenario.log_format}\n"
        "flush = INCREMENTAL_ASYNC\nfreq = 50\nnum_logs = 2\nmax_log_file = 0\n"
        "max_log_file_action = IGNORE\nspace_left = 2\nadmin_space_left = 1\n"
        "space_left_action = SYSLOG\nadmin_space_left_action = SUSPEND\n"
        "disk_full_action = SUSPEND\ndisk_error_action = SUSPEND\npriority_boost = 4\n"
        f"q_depth = 2000\noverflow_action = SYSLOG\nplugin_dir = {plugins}\n"
    )
    for i, out in enumerate(plugin_outputs(root, scenario)):
        # cat, as a plugin that does nothing but keep what it is given
        program = root / f"plugin{i}.sh"
        program.write_text(f"#!/bin/sh\nexec /bin/cat > {out}\n")
        os.chmod(program, 0o755)
        (plugins / f"cat{i}.conf").write_text(
            f"active = yes\ndirection = out\npath = {program}\ntype = always\nformat = string\n"
        )
    if scenario.json:
        write_json_config(root, plugins, daemon)
    if scenario.stuck:
        stuck = root / "stuck.sh"
        stuck.write_text("#!/bin/sh\ntrap '' HUP\nexec sleep 100000\n")
        os.chmod(stuck, 0o755)
        (plugins / "stuck.conf").write_text(
            f"active = yes\ndirection = out\npath = {stuck}\ntype = always\nformat = string\n"
        )
    for path in [conf / "auditd.conf", *plugins.iterdir()]:
        os.chmod(path, 0o640)
    return conf


#: The same options for both: laurel's defaults (pid, container and script enrichment,
#: LD_PRELOAD/LD_LIBRARY_PATH of execs) with both translations on, as ENRICHED logs have.
LAUREL_TOML = """directory = "{directory}"
[auditlog]
file = "{file}"
size = 100000000000
[translate]
universal = true
user-db = true
"""
JSON_CONF = "output = {output}\nsize = 100000000000\ntranslate_universal = yes\n" \
    "translate_userdb = yes\n"


def json_output(root: Path) -> Path:
    """Where the JSON events go (tmpfs when there is one, as for the plugin outputs)."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else root) / f"{root.name}-events.json"


def write_json_config(root: Path, plugins: Path, daemon: str) -> None:
    out = json_output(root)
    if daemon == "c":
        (root / "laurel.toml").write_text(
            LAUREL_TOML.format(directory=out.parent, file=out.name))
        (plugins / "laurel.conf").write_text(
            f"active = yes\ndirection = out\npath = /usr/sbin/laurel\ntype = always\n"
            f"args = --config {root / 'laurel.toml'}\nformat = string\n"
        )
    else:
        (root / "json.conf").write_text(JSON_CONF.format(output=out))
        os.chmod(root / "json.conf", 0o644)
        (plugins / "json.conf").write_text(
            f"active = yes\ndirection = out\npath = builtin_json\n"
            f"args = {root / 'json.conf'}\n"
        )


def one_run(daemon: str, scenario: Scenario, events: int, loadgen: Path, true_copy: Path,
            pyauditd: list[str], max_seconds: float) -> Run:
    if daemon == "limit":
        return limit_run(scenario, events, loadgen, true_copy, max_seconds)
    root = Path(tempfile.mkdtemp(prefix=f"bench-{daemon}-"))
    try:
        conf = write_config(root, scenario, daemon)
        if daemon == "c":
            argv = [C_AUDITD, "-n", "-s", "nochange", "-c", str(conf)]
        else:
            argv = [*pyauditd, "-n", "-s", "nochange", "-c", str(conf),
                    "--run-dir", str(root / "run")]
        with kernel_settings(0 if scenario.lossy else None), \
                open(root / "daemon.err", "wb") as errors:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
            try:
                return measure(proc, scenario, events, loadgen, true_copy, root, max_seconds)
            finally:
                descendants = tree(proc.pid)[1:]
                stop_reader(proc)
                # The C daemon's plugins start with SIGTERM blocked: one that never reads
                # its input outlives the daemon.
                for pid in descendants:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
    finally:
        for out in plugin_outputs(root, scenario):
            out.unlink(missing_ok=True)
        json_output(root).unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def workload(scenario: Scenario, events: int, loadgen: Path,
             true_copy: Path) -> tuple[str, list[str], list[str]]:
    """The rule key, the rule and the load generator's command line of a scenario."""
    if scenario.workload == "exec":
        key = "bench-exec"
        rule_args = ["always,exit", "-F", "arch=b64", "-S", "execve", "-F", f"exe={true_copy}",
                     "-k", key]
        command = [str(loadgen), "exec", str(events), str(true_copy)]
    else:
        key = "bench"
        rule_args = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={loadgen}",
                     "-k", key]
        command = [str(loadgen), "getppid", str(events)]
    return key, rule_args, command


def measure(proc: subprocess.Popen[bytes], scenario: Scenario, events: int, loadgen: Path,
            true_copy: Path, root: Path, max_seconds: float,
            counter: MarkerCounter | CountFile | None = None) -> Run:
    """One run against a registered reader; `counter` (the limit's) replaces the log's."""
    if not wait_for(lambda: status().pid == proc.pid or proc.poll() is not None, 15):
        raise RuntimeError(f"daemon {proc.args} did not register")
    if proc.poll() is not None:
        raise RuntimeError(f"daemon exited: {(root / 'daemon.err').read_text()}")
    limit = counter is not None
    plugins = 0 if limit else scenario.plugins
    json = 0 if limit else scenario.json
    if plugins or json:
        wait_for(lambda: len(tree(proc.pid)) >= 1 + plugins + scenario.stuck + json, 10)
        time.sleep(0.3)
    key, rule_args, command = workload(scenario, events, loadgen, true_copy)
    if counter is None:
        counter = LogCounter(root / "log" / "audit.log", key)
    # A syscall event's key is followed by ARGV in both JSON outputs (CONFIG_CHANGE's is not)
    json_counter = JsonCounter(json_output(root), key) if json else None
    with rule(rule_args):
        counter.poll()
        base = counter.count
        lost_before = status().lost
        pids = tree(proc.pid)
        cpu_before = cpu_seconds(pids)
        start = time.monotonic()
        deadline = start + max_seconds
        generator = subprocess.Popen(command)
        capped = False
        try:
            if scenario.lossy:
                generator.wait(max_seconds)
                last, still = -1, time.monotonic()
                while time.monotonic() - still < 1.5:
                    now = counter.poll()
                    if now != last:
                        last, still = now, time.monotonic()
                    time.sleep(0.05)
                end = still
            else:
                while counter.poll() - base < events or (
                    json_counter is not None and json_counter.poll() < events
                ):
                    if proc.poll() is not None:
                        raise RuntimeError("daemon died during the run")
                    if time.monotonic() > deadline:
                        capped = True
                        break
                    time.sleep(0.005)
                end = time.monotonic()
        finally:
            if generator.poll() is None:
                generator.kill()
            generator.wait()
        delivered = (wait_for_plugins(root, scenario, key, counter.count - base)
                     if plugins else None)
        if json_counter is not None:
            delivered = json_counter.poll()
        pids = tree(proc.pid)
        cpu = cpu_seconds(pids) - cpu_before
        rss = peak_rss_kib(proc.pid)
        dispatcher_rss = max((peak_rss_kib(p) for p in pids[1:]
                              if b"audispd" in Path(f"/proc/{p}/cmdline").read_bytes()),
                             default=0) if len(pids) > 1 else 0
        lost = status().lost - lost_before
    logged = counter.count - base
    return Run(logged, end - start, cpu, rss, dispatcher_rss, lost, capped, delivered)


class CountFile:
    """The limit reader's progress (bench/limit.c): a 64-bit count of the key's SYSCALL
    records in a shared file, polled like a log (MarkerCounter's interface)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def poll(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            self.count = int.from_bytes(self.path.read_bytes()[:8], sys.byteorder)
        return self.count


def limit_run(scenario: Scenario, events: int, loadgen: Path, true_copy: Path,
              max_seconds: float,
              reader: Callable[[Path], list[str]] | None = None) -> Run:
    """A run of the limit reader, in the same conditions as a daemon's: kernel settings,
    rule, load, and the same polling of its progress. `reader` gives, for the run's
    directory, the command line of another reader that takes limit.c's KEY COUNTFILE
    (bench/floors.py's floors); its arguments go after it."""
    key, _rule, _command = workload(scenario, events, loadgen, true_copy)
    root = Path(tempfile.mkdtemp(prefix="bench-limit-"))
    try:
        counter = CountFile(root / "count")
        head = [str(loadgen.with_name("limit"))] if reader is None else reader(root)
        argv = [*head, key, str(counter.path)]
        with kernel_settings(0 if scenario.lossy else None), \
                open(root / "daemon.err", "wb") as errors:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
            try:
                return measure(proc, scenario, events, loadgen, true_copy, root, max_seconds,
                               counter)
            finally:
                stop_reader(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stop_reader(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the reader or daemon unregisters), and wait until the kernel has no daemon of
    ours."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    wait_for(lambda: status().pid != proc.pid, 10)


def build_tools(build: Path) -> Path:
    """Compile the load generator, the limit reader and the latency probe into `build`; the
    load generator's path (the others are next to it)."""
    loadgen = build / "loadgen"
    for name in ("loadgen", "limit", "latprobe"):
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(build / name), str(HERE / f"{name}.c")],
                       check=True)
    return loadgen


def wait_for_plugins(root: Path, scenario: Scenario, key: str, logged: int) -> int | None:
    """The fewest events a plugin got, once each got all that was logged or stopped getting
    more for 2 s (the time this takes is not in events/s; its CPU is)."""
    if not scenario.plugins:
        return None
    counters = [LogCounter(out, key) for out in plugin_outputs(root, scenario)]
    still, last = time.monotonic(), -1
    while time.monotonic() - still < 2.0:
        fewest = min(c.poll() for c in counters)
        if fewest >= logged:
            break
        if fewest != last:
            last, still = fewest, time.monotonic()
        time.sleep(0.05)
    return min(c.count for c in counters)


# -- report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def machine() -> str:
    """The machine a table was measured on, as the tables name it."""
    return (f"{platform.node()}: {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"Python {platform.python_version()}")


def table(results: list[Result], events: int, exec_events: int, rounds: int) -> str:
    lines = [
        f"Benchmark of {time.strftime('%Y-%m-%d')} on {machine()}; "
        f"{events} events per run ({exec_events} for exec), "
        f"median of {rounds} rounds, C auditd = Debian {c_version()}.",
        "",
        "| scenario | C events/s | pyauditd events/s | limit events/s | py / C | py / limit "
        "| py / limit by round | C CPU s/100k | py CPU s/100k | limit CPU s/100k | C logged / lost "
        "| py logged / lost | limit read / lost | C / py events each plugin got "
        "| C RSS MiB | py RSS MiB (+ dispatcher) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        c, py, limit = res.runs["c"], res.runs["py"], res.runs["limit"]
        c_rate, py_rate = median([r.rate for r in c]), median([r.rate for r in py])
        limit_rate = median([r.rate for r in limit])
        disp = median([r.dispatcher_rss_kib for r in py]) / 1024
        lines.append(
            f"| {res.scenario.title} | {c_rate:,.0f}{capped(c)} | {py_rate:,.0f}{capped(py)} | "
            f"{limit_rate:,.0f}{capped(limit)} | {share(py_rate, c_rate)} | "
            f"{share(py_rate, limit_rate, percent=True)} | {round_shares(py, limit)} | "
            f"{median([r.cpu_per_100k for r in c]):.2f} | "
            f"{median([r.cpu_per_100k for r in py]):.2f} | "
            f"{median([r.cpu_per_100k for r in limit]):.2f} | "
            f"{logged_lost(c)} | {logged_lost(py)} | {logged_lost(limit)} | "
            f"{delivered(c)} / {delivered(py)} | "
            f"{median([r.rss_kib for r in c]) / 1024:.1f} | "
            f"{median([r.rss_kib for r in py]) / 1024:.1f}"
            + (f" (+{disp:.1f})" if disp else "") + " |"
        )
    lines += [
        "",
        "events/s: from the first call until every event is on disk (lossless), or until the "
        "log stops growing (burst); \"capped\": --max-seconds passed first. limit: "
        "bench/limit.c, a C reader that registers, reads with recvmmsg 128 records at a time "
        "and discards them (no log, no plugins): the fastest the kernel hands records over; "
        "its events/s count until it has read every event. py / limit: pyauditd's share of "
        "it; by round: the median (and range) of its share in each round, where the two "
        "ran minutes apart at most, so that the machine's drift over the whole run (the "
        "limit's own median differs between the scenarios of one run) cancels out. lost: the "
        "kernel's lost counter over the run, in records (an event is 3 "
        "records). CPU: daemon, dispatcher and plugins together. Events each plugin got: the "
        "fewest any working plugin (a cat) received in any round. RSS: peak of the daemon "
        f"(and of pyaudispd); {sys.executable} alone: {interpreter_rss()}.",
    ]
    if any(res.scenario.json for res in results):
        lines += [
            "",
            "JSON rows: C = the C auditd with laurel 0.5.1 as its plugin, py = pyauditd with "
            "builtin_json in pyaudispd, both translating (laurel translate.universal and "
            "user-db, the same options for builtin_json); events/s until every event is in the "
            "JSON output (\"events each plugin got\": events in it); CPU of the whole process "
            "tree, so 10 x CPU s/100k is µs per event.",
        ]
    return "\n".join(lines) + "\n"


def interpreter_rss() -> str:
    """What the interpreter holds before any auditpy import (the floor of the py RSS
    columns), with and without site (-S: no .pth file runs)."""
    code = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    figures = []
    for flags in ([], ["-S"]):
        out = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True,
                             text=True)
        figures.append(f"{int(out.stdout or 0) / 1024:.1f} MiB" + (" with -S" if flags else ""))
    return ", ".join(figures)


def round_shares(py: list[Run], limit: list[Run]) -> str:
    """pyauditd's share of the limit within each round: median (lowest-highest)."""
    shares = [p.rate / q.rate for p, q in zip(py, limit, strict=False) if q.rate]
    if not shares:
        return "-"
    return f"{median(shares):.0%} ({min(shares):.0%}-{max(shares):.0%})"


def capped(runs: list[Run]) -> str:
    return " (capped)" if any(r.capped for r in runs) else ""


def share(value: float, of: float, *, percent: bool = False) -> str:
    if not of:
        return "-"
    return f"{value / of:.0%}" if percent else f"{value / of:.2f}"


def logged_lost(runs: list[Run]) -> str:
    if not runs:
        return "-"
    return (f"{median([r.events for r in runs]):,.0f} / "
            f"{median([r.lost for r in runs]):,.0f}")


def delivered(runs: list[Run]) -> str:
    counts = [r.delivered for r in runs if r.delivered is not None]
    return f"{min(counts):,}" if counts else "-"


def c_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "auditd"],
                         capture_output=True, text=True)
    return f"auditd {out.stdout.strip() or 'unknown'}"


def chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r.scenario.title for r in results]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = range(len(names))
    for i, (daemon, label) in enumerate(
            [("c", "C auditd"), ("py", "pyauditd"), ("limit", "limit (C reader, discards)")]):
        rates = [median([x.rate for x in r.runs[daemon]]) for r in results]
        ax.bar([x + (i - 1) * 0.27 for x in xs], rates, width=0.27, label=label)
    ax.set_xticks(list(xs), names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("events/s logged")
    ax.set_title("pyauditd vs C auditd and the limit (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def run_latency(args: argparse.Namespace, loadgen: Path) -> str:
    """bench/latency.py's table, with the rates and durations of --latency-*."""
    import latency

    rates = [float(r) for r in args.latency_rates.split(",")]
    seconds = [float(s) for s in args.latency_seconds.split(",")]
    results = latency.run_all(rates, seconds, 1, loadgen, args.pyauditd.split())
    return latency.table(results, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--exec-events", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join([*SCENARIOS, "latency"]),
                        help="scenarios of the table; `latency` runs bench/latency.py too")
    parser.add_argument("--latency-rates", default="100,10000")
    parser.add_argument("--latency-seconds", default="10,2")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--pyauditd", default=f"{sys.executable} -m auditpy.auditd")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop waiting for a run after this long; the rate so far counts")
    args = parser.parse_args(argv)
    if not take_the_kernel():
        return 1
    # Byte-compile the package as `pip install` does: a daemon started from bare sources
    # (PYTHONDONTWRITEBYTECODE) compiles every module at each start, and the compiler's
    # memory would count in its peak RSS.
    compileall.compile_dir(Path(auditpy.__file__).parent, quiet=1)
    build = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        loadgen = build_tools(build)
        true_copy = build / "bench-true"
        shutil.copy("/bin/true", true_copy)
        results = []
        names = args.scenarios.split(",")
        for name in names:
            if name == "latency":
                continue
            scenario = SCENARIOS[name]
            result = Result(scenario)
            count = args.exec_events if scenario.workload == "exec" else args.events
            for round_ in range(args.rounds):
                # each goes first, second and last in turn
                turn = round_ % len(DAEMONS)
                for daemon in DAEMONS[turn:] + DAEMONS[:turn]:
                    run = one_run(daemon, scenario, count, loadgen, true_copy,
                                  args.pyauditd.split(), args.max_seconds)
                    result.runs[daemon].append(run)
                    print(f"{scenario.name:9} round {round_ + 1} {daemon:5}: "
                          f"{run.rate:10,.0f} events/s  {run.events:8,} logged  "
                          f"{run.lost:8,} lost  cpu {run.cpu:6.2f}s  rss {run.rss_kib // 1024} MiB"
                          + ("  (capped)" if run.capped else "")
                          + (f"  plugins got {run.delivered:,}" if run.delivered is not None
                             else ""),
                          flush=True)
            results.append(result)
        latency_text = (run_latency(args, loadgen) if "latency" in names else "")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(results, args.events, args.exec_events, args.rounds)
    if latency_text:
        text += "\n" + latency_text
    (args.out / "RESULTS.md").write_text(text)
    print()
    print(text)
    if chart(results, args.out / "RESULTS.png"):
        print(f"chart: {args.out / 'RESULTS.png'}")
    else:
        print("matplotlib is not installed: no chart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
