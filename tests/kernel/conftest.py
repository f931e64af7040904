"""Fixtures for tests against the real kernel audit system.

The kernel's audit state is shared by the whole machine and outlives the test: every fixture
here puts back what it changed (enabled, backlog settings, rules) and makes sure no daemon of
ours stays registered, even when a test fails.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from auditpy.proto.netlink import (
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_ENABLED,
    AuditStatus,
)
from auditpy.system.netlink import AuditSocket

from ..conftest import missing, need, wait_for

#: pyauditd as these tests run it: from the source tree under test, installed or not.
PYAUDITD = [sys.executable, "-m", "auditpy.auditd"]


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_AUDIT_CONTROL) to talk to the kernel audit system"
    try:
        sock = AuditSocket()
        status = sock.get_status()
        sock.close()
    except OSError as exc:
        return f"the kernel audit netlink interface is not usable here: {exc}"
    if status.enabled == 2:
        return "kernel audit configuration is locked (enabled 2)"
    return missing("auditctl")  # every test sets up and checks through it


UNAVAILABLE = _kernel_unavailable()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kernel)
            if UNAVAILABLE:
                item.add_marker(pytest.mark.skip(reason=UNAVAILABLE))


#: Held by every test session (and benchmark) that changes the kernel's audit state, so that
#: two checkouts tested on one machine at once never register or load rules side by side.
KERNEL_LOCK = "/run/auditpy-kernel.lock"


@pytest.fixture(scope="session", autouse=True)
def _kernel_lock() -> Iterator[None]:
    if UNAVAILABLE:
        yield
        return
    fd = os.open(KERNEL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # The benchmark scripts the tests run take the lock themselves unless told so.
        os.environ["AUDITPY_KERNEL_LOCK_HELD"] = "1"
        yield
    finally:
        os.environ.pop("AUDITPY_KERNEL_LOCK_HELD", None)
        os.close(fd)


def get_status() -> AuditStatus:
    sock = AuditSocket()
    try:
        return sock.get_status()
    finally:
        sock.close()


def set_status(status: AuditStatus) -> None:
    sock = AuditSocket()
    try:
        sock.set_status(status)
    finally:
        sock.close()


def auditctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["auditctl", *args], check=check, capture_output=True, text=True)


@pytest.fixture
def kernel_state() -> Iterator[AuditStatus]:
    """Enable auditing for the test and put back enabled/backlog settings afterwards."""
    before = get_status()
    rules_before = auditctl("-l").stdout
    set_status(AuditStatus(mask=STATUS_ENABLED, enabled=1))
    try:
        yield before
    finally:
        set_status(AuditStatus(
            mask=STATUS_ENABLED | STATUS_BACKLOG_LIMIT | STATUS_BACKLOG_WAIT_TIME,
            enabled=before.enabled, backlog_limit=before.backlog_limit,
            backlog_wait_time=before.backlog_wait_time,
        ))
        if auditctl("-l").stdout != rules_before:
            # A test left a rule behind: remove only rules tagged by our tests.
            for line in auditctl("-l").stdout.splitlines():
                if "pytest-" in line and line.startswith("-a "):
                    auditctl("-d", *line[3:].split(), check=False)
                elif "pytest-" in line and line.startswith("-w "):
                    auditctl("-W", *line[3:].split(), check=False)


@dataclass
class DaemonDir:
    root: Path

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc"

    @property
    def log(self) -> Path:
        return self.root / "log" / "audit.log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def write_config(self, extra: str = "", **overrides: str) -> None:
        settings = {
            "log_file": str(self.log),
            "log_format": "RAW",
            "flush": "INCREMENTAL_ASYNC",
            "freq": "20",
            "num_logs": "4",
            "max_log_file": "0",
            "max_log_file_action": "IGNORE",
            "space_left": "2",
            "admin_space_left": "1",
            "space_left_action": "SYSLOG",
            "admin_space_left_action": "SUSPEND",
            "disk_full_action": "SUSPEND",
            "disk_error_action": "SUSPEND",
            "priority_boost": "0",
            "plugin_dir": str(self.conf_dir / "plugins.d"),
        }
        settings.update(overrides)
        text = "".join(f"{k} = {v}\n" for k, v in settings.items()) + textwrap.dedent(extra)
        path = self.conf_dir / "auditd.conf"
        path.write_text(text)
        os.chmod(path, 0o640)

    def lines(self, path: Path | None = None) -> list[str]:
        target = path or self.log
        if not target.exists():
            return []
        # Not str.splitlines(): it also splits at 0x1d, the ENRICHED separator.
        text = target.read_bytes().decode("utf-8", "replace")
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


@pytest.fixture
def daemon_dir(tmp_path: Path) -> DaemonDir:
    d = DaemonDir(tmp_path)
    d.conf_dir.mkdir()
    (d.conf_dir / "plugins.d").mkdir()
    d.log.parent.mkdir(mode=0o700)
    d.run_dir.mkdir()
    d.write_config()
    return d


class RunningDaemon:
    def __init__(self, d: DaemonDir, proc: subprocess.Popen[bytes]) -> None:
        self.dir = d
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        """What the daemon (and its dispatcher) said: a file, never a pipe, so that a
        talkative daemon cannot block on a full pipe nobody reads."""
        path = self.dir.root / "daemon.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_line(self, needle: str, timeout: float = 10.0, path: Path | None = None) -> str:
        return wait_for(
            lambda: next((line for line in self.dir.lines(path) if needle in line), None),
            timeout,
            f"a log line with {needle!r}",
            context=lambda: "log:\n" + "\n".join(self.dir.lines(path)[-20:]),
        )

    def state_report(self, has: str, timeout: float = 10.0) -> str:
        """SIGCONT, then the fresh state report once it holds the line starting with `has`
        (the daemon writes the file in place: a line shows up only whole)."""
        path = self.dir.run_dir / "auditd.state"
        path.unlink(missing_ok=True)
        self.signal(signal.SIGCONT)

        def report() -> str | None:
            text = path.read_text() if path.exists() else ""
            return text if f"\n{has}" in f"\n{text}" and text.endswith("\n") else None

        return wait_for(report, timeout, f"a state report with {has!r}")


def start_pyauditd(
    d: DaemonDir, *args: str, log_path: Path | None = None, wrapper: Sequence[str] = ()
) -> RunningDaemon:
    with open(d.root / "daemon.err", "ab") as errors:
        proc = subprocess.Popen(
            [*wrapper, *PYAUDITD, "-n", "-s", "nochange", "-c",
             str(d.conf_dir), "--run-dir", str(d.run_dir), *args],
            stderr=errors,
        )
    running = RunningDaemon(d, proc)
    try:
        wait_for(lambda: get_status().pid == proc.pid or proc.poll() is not None,
                 what="pyauditd registered with the kernel", context=running.stderr)
        if proc.poll() is not None:
            pytest.fail(f"pyauditd exited at start: {running.stderr()}")
        running.wait_for_line("type=DAEMON_START", path=log_path)
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture
def pyauditd(kernel_state: AuditStatus, daemon_dir: DaemonDir) -> Iterator[RunningDaemon]:
    running = start_pyauditd(daemon_dir)
    try:
        yield running
    finally:
        running.stop()
        wait_for(lambda: get_status().pid != running.pid, 5, "pyauditd unregistered")


@pytest.fixture(scope="session")
def load_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny C program whose getppid() calls a rule can match by its exe alone."""
    need("gcc")
    build = tmp_path_factory.mktemp("loadgen")
    src = build / "loadgen.c"
    src.write_text(textwrap.dedent("""
        #include <stdlib.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            long n = argc > 1 ? atol(argv[1]) : 1;
            for (long i = 0; i < n; i++) getppid();
            return 0;
        }
    """))
    exe = build / "loadgen"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe
