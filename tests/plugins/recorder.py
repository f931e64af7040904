#!/usr/bin/python3 -IS
"""Test plugin: copies its stdin byte for byte to OUT (argv[1]).

Before reading it writes what it inherited (argv, environment, open fds, signal mask and
ignored signals, session, nice) as JSON to OUT.probe, and it appends "start PID", "hup PID"
and "eof PID" lines to OUT.events, so tests can see restarts and SIGHUPs without mixing them
into the byte-exact output.
"""

import json
import os
import signal
import sys

fds = sorted(int(name) for name in os.listdir("/proc/self/fd"))
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
out_path = sys.argv[1]
probe = {
    "argv": sys.argv,
    "env": dict(os.environ),
    "fds": fds,
    "SigBlk": int(status["SigBlk"], 16),
    "SigIgn": int(status["SigIgn"], 16),
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
}
# Written whole, then renamed: a test that sees the file sees all of it.
with open(out_path + ".probe.tmp", "w") as f:
    json.dump(probe, f)
os.rename(out_path + ".probe.tmp", out_path + ".probe")

events = os.open(out_path + ".events", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def event(what: str) -> None:
    os.write(events, f"{what} {os.getpid()}\n".encode())


signal.signal(signal.SIGHUP, lambda *_: event("hup"))
out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
event("start")
while True:
    data = os.read(0, 65536)
    if not data:
        break
    os.write(out, data)
event("eof")
