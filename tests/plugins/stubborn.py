#!/usr/bin/python3 -IS
"""Test plugin that ignores SIGTERM and never reads: only SIGKILL ends it."""

import os
import signal
import sys

signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".events", "a") as f:
    f.write(f"start {os.getpid()}\n")
while True:
    signal.pause()
