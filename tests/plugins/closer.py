#!/usr/bin/python3 -IS
"""Test plugin that closes its input at once and then waits: writes to it fail (EPIPE).
Its "start PID" event is written after the close, so a test that sees it knows."""

import os
import signal
import sys

os.close(0)
with open(sys.argv[1] + ".events", "a") as f:
    f.write(f"start {os.getpid()}\n")
while True:
    signal.pause()
