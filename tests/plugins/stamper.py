#!/usr/bin/python3 -IS
"""Test plugin: for every read of its input, appends "MONOTONIC_SECONDS BYTES" to OUT
(argv[1]), so a test can see when records arrived; "start PID" goes to OUT.events, as the
recorder's, and SIGHUP is survived."""

import os
import signal
import sys
import time

out_path = sys.argv[1]
signal.signal(signal.SIGHUP, lambda *_: None)
out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
with open(out_path + ".events", "a") as f:
    f.write(f"start {os.getpid()}\n")
while True:
    data = os.read(0, 65536)
    if not data:
        break
    os.write(out, f"{time.monotonic():.6f} {len(data)}\n".encode())
