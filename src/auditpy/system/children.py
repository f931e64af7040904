"""Child processes with exactly one owner, tracked and reaped through a pidfd.

The project began with a dispatcher whose exit was reaped by somebody else's
``waitpid(-1)``, leaving its owner with a stale pid that it later signalled (and that the
kernel could have given to an unrelated process).  Everything here therefore works on
pidfds only:

* a child is started with posix_spawn (fork+exec semantics that are safe in a threaded
  process), an empty environment, default signal dispositions, an empty signal mask and
  no inherited descriptors beyond 0-2;
* its pidfd is opened at once, and is what is signalled (``pidfd_send_signal`` cannot hit a
  recycled pid) and what is waited on (``waitid(P_PIDFD)`` reaps that child and no other);
* nothing in the package ever waits for "any child", so no owner's child can be stolen.

`ChildHandle.attach` hands the pidfd to the event loop, so a long-lived process (the
dispatcher) learns about an exit the moment it happens, without SIGCHLD.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence

from auditpy.system import evloop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

#: The program every auditpy process runs to change the runlevel (the SINGLE and HALT actions).
INIT_PATH = "/sbin/init"

#: Dispositions the parent set (SIG_IGN for most signals, in the daemons) survive exec; a
#: child must start with a clean slate, so every catchable signal is reset to its default.
_RESET_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class ChildHandle:
    """A child process owned by exactly one reaper, through its pidfd.

    Register it with `attach(loop, on_exit)`: the pidfd becomes readable when the child
    exits, the callback reaps it with waitid(P_PIDFD) once, unregisters the reader before
    the pidfd is closed (so the loop never holds a stale fd number), then calls on_exit.
    `wait()` and `terminate()` are the blocking equivalents for shutdown paths and tests.
    """

    __slots__ = ("_loop", "_pidfd", "_reaped", "_status", "name", "pid")

    def __init__(self, pid: int, pidfd: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self._pidfd = pidfd
        self._reaped = False
        self._status: int | None = None
        self._loop: evloop.Loop | None = None

    def __repr__(self) -> str:
        state = f"status={self._status}" if self._reaped else "running"
        return f"<ChildHandle {self.name} pid={self.pid} {state}>"

    @property
    def pidfd(self) -> int:
        """-1 once closed."""
        return self._pidfd

    @property
    def reaped(self) -> bool:
        return self._reaped

    @property
    def returncode(self) -> int | None:
        """Exit status, or -signal if killed; None while running (or if the status was
        lost because something else reaped the child, which would be a bug)."""
        return self._status

    def reap(self) -> int | None:
        """Collect the exit status if the child has exited; never blocks, never waits
        twice."""
        if self._reaped or self._pidfd < 0:
            return self._status
        try:
            res = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            self._reaped = True
            return None
        if res is None:
            return None
        self._reaped = True
        if res.si_code == os.CLD_EXITED:
            self._status = res.si_status
        else:
            self._status = -res.si_status
        return self._status

    def attach(
        self,
        loop: evloop.Loop,
        on_exit: Callable[[ChildHandle], None] | None = None,
    ) -> None:
        """Watch the pidfd from `loop`; `on_exit` runs once, after the child is reaped."""
        if self._pidfd < 0:
            raise ValueError(f"{self!r} has no pidfd")
        fd = self._pidfd

        def readable() -> None:
            if not self._reaped:
                self.reap()
                if not self._reaped:
                    return  # spurious wake-up
            self.close()
            if on_exit is not None:
                on_exit(self)

        loop.add_reader(fd, readable)
        self._loop = loop

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the child exits (or timeout); closes the pidfd once reaped."""
        if not self._reaped and self._pidfd >= 0:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            self.reap()
        if self._reaped:
            self.close()
        return self._status

    def terminate(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; returns the
        status once reaped (exactly once, whatever happened before)."""
        if self.send_signal(signal.SIGTERM):
            self.wait(timeout)
        if not self._reaped and self.send_signal(signal.SIGKILL):
            self.wait(None)
        elif not self._reaped:
            self.wait(None)  # exited between the checks: collect it
        return self._status

    def send_signal(self, signum: int) -> bool:
        """Signal through the pidfd, which cannot hit a recycled pid."""
        if self._reaped or self._pidfd < 0:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        """Drop the pidfd (unregistering it from the loop first).  An unreaped child then
        stays a zombie, so call this only after reaping or when exiting anyway."""
        fd, self._pidfd = self._pidfd, -1
        loop, self._loop = self._loop, None
        if fd >= 0:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(fd)
            os.close(fd)


#: SO_SNDBUFFORCE: root may exceed net.core.wmem_max (212992 bytes on many hosts).
_SO_SNDBUFFORCE = 32


def stdin_pair(send_buffer: int) -> tuple[socket.socket, socket.socket]:
    """A socketpair to feed a child's stdin: (our end, non-blocking, whose send buffer holds
    about `send_buffer` bytes the child has not read yet; the child's end).

    The buffer is what absorbs a reader that is briefly not scheduled before records queue
    in our memory (and, at q_depth, are dropped), so it is forced past the sysctl limit
    when we may.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            ours.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, send_buffer)
        except OSError:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        ours.setblocking(False)
    except OSError:
        ours.close()
        theirs.close()
        raise
    return ours, theirs


