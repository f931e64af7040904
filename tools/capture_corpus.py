#!/usr/bin/env python3
"""Record a format corpus: kernel records next to the lines the C auditd wrote for them.

Runs Debian's auditd (ENRICHED, which starts with the RAW line) in a scratch directory while
this script reads the same records from the kernel's read-only multicast group, drives a
workload through rules that match only this script's own children, then pairs each record
with the C daemon's line by type and `audit(...)` stamp. The result is committed as
tests/data/c_auditd_corpus.jsonl and replayed by tests/test_records.py.

Run as root with no audit daemon registered: python3 tools/capture_corpus.py OUT.jsonl
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from auditpy.proto.netlink import STATUS_ENABLED, AuditStatus
from auditpy.proto.records import type_name
from auditpy.system.netlink import AuditSocket

STAMP = re.compile(rb"audit\((\d+\.\d+:\d+)\)")


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


def main() -> None:
    out_path = sys.argv[1]
    scratch = tempfile.mkdtemp(prefix="corpus-")
    conf_dir = os.path.join(scratch, "etc")
    os.mkdir(conf_dir)
    log = os.path.join(scratch, "log", "audit.log")
    with open(os.path.join(conf_dir, "auditd.conf"), "w") as f:
        f.write(f"log_file = {log}\nlog_format = ENRICHED\nflush = INCREMENTAL_ASYNC\nfreq = 1\n"
                "space_left = 2\nadmin_space_left = 1\nnum_logs = 2\n"
                f"plugin_dir = {conf_dir}/plugins.d\n")
    os.mkdir(os.path.join(conf_dir, "plugins.d"))
    os.mkdir(os.path.dirname(log))
    control = AuditSocket()
    enabled_before = control.get_status().enabled
    reader = AuditSocket(multicast=True, rcvbuf=8 << 20)
    reader.sock.setblocking(False)
    c_daemon = subprocess.Popen(["/sbin/auditd", "-n", "-c", conf_dir])
    captured: list[tuple[int, bytes]] = []
    try:
        time.sleep(1.0)
        workload(scratch)
        time.sleep(1.0)
        while True:
            records, _ = reader.recv_records(1000)
            if not records:
                break
            captured.extend(records)
    finally:
        c_daemon.send_signal(signal.SIGTERM)
        c_daemon.wait(10)
        reader.close()
        control.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=enabled_before))
        control.close()
    with open(log, "rb") as f:
        c_lines = f.read().splitlines()
    by_key: dict[tuple[bytes, bytes], bytes] = {}
    for line in c_lines:
        m = STAMP.search(line)
        tname = line.split(b" ", 1)[0].removeprefix(b"type=")
        if m:
            by_key.setdefault((tname, m.group(1)), line)
    seen = set()
    with open(out_path, "w") as out:
        for msg_type, payload in captured:
            m = STAMP.search(payload)
            if not m:
                continue
            key = (type_name(msg_type).encode(), m.group(1))
            if key in seen:
                continue
            seen.add(key)
            line = by_key.get(key)
            out.write(json.dumps({
                "type": msg_type,
                "payload": base64.b64encode(payload).decode(),
                "c_line": base64.b64encode(line).decode() if line is not None else None,
            }) + "\n")
    print(f"{len(captured)} records captured, {len(c_lines)} C log lines, written {out_path}",
          file=sys.stderr)
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
