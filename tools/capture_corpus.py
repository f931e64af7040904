#!/usr/bin/env python3
"""Capture the golden corpus: kernel records next to the lines Debian's C auditd wrote for them.

Runs the C auditd (log_format = ENRICHED, whose lines start with the RAW line) in a scratch
directory while this script reads the same records from the kernel's read-only multicast
group, drives a workload through rules that match only this script's own children and a
scratch directory, then pairs each record with the C daemon's line by type and
``audit(...)`` stamp (records sharing both, such as the PATH records of one event, in
order). The result replaces tests/data/c_auditd/ (format: tests/golden.py), which
tests/test_records.py replays.

Needs root, the kernel's audit system, /sbin/auditd, and no audit daemon registered. It
holds the machine's kernel lock (/run/auditpy-kernel.lock) while it runs, as the kernel
tests do. Either of:

    PYTHONPATH=$PWD/src python3 tools/capture_corpus.py [--out DIR]
    PYTHONPATH=$PWD/src python3 -m pytest --update-golden tests/test_records.py

(the second, also AUDITPY_UPDATE_GOLDEN=1, captures and then runs the tests against it).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from auditpy.proto.netlink import STATUS_ENABLED, AuditStatus  # noqa: E402
from auditpy.proto.records import type_name  # noqa: E402
from auditpy.system.netlink import AuditSocket  # noqa: E402
from tests.golden import CapturedRecord, write_corpus  # noqa: E402

C_AUDITD = "/sbin/auditd"
KERNEL_LOCK = "/run/auditpy-kernel.lock"
DEFAULT_OUT = REPO / "tests" / "data" / "c_auditd"
STAMP = re.compile(rb"audit\((\d+\.\d+:\d+)\)")
#: The workload's last record: the capture ends once both readers have it.
END_MARKER = "corpus-end-of-capture"


class CaptureError(Exception):
    pass


def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CaptureError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def hold_kernel_lock() -> None:
    """Held until this process exits; a test session that started us already holds it."""
    if os.environ.get("AUDITPY_KERNEL_LOCK_HELD"):
        return
    fd = os.open(KERNEL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def workload(scratch: str) -> None:
    victim = os.path.join(scratch, "watched")
    os.mkdir(victim)
    rules = [
        ["-w", victim, "-p", "rwxa", "-k", "corpus-watch"],
        ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-F", f"ppid={os.getpid()}",
         "-k", "corpus-net"],
        ["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-F", f"ppid={os.getpid()}",
         "-k", "corpus-exec"],
    ]
    for rule in rules:
        subprocess.run(["auditctl", *rule], check=True, stdout=subprocess.DEVNULL)
    try:
        for text in ["hello corpus", "quote \" and 'single'", "x" * 2000, "ünïcode"]:
            subprocess.run(["auditctl", "-m", text], check=False)
        with open(os.path.join(victim, "file with space"), "w") as f:
            f.write("data")
        os.chmod(os.path.join(victim, "file with space"), 0o600)
        os.rename(os.path.join(victim, "file with space"), os.path.join(victim, "renamed"))
        os.unlink(os.path.join(victim, "renamed"))
        subprocess.run(["/bin/echo", "arg one", "arg\"two", "-n"], stdout=subprocess.DEVNULL)
        subprocess.run(["/bin/true"], stdout=subprocess.DEVNULL)
        subprocess.run(["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9 || true"],
                       stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-c",
                        "import socket\nfor fam,addr in ((socket.AF_INET,('127.0.0.1',9)),"
                        "(socket.AF_INET6,('::1',9)),(socket.AF_UNIX,'/nonexistent/sock')):\n"
                        " s=socket.socket(fam)\n try: s.connect(addr)\n except OSError: pass"])
    finally:
        for rule in rules:
            subprocess.run(["auditctl", "-W" if rule[0] == "-w" else "-d", *rule[1:]],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["auditctl", "-m", END_MARKER], check=True)


def read_until_marker(reader: AuditSocket, timeout: float) -> list[tuple[int, bytes]]:
    captured: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([reader.fileno()], [], [], 0.5)
        records, _ = reader.recv_records(1000)
        for record in records:
            captured.append(record)
            if END_MARKER.encode() in record[1]:
                return captured
    raise CaptureError(f"the multicast reader never saw the end marker within {timeout:g} s")


def pair(captured: list[tuple[int, bytes]], c_lines: list[bytes]) -> list[CapturedRecord]:
    """Each kernel record with the C daemon's line of the same type and stamp, in order."""
    by_key: dict[tuple[bytes, bytes], collections.deque[bytes]] = collections.defaultdict(
        collections.deque
    )
    for line in c_lines:
        match = STAMP.search(line)
        if match:
            name = line.split(b" ", 1)[0].removeprefix(b"type=")
            by_key[(name, match.group(1))].append(line)
    records = []
    for msg_type, payload in captured:
        match = STAMP.search(payload)
        if not match:
            continue
        waiting = by_key.get((type_name(msg_type).encode(), match.group(1)))
        records.append(CapturedRecord(msg_type, payload, waiting.popleft() if waiting else None))
    return records


