"""What the JSON output reads from /proc and the user databases (the I/O the pure process
table and encoder are given as functions).

Every reader returns None for a process that is gone or unreadable: processes come and go
between any two reads, and that is the normal case, not an error.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable

from auditpy.events.lineage import ProcInfo, parse_cgroup

__all__ = [
    "group_name",
    "live_pids",
    "read_cgroup",
    "read_environ",
    "read_proc",
    "scan_proc",
    "user_name",
]

PROC = "/proc"


def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_cgroup(pid: int, proc: str = PROC) -> str | None:
    data = _read(f"{proc}/{pid}/cgroup")
    return None if data is None else parse_cgroup(data)


def read_proc(pid: int, proc: str = PROC) -> ProcInfo | None:
    """ppid, comm, exe and cgroup of a live process."""
    stat = _read(f"{proc}/{pid}/stat", 4096)
    if stat is None:
        return None
    open_paren, close_paren = stat.find(b"("), stat.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    rest = stat[close_paren + 2 :].split()
    try:
        ppid = int(rest[1])
    except (IndexError, ValueError):
        return None
    comm = stat[open_paren + 1 : close_paren]
    try:
        exe: bytes | None = os.readlink(f"{proc}/{pid}/exe".encode())
    except OSError:
        exe = None  # kernel threads, or no permission
    return ProcInfo(pid, ppid, comm, exe, read_cgroup(pid, proc))


def scan_proc(proc: str = PROC) -> list[ProcInfo]:
    """Every process /proc shows now."""
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    out = []
    for name in names:
        if name.isdigit():
            info = read_proc(int(name), proc)
            if info is not None:
                out.append(info)
    return out


def live_pids(proc: str = PROC) -> set[int] | None:
    """The pids of the processes alive now (None when /proc cannot be listed: then nothing
    is known to be gone)."""
    try:
        names = os.listdir(proc)
    except OSError:
        return None
    return {int(name) for name in names if name.isdigit()}


def read_environ(pid: int, names: Iterable[str], proc: str = PROC) -> dict[str, bytes] | None:
    """The named variables of a live process's environment (None if it is gone)."""
    data = _read(f"{proc}/{pid}/environ", 1 << 20)
    if data is None:
        return None
    wanted = {n.encode(): n for n in names}
    out: dict[str, bytes] = {}
    for item in data.split(b"\0"):
        name, eq, value = item.partition(b"=")
        if eq and name in wanted:
            out[wanted[name]] = value
    return out


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None
