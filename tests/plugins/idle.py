#!/usr/bin/python3 -IS
"""Test plugin that never reads its input (a stuck plugin); SIGTERM ends it."""

import os
import signal
import sys

with open(sys.argv[1] + ".events", "a") as f:
    f.write(f"start {os.getpid()}\n")
while True:
    signal.pause()
