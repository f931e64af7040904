"""The DAEMON_* records the daemon writes about itself, with the texts of the C auditd.

They go through the same formatter as kernel records, so they carry the node name and
enrichment too. Their serials are the daemon's own (a random start, then one more per
record), as in the C daemon; they can collide with kernel serials, and readers cope.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from auditpy.proto.netlink import SignalInfo
from auditpy.structs import dataclass

UNSET = 4294967295


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip().rstrip("\0")
    except OSError:
        return None


def _proc_int(path: str, default: int = UNSET) -> int:
    text = _read_proc(path)
    try:
        return int(text) if text else default
    except ValueError:
        return default


def own_context() -> str | None:
    """The daemon's security label, when an LSM provides one."""
    label = _read_proc("/proc/self/attr/current")
    return label or None


@dataclass(frozen=True)
class Sender:
    """Who asked for an action: the fields the C daemon writes about a signal's sender."""

    auid: int
    uid: int
    ses: int
    pid: int
    subj: str | None

    @classmethod
    def from_signal(cls, info: SignalInfo | None) -> Sender | None:
        if info is None:
            return None
        try:
            uid = os.stat(f"/proc/{info.pid}").st_uid
        except OSError:
            uid = UNSET
        ses = _proc_int(f"/proc/{info.pid}/sessionid")
        return cls(info.auid, uid, ses, info.pid, info.context)

    @classmethod
    def from_process(cls, pid: int) -> Sender | None:
        """The sender as /proc knows it, for a signal whose kernel record was not asked for;
        None once it has exited."""
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return None
        auid = _proc_int(f"/proc/{pid}/loginuid")
        ses = _proc_int(f"/proc/{pid}/sessionid")
        subj = _read_proc(f"/proc/{pid}/attr/current") or None
        return cls(auid, uid, ses, pid, subj)

    def fields(self) -> str:
        subj = f" subj={self.subj}" if self.subj else ""
        return f"auid={self.auid} uid={self.uid} ses={self.ses} pid={self.pid}{subj}"


_UNKNOWN_SENDER = "auid=-1 uid=-1 ses=-1 pid=-1 subj=?"


def start_text(version: str, log_format: str) -> str:
    subj = own_context()
    kernel = os.uname().release[:56]
    return (
        f"op=start ver={version} format={log_format.lower()} kernel={kernel} "
        f"auid={_proc_int('/proc/self/loginuid')} pid={os.getpid()} uid={os.getuid()} "
        f"ses={_proc_int('/proc/self/sessionid')}" + (f" subj={subj}" if subj else "")
        + " res=success"
    )


def end_text(sender: Sender | None) -> str:
    return f"op=terminate {sender.fields() if sender else _UNKNOWN_SENDER} res=success"


def rotate_text(sender: Sender | None) -> str:
    if sender is None:
        return "op=rotate-logs auid=-1 pid=-1 subj=? res=failed"
    return f"op=rotate-logs {sender.fields()} res=success"


def resume_text(sender: Sender | None) -> str:
    return f"op=resume-logging {sender.fields() if sender else _UNKNOWN_SENDER} res=success"


def config_text(sender: Sender | None, ok: bool) -> str:
    if ok:
        auid, pid = (sender.auid, sender.pid) if sender else (-1, -1)
        return f"op=reconfigure state=changed auid={auid} pid={pid} subj=? res=success"
    who = sender.fields() if sender else _UNKNOWN_SENDER
    return f"op=reconfigure state=no-change {who} res=failed"


def abort_text(op: str) -> str:
    """op is set-pid, set-enable, error-halt or network-init; the reason goes to syslog."""
    subj = own_context()
    return (
        f"op={op} auid={_proc_int('/proc/self/loginuid')} pid={os.getpid()} "
        f"uid={os.getuid()} ses={_proc_int('/proc/self/sessionid')}"
        + (f" subj={subj}" if subj else "")
        + " res=failed"
    )


def _urandom_below(n: int) -> int:
    """A number in [0, n) from the kernel's generator: the random module would cost the
    daemon its import (with hashlib's sha512) for two numbers a run."""
    return int.from_bytes(os.urandom(4), "little") % n


class DaemonSerials:
    """The serial numbers of the daemon's own records."""

    def __init__(self, below: Callable[[int], int] | None = None) -> None:
        self._below = below or _urandom_below
        self._next = self._below(10000)

    def next(self) -> int:
        serial = self._next
        self._next += 1
        return serial

    def fresh(self) -> int:
        """A new random serial: the C daemon gives a successful DAEMON_CONFIG its own."""
        return self._below(10000)


def payload(text: str, serial: int, now: float | None = None) -> bytes:
    """The record as the kernel would have framed it: `audit(SEC.MSEC:SERIAL): text`."""
    t = time.time() if now is None else now
    sec = int(t)
    msec = int((t - sec) * 1000)
    return f"audit({sec}.{msec:03d}:{serial}): {text}".encode()
