#!/usr/bin/python3 -IS
"""Test plugin that closes its input at once and then waits: writes to it fail (EPIPE)."""

import os
import signal
import sys

with open(sys.argv[1] + ".events", "a") as f:
    f.write(f"start {os.getpid()}\n")
os.close(0)
while True:
    signal.pause()
