#!/usr/bin/python3
"""Run a command with the kernel's memory-deny-write-execute on, as systemd's
MemoryDenyWriteExecute=true does: `mdwe_exec.py COMMAND ARG...` (the command replaces this
process, so its pid is this one's).  Exits 77 where the kernel lacks PR_SET_MDWE (before 6.3),
1 if W+X memory can still be mapped afterwards."""

import ctypes
import mmap
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
except OSError:
    pass
else:
    print("W+X memory is still allowed", file=sys.stderr)
    sys.exit(1)
os.execvp(sys.argv[1], sys.argv[1:])
