#!/bin/sh
# Test plugin that dies: appends "start PID" to OUT.events (argv[1]), sleeps argv[2] seconds
# (default 0) and exits 3.
echo "start $$" >> "$1.events"
sleep "${2:-0}"
exit 3