def _inheritable_fds() -> list[int]:
    """Descriptors above 2 that would survive exec (Python opens everything close-on-exec,
    but an inherited or deliberately inheritable one must not leak into a child)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            pass  # the directory handle listdir used, already closed
    return found


if TYPE_CHECKING:
    class SpawnChild(Protocol):
        """`spawn_child`'s signature, for owners that take their spawner as a parameter."""

        def __call__(
            self,
            argv: Sequence[str],
            *,
            stdin_fd: int | None = None,
            env: Mapping[str, str] | None = None,
            new_session: bool = False,
            blocked_signals: Iterable[int] = (),
        ) -> ChildHandle: ...


def spawn_child(
    argv: Sequence[str],
    *,
    stdin_fd: int | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    blocked_signals: Iterable[int] = (),
) -> ChildHandle:
    """Start argv[0] with `argv`, default signal dispositions and nothing open above fd 2.

    `stdin_fd` becomes the child's fd 0 (None: the child shares ours).  `env` is the whole
    environment (None: empty).  `new_session` puts the child in its own session, so
    terminal signals aimed at the parent's process group do not reach it.
    `blocked_signals` is the child's initial signal mask (empty by default): a child that
    installs handlers first can unblock them afterwards, so a signal sent while it is still
    starting is held instead of killing it with the default action.

    Raises OSError if the program cannot be started (glibc reports exec failures).  The
    caller owns the handle and must reap it (attach, wait or terminate).
    """
    path = argv[0]
    file_actions: list[tuple[int, ...]] = []
    if stdin_fd is not None and stdin_fd != 0:
        file_actions.append((os.POSIX_SPAWN_DUP2, stdin_fd, 0))
    # Not posix_spawn's close actions: glibc refuses one for a descriptor above the file
    # limit (EBADF), and then no child could ever start. Ours are close-on-exec from birth;
    # one that is not (inherited, or made inheritable on purpose) is made so here.
    for fd in _inheritable_fds():
        os.set_inheritable(fd, False)
    pid = os.posix_spawn(
        path,
        list(argv),
        {} if env is None else dict(env),
        file_actions=file_actions,
        setsigmask=tuple(blocked_signals),
        setsigdef=_RESET_SIGNALS,
        setsid=new_session,
    )
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        # Cannot track it the normal way: reap this exact pid before giving up.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return ChildHandle(pid, pidfd, os.path.basename(path))


def spawn(
    path: str,
    args: Sequence[str] = (),
    *,
    stdin_fd: int | None = None,
    new_session: bool = False,
) -> ChildHandle:
    """`spawn_child([path, *args])` with an empty environment and an empty signal mask."""
    return spawn_child([path, *args], stdin_fd=stdin_fd, new_session=new_session)


def spawn_helper(
    path: str, args: Sequence[str] = (), *, stdin_fd: int | None = None
) -> ChildHandle:
    """A helper run by a daemon (exec actions, mail, init); see `spawn`. Its stdin is
    /dev/null unless `stdin_fd` is given: a plugin's stdin is its record stream, which a
    helper must neither read nor hold open."""
    if stdin_fd is not None:
        return spawn(path, args, stdin_fd=stdin_fd)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return spawn(path, args, stdin_fd=devnull)
    finally:
        os.close(devnull)
