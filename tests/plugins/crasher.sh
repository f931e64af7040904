#!/bin/sh
# Test plugin that dies: appends "start PID" to OUT.events (argv[1]) and exits 3, at once
# or, given a FIFO as argv[2], once it has read a line from it (the test says when).
echo "start $$" >> "$1.events"
[ -z "${2:-}" ] || read -r _ < "$2"
exit 3
