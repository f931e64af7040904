#!/usr/bin/env python3
"""Loading Debian's 30-stig.rules + 31-privileged.rules: `pyauditctl --load` next to
`augenrules --load` and `auditctl -R`, wall time per load, side by side.

31-privileged.rules ships only the commands that write its rules (one path rule per setuid
program); they are run here the same way (setuid files under /bin, /sbin, /usr/bin,
/usr/sbin). Rules about paths this machine does not have are left out, since the kernel
refuses them and augenrules would stop there. `-e 2`/`-f 2` lines are never loaded.

augenrules always works on /etc/audit: it runs in a private mount namespace with a temporary
directory bound over /etc/audit, so the machine's own files are not touched. The kernel lock
is held throughout, and the rules and settings found at the start are put back at the end.

Run as root: python3 bench/rules_load.py [--rounds N]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from auditpy.proto.netlink import (  # noqa: E402
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_ENABLED,
    STATUS_FAILURE,
    STATUS_RATE_LIMIT,
    AuditStatus,
)
from auditpy.rules.parse import split_rule_line  # noqa: E402
from auditpy.system.netlink import AuditSocket  # noqa: E402

EXAMPLES = Path("/usr/share/doc/auditd/examples/rules")
KERNEL_LOCK = "/run/auditpy-kernel.lock"
PRIVILEGED = ("-a always,exit -F path={} -F perm=x -F auid>=1000 -F auid!=unset "
              "-F key=privileged")


def hold_kernel_lock() -> None:
    """The machine's kernel audit state is ours until this process ends."""
    if os.environ.get("AUDITPY_KERNEL_LOCK_HELD"):
        return  # started by a test session that holds it
    fd = os.open(KERNEL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _path_ok(tokens: list[str]) -> bool:
    """False for rules on paths this machine lacks (the kernel would refuse them)."""
    for i, tok in enumerate(tokens):
        if tok in ("-w", "-W") and i + 1 < len(tokens):
            return os.path.isdir(os.path.dirname(tokens[i + 1].rstrip("/")) or "/")
        if tok == "-F" and i + 1 < len(tokens):
            name, _, value = tokens[i + 1].partition("=")
            if name == "path" and not os.path.isdir(os.path.dirname(value) or "/"):
                return False
            if name == "dir" and not os.path.isdir(value):
                return False
    return True


def rule_files() -> dict[str, str]:
    stig = []
    for line in (EXAMPLES / "30-stig.rules").read_text().splitlines():
        tokens = split_rule_line(line)
        if tokens is None or line.strip().startswith(("-e 2", "-f 2", "--loginuid")):
            continue
        if _path_ok(tokens):
            stig.append(line)
    privileged = []
    for top in ("/bin", "/sbin", "/usr/bin", "/usr/sbin"):
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mode & 0o4000:
                privileged.append(PRIVILEGED.format(entry.path))
    return {"30-stig.rules": "\n".join(stig) + "\n",
            "31-privileged.rules": "\n".join(privileged) + "\n"}


def count_rules(files: dict[str, str]) -> int:
    return sum(1 for text in files.values() for line in text.splitlines()
               if line.startswith(("-a", "-w", "-A")))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def loaded_count() -> int:
    sock = AuditSocket()
    try:
        return len(sock.list_rules())
    finally:
        sock.close()


def clear_rules() -> None:
    subprocess.run(["auditctl", "-D"], capture_output=True, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    for tool in ("augenrules", "auditctl", "unshare"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    hold_kernel_lock()
    files = rule_files()
    n_rules = count_rules(files)
    sock = AuditSocket()
    before = sock.list_rules()
    status = sock.get_status()
    if status.enabled == 2:
        print("the kernel's audit configuration is locked (enabled 2)", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {"pyauditctl --load": [], "augenrules --load": [],
                                       "auditctl -R": []}
    with tempfile.TemporaryDirectory(prefix="rules-bench-") as tmp:
        etc = Path(tmp) / "etc-audit"
        rules_d = etc / "rules.d"
        rules_d.mkdir(parents=True)
        for name, text in files.items():
            (rules_d / name).write_text("-D\n" + text if name.startswith("30") else text)
        concatenated = Path(tmp) / "audit.rules"
        concatenated.write_text("-D\n" + "".join(files.values()))
        commands = {
            "pyauditctl --load": [sys.executable, "-m", "auditpy.auditctl", "--load",
                                  str(rules_d)],
            "augenrules --load": ["unshare", "-m", "sh", "-c",
                                  f"mount --bind {etc} /etc/audit && augenrules --load"],
            "auditctl -R": ["auditctl", "-R", str(concatenated)],
        }
        env_path = str(ROOT / "src")
        os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
        try:
            for _ in range(opts.rounds):
                for name, cmd in commands.items():
                    clear_rules()
                    results[name].append(timed(cmd))
                    got = loaded_count()
                    if got != n_rules:
                        raise SystemExit(f"{name} loaded {got} rules, expected {n_rules}")
        finally:
            for raw in sock.list_rules():
                sock.delete_rule(raw)
            for raw in before:
                sock.add_rule(raw)
            sock.set_status(AuditStatus(
                mask=STATUS_ENABLED | STATUS_FAILURE | STATUS_BACKLOG_LIMIT | STATUS_RATE_LIMIT
                | STATUS_BACKLOG_WAIT_TIME, enabled=status.enabled, failure=status.failure,
                backlog_limit=status.backlog_limit, rate_limit=status.rate_limit,
                backlog_wait_time=status.backlog_wait_time))
            restored = sock.list_rules() == before
            sock.close()
    print(f"30-stig.rules + 31-privileged.rules: {n_rules} rules "
          f"({count_rules({'p': files['31-privileged.rules']})} privileged), "
          f"{opts.rounds} rounds, wall time per load (ms)")
    print(f"{'tool':<20} {'median':>8} {'min':>8} {'max':>8}")
    for name, times in results.items():
        ms = [t * 1000 for t in times]
        print(f"{name:<20} {statistics.median(ms):8.1f} {min(ms):8.1f} {max(ms):8.1f}")
    print(f"rules before the benchmark restored: {'yes' if restored else 'NO'}")
    return 0 if restored else 1


if __name__ == "__main__":
    sys.exit(main())
