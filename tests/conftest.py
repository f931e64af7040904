"""What every test module shares: one way to wait, one way to say an outside program is
missing, a few small helpers the modules used to copy, and the switch that regenerates the
golden files.

Waiting: ``wait_for(predicate, timeout, what)`` polls until the predicate returns a true
value and returns that value; when the time is up it raises ``WaitTimeout`` (an
``AssertionError``) naming what it waited for and the predicate's last value. It never
returns a false value, so a caller never has to remember to assert on it, and a test that
must clean up on a timeout does so in ``try``/``finally`` as for any failure. Timeouts are
upper bounds for a busy two-CPU machine, not expectations: a passing test never waits them
out. ``wait_for_async`` is the same for code that runs inside an event loop.

Missing programs: ``needs("openssl", "/sbin/auditd")`` is a skip marker and ``need(...)``
skips from inside a test or fixture; either names the program and where it comes from.

Golden files: ``pytest --update-golden`` (or ``AUDITPY_UPDATE_GOLDEN=1``) first runs
tools/capture_corpus.py, which captures Debian's C auditd afresh into tests/data/c_auditd/
(root, the kernel's audit system and /sbin/auditd are needed), then runs the tests against
what it wrote. See tests/golden.py for the format.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from auditpy.system import evloop

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# Waiting on conditions


class WaitTimeout(AssertionError):
    """A condition a test waited for did not come true in time."""


def _timeout_message(
    what: str,
    predicate: Callable[[], object],
    timeout: float,
    value: object,
    context: Callable[[], object] | None,
) -> str:
    name = what or getattr(predicate, "__qualname__", repr(predicate))
    message = f"timed out after {timeout:g} s waiting for {name} (last value: {value!r})"
    if context is not None:
        message += f"\n{context()}"
    return message


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "",
    *,
    context: Callable[[], object] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll `predicate` every `interval` seconds until it returns a true value, and return
    that value. After `timeout` seconds raise WaitTimeout naming `what` and, if given, what
    `context()` returns then (a log tail, a state report)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(_timeout_message(what, predicate, timeout, value, context))
        time.sleep(interval)


def on_loop(loop: evloop.Loop, coro: Any, timeout: float = 5.0) -> Any:
    """Run `coro` on `loop`, which runs in another thread, and return its result here."""
    done = threading.Event()
    box: list[evloop.Future[Any]] = []

    def start() -> None:
        task = loop.create_task(coro)
        box.append(task)
        task.add_done_callback(lambda _task: done.set())

    loop.call_soon_threadsafe(start)
    if not done.wait(timeout):
        raise WaitTimeout(f"a coroutine on the loop did not finish within {timeout} s")
    return box[0].result()


async def wait_for_async(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "",
    *,
    context: Callable[[], object] | None = None,
    interval: float = 0.02,
) -> T:
    """wait_for for code inside an event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(_timeout_message(what, predicate, timeout, value, context))
        await evloop.sleep(interval)


# --------------------------------------------------------------------------------------
# Outside programs

#: Programs the tests run, and where they come from (for the skip reason).
TOOLS = {
    "auditctl": "Debian package auditd",
    "ausearch": "Debian package auditd",
    "aureport": "Debian package auditd",
    "/sbin/auditd": "Debian package auditd",
    "/sbin/audisp-remote": "Debian package audispd-plugins",
    "/sbin/audisp-syslog": "Debian package audispd-plugins",
    "gcc": "Debian package gcc",
    "openssl": "Debian package openssl",
    "unshare": "Debian package util-linux",
    "mount": "Debian package mount",
    "systemd-analyze": "Debian package systemd",
    "pyauditd": "this project installed with pip install .",
}


def missing(tool: str) -> str | None:
    """Why `tool` cannot be run here, or None. A name with a slash is a path."""
    if "/" in tool:
        found = os.access(tool, os.X_OK) and os.path.isfile(tool)
    else:
        found = shutil.which(tool) is not None
    if found:
        return None
    where = TOOLS.get(tool)
    return f"needs {tool}" + (f" ({where})" if where else "") + ", which is not installed here"


def _reason(tools: tuple[str, ...]) -> str | None:
    reasons = [r for r in map(missing, tools) if r is not None]
    return "; ".join(reasons) or None


def needs(*tools: str) -> pytest.MarkDecorator:
    """Skip marker: the test runs only where every one of `tools` can be run."""
    reason = _reason(tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def need(*tools: str) -> None:
    """Skip the running test (from a test body or a fixture) unless every tool is here."""
    reason = _reason(tools)
    if reason is not None:
        pytest.skip(reason)


# --------------------------------------------------------------------------------------
# Small helpers several modules need


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def proc_state(pid: int) -> str | None:
    """The state letter of a process ("R", "S", "Z", ...), None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def remote_plugin_state(pid: int, stderr: Path, timeout: float = 10.0) -> dict[str, str]:
    """pyaudisp-remote's state (SIGUSR1 makes it log a ``state: key=value ...`` line), read
    from its stderr file: {"queue_size": "10", "connected": "no", "received": ...}."""

    def state_lines() -> list[str]:
        text = stderr.read_text(errors="replace") if stderr.exists() else ""
        complete = text[: text.rfind("\n") + 1]  # a line still being written is not read
        return [line for line in complete.splitlines() if "state: server=" in line]

    seen = len(state_lines())
    os.kill(pid, signal.SIGUSR1)
    line = wait_for(lambda: state_lines()[seen:], timeout, "a state line after SIGUSR1")[0]
    return dict(item.split("=", 1) for item in line.split("state: ", 1)[1].split())


def make_pki(directory: Path) -> None:
    """Write a test PKI into `directory`: ca and other-ca (self-signed), server and client
    certificates of ca, rogue of other-ca; each NAME.pem with NAME.key (mode 0600), CN=NAME,
    and subjectAltName IP:127.0.0.1, DNS:localhost. Skips the test without openssl."""
    need("openssl")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN={ca}")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "other-ca")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (directory / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    for key in directory.glob("*.key"):
        key.chmod(0o600)


# --------------------------------------------------------------------------------------
# The golden files' update switch

UPDATE_GOLDEN_ENV = "AUDITPY_UPDATE_GOLDEN"
CAPTURE = REPO / "tools" / "capture_corpus.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="regenerate tests/data/c_auditd/ from a fresh capture of Debian's C auditd "
        f"before the tests run (root, the kernel audit system, /sbin/auditd; also "
        f"{UPDATE_GOLDEN_ENV}=1)",
    )


def update_golden_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("update_golden")) or os.environ.get(UPDATE_GOLDEN_ENV) == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before collection: the corpus tests are parametrized from the files' contents."""
    if not update_golden_requested(session.config):
        return
    result = subprocess.run([sys.executable, str(CAPTURE)], cwd=REPO)
    if result.returncode != 0:
        pytest.exit(f"--update-golden: {CAPTURE.name} failed (exit status {result.returncode})",
                    returncode=1)


class Notes:
    """A notify callback (syslog priority, message) that keeps what it is told."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def __call__(self, priority: int, message: str) -> None:
        self.items.append((priority, message))

    def texts(self) -> list[str]:
        return [m for _, m in self.items]


@pytest.fixture
def notes() -> Notes:
    return Notes()