def capture(scratch: str) -> list[CapturedRecord]:
    conf_dir = os.path.join(scratch, "etc")
    os.mkdir(conf_dir)
    os.mkdir(os.path.join(conf_dir, "plugins.d"))
    log = os.path.join(scratch, "log", "audit.log")
    os.mkdir(os.path.dirname(log))
    with open(os.path.join(conf_dir, "auditd.conf"), "w") as f:
        f.write(f"log_file = {log}\nlog_format = ENRICHED\nflush = INCREMENTAL_ASYNC\nfreq = 1\n"
                "space_left = 2\nadmin_space_left = 1\nnum_logs = 2\n"
                f"plugin_dir = {conf_dir}/plugins.d\n")

    def c_log() -> bytes:
        try:
            with open(log, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    control = AuditSocket()
    before = control.get_status()
    if before.pid != 0:
        raise CaptureError(f"an audit daemon (pid {before.pid}) is registered: stop it first")
    # Opened before the daemon starts: its own registration record is part of the corpus
    # (the C daemon swallows it, so it is one of the records without a line).
    reader = AuditSocket(multicast=True, rcvbuf=8 << 20)
    reader.sock.setblocking(False)
    with open(os.path.join(scratch, "auditd.err"), "wb") as errors:
        c_daemon = subprocess.Popen([C_AUDITD, "-n", "-c", conf_dir], stderr=errors)
    try:
        until(lambda: control.get_status().pid == c_daemon.pid or c_daemon.poll() is not None,
              30, "the C auditd to register")
        if c_daemon.poll() is not None:
            raise CaptureError(f"the C auditd exited with status {c_daemon.returncode}")
        until(lambda: b"type=DAEMON_START" in c_log(), 30, "the C auditd's DAEMON_START")
        workload(scratch)
        captured = read_until_marker(reader, 30)
        until(lambda: END_MARKER.encode() in c_log(), 30, "the end marker in the C auditd's log")
    finally:
        if c_daemon.poll() is None:
            c_daemon.send_signal(signal.SIGTERM)
            c_daemon.wait(30)
        reader.close()
        control.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=before.enabled))
        control.close()
    records = pair(captured, c_log().splitlines())
    print(f"{len(captured)} records captured, {sum(r.c_line is not None for r in records)} "
          "paired with a C auditd line", file=sys.stderr)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"corpus directory to replace (default {DEFAULT_OUT})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("capture_corpus: needs root (the kernel's audit system)", file=sys.stderr)
        return 1
    if not os.access(C_AUDITD, os.X_OK) or shutil.which("auditctl") is None:
        print(f"capture_corpus: needs {C_AUDITD} and auditctl (Debian package auditd)",
              file=sys.stderr)
        return 1
    hold_kernel_lock()
    scratch = tempfile.mkdtemp(prefix="corpus-")
    try:
        records = capture(scratch)
    except CaptureError as exc:
        print(f"capture_corpus: {exc} (scratch directory kept: {scratch})", file=sys.stderr)
        return 1
    write_corpus(args.out, records)
    print(f"wrote {args.out}", file=sys.stderr)
    shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
