"""The skeleton every auditpy program stands on: signals, exit, messages, state files.

Signals are the part that must never go wrong. An audit daemon is signalled by operators,
init systems and scripts, sometimes thousands of times in a burst, and must neither die of a
signal that arrives before it is ready, nor lose a SIGTERM among a storm of SIGHUPs, nor hang.
Python's own signal handling cannot promise that: its C-level handler writes one byte per
signal to the event loop's wake-up socket (asyncio's loop did), which fills after a few hundred
signals (the byte is then dropped, with a traceback on stderr), and the handler can block on a
lock it already holds.

So the signals a program handles are blocked in every thread from the first instruction of its
`main` (`hold_signals`) and never delivered to a handler at all: the event loop reads them
from a signalfd(2) (through ctypes, as recvmmsg is read), where the kernel keeps at most one
pending instance of each, so a storm coalesces into one notice per signal number and no
signal number is ever lost. Where signalfd cannot be reached, a thread waits for them with
sigwaitinfo(2) and hands them to the loop, coalesced the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterable

from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from auditpy.system import evloop


#: What a handler learns about a signal: its number and who sent it (0 when unknown).
@dataclass(frozen=True)
class Signal:
    signum: int
    pid: int = 0
    uid: int = 0


SignalHandler = Callable[[Signal], None]

_SFD_NONBLOCK = os.O_NONBLOCK
_SFD_CLOEXEC = os.O_CLOEXEC
#: struct signalfd_siginfo is 128 bytes: ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid, ...
_SIGINFO = struct.Struct("=IiiII")
_SIGINFO_SIZE = 128


def hold_signals(signums: Iterable[int], *, only: bool = False) -> frozenset[int]:
    """Block `signums` in this thread (and every thread it starts); call it first in `main`,
    so a signal that arrives while the program is still starting waits instead of killing it.
    With `only`, every other signal is unblocked: a program born with all of them blocked
    (pyaudispd, from pyauditd) must not keep blocking the ones it does not handle.
    SIGCHLD goes back to its default disposition: inherited SIG_IGN would make the kernel
    reap children that their pidfds should report."""
    held = frozenset(signums)
    signal.pthread_sigmask(signal.SIG_SETMASK if only else signal.SIG_BLOCK, held)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return held


def _libc_signalfd() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.signalfd
        sigemptyset, sigaddset = libc.sigemptyset, libc.sigaddset
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    func.restype = ctypes.c_int
    return func, sigemptyset, sigaddset


class SignalReader:
    """Reads held signals where the loop wants them, and calls `handler` for each one.

    `close` stops reading; the signals stay blocked, so one arriving afterwards is simply
    left pending until the process exits.
    """

    def __init__(
        self,
        loop: evloop.Loop,
        signums: Iterable[int],
        handler: SignalHandler,
        *,
        use_signalfd: bool = True,
    ) -> None:
        self._loop = loop
        self._signums = frozenset(signums)
        self._handler = handler
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: signals the waiting thread saw and the loop has not handled yet (coalesced)
        self._pending: dict[int, Signal] = {}
        self._lock = threading.Lock()
        signal.pthread_sigmask(signal.SIG_BLOCK, self._signums)
        if use_signalfd:
            self._fd = self._open_signalfd()
        if self._fd >= 0:
            loop.add_reader(self._fd, self._read)
        else:
            self._thread = threading.Thread(target=self._wait, name="signals", daemon=True)
            self._thread.start()

    @property
    def method(self) -> str:
        return "signalfd" if self._fd >= 0 else "sigwaitinfo thread"

    def _open_signalfd(self) -> int:
        found = _libc_signalfd()
        if found is None:
            return -1
        signalfd, sigemptyset, sigaddset = found
        sigset = ctypes.create_string_buffer(128)  # glibc's sigset_t
        sigemptyset(sigset)
        for signum in self._signums:
            sigaddset(sigset, int(signum))
        fd = int(signalfd(-1, sigset, _SFD_NONBLOCK | _SFD_CLOEXEC))
        return fd if fd >= 0 else -1

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _SIGINFO_SIZE * 16)
        except (BlockingIOError, InterruptedError):
            return
        for offset in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
            signo, _errno, _code, pid, uid = _SIGINFO.unpack_from(data, offset)
            self._dispatch(Signal(signo, pid, uid))

    def _wait(self) -> None:
        """The fallback: this thread is the only one that ever takes the signals."""
        while not self._stop.is_set():
            info = signal.sigtimedwait(self._signums, 0.5)
            if info is None:
                continue
            with self._lock:
                first = not self._pending
                self._pending[info.si_signo] = Signal(info.si_signo, info.si_pid, info.si_uid)
            if first:
                with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for sig in sorted(pending.values(), key=lambda s: s.signum):
            self._dispatch(sig)

    def _dispatch(self, sig: Signal) -> None:
        try:
            self._handler(sig)
        except Exception:
            logging.getLogger("auditpy").exception(
                "handling %s failed", signal.Signals(sig.signum).name
            )

    def close(self) -> None:
        self._stop.set()
        if self._fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None


def seal_inherited_fds() -> None:
    """Mark every descriptor above 2 that this process inherited close-on-exec, so none can
    leak into the children it starts. (Closing them in the child with posix_spawn's close
    actions fails for a descriptor above the file limit, and then nothing starts at all.)"""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def write_state_file(path: str, text: str, mode: int = 0o640) -> None:
    """Replace `path` atomically with `text`: a reader never sees half a report. Raises
    OSError; the temporary file is removed on failure."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            os.fchmod(fd, mode)
            data = text.encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def set_oom_score_adj(value: int) -> bool:
    """pyauditd makes itself the last process the OOM killer picks (as auditd does); its
    dispatcher and the plugins must not inherit that, so the dispatcher sets it back.
    False if it could not be set (the caller says so once its messages have somewhere to
    go)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        return False
    return True
