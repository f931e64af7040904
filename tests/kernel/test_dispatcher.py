"""The dispatcher under the real daemon: the SIGHUP sequences of the bug report this project
began with, crashes, and a long random walk, with events sent through the kernel."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..conftest import needs, proc_state, wait_for
from .conftest import DaemonDir, RunningDaemon, auditctl, start_pyauditd

AUDISP_SYSLOG = "/sbin/audisp-syslog"


def proc_ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stdout_target(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


class Plugins:
    """Plugin files and programs of one test: plugin N is a shell script that appends what it
    reads to outN; its process is told apart by where its stdout goes."""

    def __init__(self, d: DaemonDir, root: Path) -> None:
        self.dir = d.conf_dir / "plugins.d"
        self.root = root
        self.generation: dict[str, int] = {}

    def program(self, name: str) -> Path:
        return self.root / f"{name}.sh"

    def output(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def write_program(self, name: str) -> None:
        gen = self.generation.get(name, 0) + 1
        self.generation[name] = gen
        path = self.program(name)
        tmp = path.with_suffix(".new")
        # A plugin must survive the SIGHUP of a reload that leaves it unchanged.
        tmp.write_text(f"#!/bin/sh\n# generation {gen}\ntrap '' HUP\n"
                       f"exec /bin/cat >> {self.output(name)}\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # a new binary at the same path

    def write_conf(self, name: str, active: bool, args: str = "") -> None:
        if not self.program(name).exists():
            self.write_program(name)
        conf = self.dir / f"{name}.conf"
        conf.write_text(
            f"active = {'yes' if active else 'no'}\ndirection = out\n"
            f"path = {self.program(name)}\ntype = always\nformat = string\n"
            + (f"args = {args}\n" if args else "")
        )
        os.chmod(conf, 0o640)

    def remove(self, name: str) -> None:
        (self.dir / f"{name}.conf").unlink(missing_ok=True)

    def active(self) -> set[str]:
        names = set()
        for conf in self.dir.glob("*.conf"):
            if "active = yes" in conf.read_text():
                names.add(conf.stem)
        return names

    def running(self, daemon_pid: int) -> tuple[int | None, set[str], list[int]]:
        """(dispatcher pid, plugins running under it, zombie pids in the tree)."""
        kids = proc_ppid_map()
        zombies = []
        dispatchers = [p for p in kids.get(daemon_pid, []) if "audispd" in cmdline(p)]
        zombies += [p for p in kids.get(daemon_pid, []) if proc_state(p) == "Z"]
        if not dispatchers:
            return None, set(), zombies
        assert len(dispatchers) == 1, dispatchers
        names = set()
        for p in kids.get(dispatchers[0], []):
            if proc_state(p) == "Z":
                zombies.append(p)
                continue
            target = stdout_target(p)
            if target.endswith(".out"):
                names.add(Path(target).stem)
        return dispatchers[0], names, zombies

    def matches(self, daemon_pid: int) -> bool:
        dispatcher, names, zombies = self.running(daemon_pid)
        want = self.active()
        return not zombies and names == want and (dispatcher is not None) == bool(want)


def marker_reaches(
    plugins: Plugins, names: set[str], text: str, timeout: float = 5.0, note: str = ""
) -> None:
    """Send a user message through the kernel; it must reach every named plugin."""
    auditctl("-m", text)
    wait_for(
        lambda: all(plugins.output(n).exists() and text in plugins.output(n).read_text()
                    for n in names), timeout, f"{text!r} at the plugins {sorted(names)}",
        context=lambda: note)


@pytest.fixture
def plugins(daemon_dir: DaemonDir, tmp_path: Path) -> Plugins:
    return Plugins(daemon_dir, tmp_path)


def settle(daemon: RunningDaemon, plugins: Plugins) -> None:
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: plugins.matches(daemon.pid), 1.0, "the running plugins to match",
             context=lambda: f"after SIGHUP: running {plugins.running(daemon.pid)}, "
             f"active {plugins.active()}")


def test_scenario_a_active_plugin_switched_off_and_on(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins
) -> None:
    plugins.write_conf("syslogish", active=True)
    daemon = start_pyauditd(daemon_dir)
    try:
        wait_for(lambda: plugins.matches(daemon.pid), 5)
        for round_ in range(10):
            plugins.write_conf("syslogish", active=False)
            settle(daemon, plugins)
            assert plugins.running(daemon.pid)[0] is None  # no dispatcher at all
            plugins.write_conf("syslogish", active=True)
            settle(daemon, plugins)
            marker_reaches(plugins, {"syslogish"}, f"pytest-scenario-a-{round_}")
    finally:
        assert daemon.stop() == 0
    assert not plugins.running(daemon.pid)[0]


def test_scenario_b_start_with_none_active(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins
) -> None:
    plugins.write_conf("late", active=False)
    daemon = start_pyauditd(daemon_dir)
    try:
        assert plugins.running(daemon.pid)[0] is None
        for round_ in range(10):
            plugins.write_conf("late", active=True)
            settle(daemon, plugins)
            marker_reaches(plugins, {"late"}, f"pytest-scenario-b-{round_}")
            plugins.write_conf("late", active=False)
            settle(daemon, plugins)
    finally:
        assert daemon.stop() == 0


MDWE_EXEC = Path(__file__).with_name("mdwe_exec.py")


def test_daemon_and_dispatcher_run_with_memory_deny_write_execute(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins
) -> None:
    """conf/systemd/pyauditd.service sets MemoryDenyWriteExecute=true: the daemon (recvmmsg
    through ctypes), the dispatcher it starts and a plugin must all work under it."""
    probe = subprocess.run([sys.executable, str(MDWE_EXEC), "true"], capture_output=True,
                           text=True)
    if probe.returncode == 77:
        pytest.skip(f"the kernel cannot deny W+X memory: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    plugins.write_conf("hardened", active=True)
    daemon = start_pyauditd(daemon_dir, wrapper=[sys.executable, str(MDWE_EXEC)])
    try:
        wait_for(lambda: plugins.matches(daemon.pid), 5)
        marker_reaches(plugins, {"hardened"}, "pytest-mdwe")
        daemon.wait_for_line("pytest-mdwe")
        state = daemon_dir.run_dir / "auditd.state"
        daemon.signal(signal.SIGCONT)
        wait_for(lambda: state.exists() and "kernel reads = " in state.read_text(), 5)
        assert "kernel reads = recvmmsg, up to 128 records per call" in state.read_text()
    finally:
        assert daemon.stop() == 0


@needs(AUDISP_SYSLOG)
def test_scenario_a_with_debians_audisp_syslog(
    kernel_state: AuditStatus, daemon_dir: DaemonDir
) -> None:
    conf = daemon_dir.conf_dir / "plugins.d" / "syslog.conf"

    def write(active: bool) -> None:
        conf.write_text(f"active = {'yes' if active else 'no'}\ndirection = out\n"
                        f"path = {AUDISP_SYSLOG}\ntype = always\nargs = LOG_INFO\n"
                        "format = string\n")
        os.chmod(conf, 0o640)

    def syslog_plugins(pid: int) -> int:
        kids = proc_ppid_map()
        return sum(1 for d in kids.get(pid, []) if "audispd" in cmdline(d)
                   for p in kids.get(d, []) if "audisp-syslog" in cmdline(p)
                   and proc_state(p) != "Z")

    write(True)
    daemon = start_pyauditd(daemon_dir)
    try:
        wait_for(lambda: syslog_plugins(daemon.pid) == 1, 5)
        for _ in range(15):
            write(False)
            daemon.signal(signal.SIGHUP)
            wait_for(lambda: syslog_plugins(daemon.pid) == 0
                     and not any("audispd" in cmdline(p)
                                 for p in proc_ppid_map().get(daemon.pid, [])), 1.0)
            write(True)
            daemon.signal(signal.SIGHUP)
            wait_for(lambda: syslog_plugins(daemon.pid) == 1, 1.0)
    finally:
        assert daemon.stop() == 0


def test_killed_dispatcher_and_plugin_are_restarted(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins
) -> None:
    plugins.write_conf("p1", active=True)
    plugins.write_conf("p2", active=True)
    daemon = start_pyauditd(daemon_dir)
    try:
        wait_for(lambda: plugins.matches(daemon.pid), 5)
        dispatcher, _names, _z = plugins.running(daemon.pid)
        assert dispatcher is not None
        os.kill(dispatcher, signal.SIGKILL)
        wait_for(lambda: plugins.running(daemon.pid)[0] not in (None, dispatcher)
                 and plugins.matches(daemon.pid), 5)
        marker_reaches(plugins, {"p1", "p2"}, "pytest-after-dispatcher-kill")
        dispatcher = plugins.running(daemon.pid)[0]
        assert dispatcher is not None
        victim = next(p for p in proc_ppid_map()[dispatcher]
                      if stdout_target(p).endswith("p1.out"))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: plugins.matches(daemon.pid) and victim not in
                 proc_ppid_map().get(dispatcher, []), 5)
        marker_reaches(plugins, {"p1", "p2"}, "pytest-after-plugin-kill")
    finally:
        assert daemon.stop() == 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_random_walk_keeps_processes_equal_to_configuration(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins
) -> None:
    seed = int(os.environ.get("PYTEST_RANDOM_WALK_SEED", time.time()))
    steps = int(os.environ.get("PYTEST_RANDOM_WALK_STEPS", "200"))
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(5)]
    plugins.write_conf("r0", active=True)
    daemon = start_pyauditd(daemon_dir)
    fds: dict[str, list[int]] = {"pyauditd": [], "pyaudispd": []}
    try:
        wait_for(lambda: plugins.matches(daemon.pid), 5)
        for step in range(steps):
            action = rng.choice(["toggle", "toggle", "add", "remove", "edit", "replace",
                                 "kill-plugin", "kill-dispatcher", "hup"])
            name = rng.choice(names)
            note = f"seed {seed} step {step}: {action} {name}"
            if action in ("toggle", "add"):
                plugins.write_conf(name, active=name not in plugins.active())
            elif action == "remove":
                plugins.remove(name)
            elif action == "edit":
                plugins.write_conf(name, active=True, args=f"arg{step}")
            elif action == "replace":
                plugins.write_program(name)
            elif action in ("kill-plugin", "kill-dispatcher"):
                dispatcher, _n, _z = plugins.running(daemon.pid)
                if dispatcher is not None:
                    kids = proc_ppid_map().get(dispatcher, [])
                    target = dispatcher if action == "kill-dispatcher" else (
                        rng.choice(kids) if kids else None)
                    if target is not None:
                        os.kill(target, signal.SIGKILL)
                        # dead before the check below, which must not see it still running
                        wait_for(lambda t=target: proc_state(t) in ("Z", None), 5,
                                 f"pid {target} dead")
            daemon.signal(signal.SIGHUP)
            wait_for(lambda: plugins.matches(daemon.pid), 3.0, "the running plugins to match",
                     context=lambda note=note: f"{note}: running {plugins.running(daemon.pid)}, "
                     f"active {plugins.active()}\n{daemon.stderr()[-3000:]}")
            active = plugins.active()
            marker_reaches(plugins, active, f"pytest-walk-{seed}-{step}", note=note)
            fds["pyauditd"].append(fd_count(daemon.pid))
            dispatcher = plugins.running(daemon.pid)[0]
            if dispatcher is not None:
                fds["pyaudispd"].append(fd_count(dispatcher))
        for who, counts in fds.items():
            if len(counts) > 20:
                assert max(counts[len(counts) // 2:]) <= max(counts[:len(counts) // 2]) + 2, (
                    who, counts)
    finally:
        assert daemon.stop() == 0
    assert plugins.running(daemon.pid)[0] is None


def test_stuck_plugin_costs_only_its_own_records(
    kernel_state: AuditStatus, daemon_dir: DaemonDir, plugins: Plugins, load_generator: Path
) -> None:
    plugins.write_conf("normal", active=True)
    stuck = plugins.root / "stuck.sh"
    stuck.write_text("#!/bin/sh\ntrap '' HUP\nexec sleep 100000\n")  # never reads its input
    os.chmod(stuck, 0o755)
    conf = plugins.dir / "stuck.conf"
    conf.write_text(f"active = yes\ndirection = out\npath = {stuck}\nformat = string\n")
    os.chmod(conf, 0o640)
    daemon_dir.write_config(q_depth="4000", overflow_action="SYSLOG")
    daemon = start_pyauditd(daemon_dir)
    # More than the stuck plugin's queue (4000 records) and socket buffer (plugin_send_buffer)
    # hold, so that it must drop.
    events = 20000
    rule = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={load_generator}",
            "-k", "pytest-stuck"]
    try:
        wait_for(lambda: len(proc_ppid_map().get(
            plugins.running(daemon.pid)[0] or -1, [])) == 2, 5)
        out = plugins.output("normal")

        def at_normal() -> int:
            return out.read_text().count('key="pytest-stuck"') if out.exists() else 0

        auditctl("-a", *rule)  # its CONFIG_CHANGE record carries the key too
        try:
            # Paced, 2,000 events (6,000 records) at a time: well within what the normal
            # plugin's socket buffer holds, so only the stuck plugin can overflow, even if
            # the normal one's file writes stall for a moment on a busy machine.
            for sent in range(2000, events + 1, 2000):
                subprocess.run([str(load_generator), "2000"], check=True)
                wait_for(lambda n=sent: at_normal() == n + 1, 20, f"{sent} events at normal",
                         context=at_normal)
        finally:
            auditctl("-d", *rule)

        def logged() -> int:
            return sum(1 for ln in daemon_dir.lines()
                       if ln.startswith("type=SYSCALL") and 'key="pytest-stuck"' in ln)

        wait_for(lambda: logged() == events, 20)
        wait_for(lambda: at_normal() == events + 2, 20)
        state = daemon_dir.run_dir / "audispd.state"
        daemon.signal(signal.SIGCONT)
        wait_for(lambda: state.exists() and "[plugin stuck.conf]" in state.read_text(), 5)
        sections = {}
        for block in state.read_text().split("\n[plugin ")[1:]:
            name, _, body = block.partition("]")
            sections[name] = dict(ln.split(" = ", 1) for ln in body.splitlines() if " = " in ln)
        assert sections["normal.conf"]["records dropped"] == "0"
        assert int(sections["stuck.conf"]["records dropped"]) > 0
        assert sections["stuck.conf"]["state"] == "running"
    finally:
        assert daemon.stop() == 0
