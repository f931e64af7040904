"""auditpy's own event loop: one epoll, a timer heap, coroutine tasks, worker threads.

asyncio is the largest single weight in a daemon's resident memory that the daemon does not
need: with it come typing, inspect, concurrent.futures, subprocess and its ssl machinery, for
a loop of which pyauditd and pyaudispd use a small part. This module is that part, written
against what they use and no more, with the names and the behaviour asyncio gives them
(`call_soon`, `call_later`, `add_reader`, tasks that are cancelled by a CancelledError thrown
into their coroutine, `wait_for` that cancels what it waited for), so code moves from one
to the other without a change of meaning.

What it does not do, on purpose: no policy, no child watcher (pidfds are read like any fd),
no signal handlers (`service.SignalReader` reads a signalfd), no debug mode, no executor
pools (a `Worker` is one thread that runs what it is given in order). It imports nothing
but the modules every daemon already has: `typing` only while type checking.

The timer heap (`Timers`) is a pure structure with an injected clock, so its ordering is
tested without time passing.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import logging
import os
import select
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
    from typing import Any, Generic, Self, TypeVar

    from auditpy.system.transports import BaseProtocol, Server, StreamTransport

    T = TypeVar("T")

    class _Generic(Generic[T]):
        pass
else:
    T = None

    class _Generic:
        """A base whose subscription is a no-op at run time (typing is not loaded)."""

        def __class_getitem__(cls, _item: object) -> type:
            return cls


log = logging.getLogger("auditpy.loop")

FIRST_COMPLETED = "FIRST_COMPLETED"
ALL_COMPLETED = "ALL_COMPLETED"

_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT
#: readiness a reader (and a writer) must hear about: an error or a hang-up is news to both
_READ_NEWS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_WRITE_NEWS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
#: cancelled timers are dropped from the heap once they are this many and half of it
_COMPACT_AT = 100
_MAX_EVENTS = 256
#: the longest a poll waits, so a clock that jumps cannot stall a timer for long
_MAX_WAIT = 24 * 3600.0


class CancelledError(BaseException):
    """Thrown into a task's coroutine when the task is cancelled (a BaseException, as
    asyncio's, so `except Exception` does not swallow it)."""


class InvalidStateError(Exception):
    """A future's result asked for before it has one, or set twice."""


class Handle:
    """A callback scheduled on the loop; `cancel` keeps it from running."""

    __slots__ = ("_args", "_callback", "_cancelled", "_loop")

    def __init__(self, loop: Loop, callback: Callable[..., object], args: tuple[Any, ...]
                 ) -> None:
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def _run(self) -> None:
        call_guarded(self._loop, self._callback, *self._args)

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<{type(self).__name__} {self._callback!r}{state}>"


def call_guarded(loop: Loop, callback: Callable[..., T], *args: Any) -> T | None:
    """`callback(*args)`, whose error goes to the loop's exception handler instead of the
    caller (None then): a callback's failure must not end the loop or the connection."""
    try:
        return callback(*args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler(
            {"message": f"Exception in callback {callback!r}", "exception": exc})
        return None


class TimerHandle(Handle):
    """A callback due at `when` (the loop's clock); ordered by deadline, then by the order
    in which they were scheduled."""

    __slots__ = ("_seq", "_timers", "_when")

    def __init__(self, when: float, seq: int, loop: Loop, callback: Callable[..., object],
                 args: tuple[Any, ...], timers: Timers) -> None:
        super().__init__(loop, callback, args)
        self._when = when
        self._seq = seq
        self._timers: Timers | None = timers

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            if self._timers is not None:
                self._timers.cancelled += 1

    def __lt__(self, other: TimerHandle) -> bool:
        return (self._when, self._seq) < (other._when, other._seq)


class Timers:
    """The pending timers: a heap by (deadline, order scheduled), cancelled ones dropped
    lazily (and all at once when they become most of it)."""

    def __init__(self) -> None:
        self.heap: list[TimerHandle] = []
        self.cancelled = 0
        self._seq = 0

    def add(self, loop: Loop, when: float, callback: Callable[..., object],
            args: tuple[Any, ...]) -> TimerHandle:
        self._seq += 1
        timer = TimerHandle(when, self._seq, loop, callback, args, self)
        heapq.heappush(self.heap, timer)
        return timer

    def _drop_cancelled(self) -> None:
        heap = self.heap
        if self.cancelled > _COMPACT_AT and self.cancelled * 2 > len(heap):
            self.heap = [t for t in heap if not t._cancelled]
            heapq.heapify(self.heap)
            for timer in heap:
                if timer._cancelled:
                    timer._timers = None
            self.cancelled = 0
        else:
            while heap and heap[0]._cancelled:
                heapq.heappop(heap)._timers = None
                self.cancelled -= 1

    def next_deadline(self) -> float | None:
        """When the earliest live timer is due; None when there is none."""
        self._drop_cancelled()
        return self.heap[0]._when if self.heap else None

    def due(self, now: float) -> list[TimerHandle]:
        """The live timers due at `now`, earliest first, taken off the heap."""
        found = []
        heap = self.heap
        while heap and heap[0]._when <= now:
            timer = heapq.heappop(heap)
            timer._timers = None
            if timer._cancelled:
                self.cancelled -= 1
            else:
                found.append(timer)
        return found

    def __len__(self) -> int:
        return len(self.heap) - self.cancelled


class _Running(threading.local):
    loop: Loop | None = None


_running = _Running()


def running_loop() -> Loop:
    """The loop running in this thread (RuntimeError when none is)."""
    loop = _running.loop
    if loop is None:
        raise RuntimeError("no running event loop")
    return loop


class Future(_Generic[T]):
    """A result that arrives later, awaited by tasks, with callbacks run by the loop."""

    _state = "PENDING"
    _result: Any = None
    _exception: BaseException | None = None
    _log_unretrieved = False

    def __init__(self, loop: Loop | None = None) -> None:
        self._loop = loop if loop is not None else running_loop()
        self._callbacks: list[Callable[[Any], object]] = []

    def get_loop(self) -> Loop:
        return self._loop

    def done(self) -> bool:
        return self._state != "PENDING"

    def cancelled(self) -> bool:
        return self._state == "CANCELLED"

    def result(self) -> T:
        if self._state == "CANCELLED":
            raise CancelledError
        if self._state == "PENDING":
            raise InvalidStateError("result is not ready")
        self._log_unretrieved = False
        if self._exception is not None:
            raise self._exception.with_traceback(self._exception.__traceback__)
        return self._result  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        if self._state == "CANCELLED":
            raise CancelledError
        if self._state == "PENDING":
            raise InvalidStateError("exception is not set")
        self._log_unretrieved = False
        return self._exception

    def set_result(self, result: T) -> None:
        if self._state != "PENDING":
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._state = "FINISHED"
        self._schedule_callbacks()

    def set_exception(self, exception: BaseException | type[BaseException]) -> None:
        if self._state != "PENDING":
            raise InvalidStateError(f"{self._state}: {self!r}")
        if isinstance(exception, type):
            exception = exception()
        if isinstance(exception, StopIteration):
            raise TypeError("StopIteration cannot be raised into a Future")
        self._exception = exception
        self._state = "FINISHED"
        self._log_unretrieved = True
        self._schedule_callbacks()

    def cancel(self, msg: object = None) -> bool:
        if self._state != "PENDING":
            return False
        self._state = "CANCELLED"
        self._schedule_callbacks()
        return True

    def add_done_callback(self, fn: Callable[[Self], object]) -> None:
        if self._state != "PENDING":
            self._loop.call_soon(fn, self)
        else:
            self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Self], object]) -> int:
        kept = [cb for cb in self._callbacks if cb != fn]
        removed = len(self._callbacks) - len(kept)
        self._callbacks[:] = kept
        return removed

    def _schedule_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._loop.call_soon(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state == "PENDING":
            yield self
        return self.result()

    __iter__ = __await__

    def __del__(self) -> None:
        if self._log_unretrieved and self._exception is not None:
            # nothing a finalizer logs may raise: the interpreter may be shutting down
            with contextlib.suppress(Exception):
                log.error("%s exception was never retrieved: %r", type(self).__name__,
                          self._exception, exc_info=self._exception)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.lower()}>"


class Task(Future[T]):
    """Runs a coroutine on the loop: each `await` of a pending future parks it until that
    future is done. `cancel` cancels the future it waits on (or throws CancelledError
    into the coroutine at its next step); the coroutine may catch it and go on."""

    def __init__(self, coro: Coroutine[Any, Any, T], loop: Loop | None = None,
                 name: str | None = None) -> None:
        super().__init__(loop)
        self._coro = coro
        self._name = name or str(getattr(coro, "__qualname__", "task"))
        self._waiting_on: Future[Any] | None = None
        self._must_cancel = False
        #: a misuse the coroutine hears about at its next step (as asyncio tells it)
        self._misuse: RuntimeError | None = None
        self._loop._tasks.add(self)
        self._loop.call_soon(self._step)

    def get_name(self) -> str:
        return self._name

    def cancel(self, msg: object = None) -> bool:
        if self.done():
            return False
        waiting = self._waiting_on
        if waiting is not None and waiting.cancel():
            return True  # its callback steps the coroutine into a CancelledError
        self._must_cancel = True
        return True

    def _step(self, _future: Future[Any] | None = None) -> None:
        if self.done():
            return
        self._waiting_on = None
        throw: BaseException | None = self._misuse
        self._misuse = None
        if self._must_cancel:
            self._must_cancel = False
            throw = CancelledError()
        try:
            yielded = self._coro.send(None) if throw is None else self._coro.throw(throw)
        except StopIteration as stop:
            if self._must_cancel:
                self._must_cancel = False
                super().cancel()
            else:
                super().set_result(stop.value)
        except CancelledError:
            super().cancel()
        except (KeyboardInterrupt, SystemExit) as exc:
            super().set_exception(exc)
            raise
        except BaseException as exc:
            super().set_exception(exc)
        else:
            if isinstance(yielded, Future) and yielded._loop is self._loop and (
                    yielded is not self):
                self._waiting_on = yielded
                yielded.add_done_callback(self._step)
                if self._must_cancel and yielded.cancel():
                    self._must_cancel = False
            else:
                if isinstance(yielded, Future):
                    self._misuse = RuntimeError(
                        f"task {self._name} awaits itself" if yielded is self else
                        f"task {self._name} awaits a future of another loop")
                elif yielded is not None:  # None: a bare yield, everything else runs once
                    self._misuse = RuntimeError(
                        f"task {self._name} yielded {yielded!r}, not a Future")
                self._loop.call_soon(self._step)
        finally:
            if self.done():
                self._loop._tasks.discard(self)

    def __repr__(self) -> str:
        return f"<Task {self._name} {self._state.lower()}>"


class Loop:
    """One epoll, the ready queue, the timers; `run_until_complete` and `run_forever` as
    asyncio's, and the subset of its loop's methods auditpy's programs call."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._ready: collections.deque[Handle] = collections.deque()
        self._timers = Timers()
        self._readers: dict[int, Handle] = {}
        self._writers: dict[int, Handle] = {}
        self._masks: dict[int, int] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, _READ)
        self._stopping = False
        self._closed = False
        self._thread: int | None = None
        self._tasks: set[Task[Any]] = set()
        self._exception_handler: Callable[[Loop, dict[str, Any]], object] | None = None

    # -- the clock and scheduling

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        handle = Handle(self, callback, args)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Handle:
        """`call_soon` from any thread: the deque's append is atomic, and the eventfd wakes
        a poll that is waiting."""
        handle = self.call_soon(callback, *args)
        if not self._closed:
            # the counter full or closed: the loop is awake, or gone
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any
                   ) -> TimerHandle:
        return self._timers.add(self, self.time() + delay, callback, args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any
                ) -> TimerHandle:
        return self._timers.add(self, when, callback, args)

    def create_future(self) -> Future[Any]:
        return Future(self)

    def create_task(self, coro: Coroutine[Any, Any, T], *, name: str | None = None
                    ) -> Task[T]:
        return Task(coro, self, name)

    def run_in_executor(self, worker: Worker, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` on `worker`'s thread; the future has its result or its error."""
        future: Future[T] = Future(self)
        worker.submit(self, future, fn, args)
        return future

    # -- streams (system.transports, loaded by the first program that uses one)

    async def create_connection(self, factory: Callable[[], BaseProtocol],
                                host: str | None = None, port: int | None = None, *,
                                sock: socket.socket | None = None,
                                ssl: ssl.SSLContext | None = None,
                                server_hostname: str | None = None,
                                ssl_handshake_timeout: float | None = None
                                ) -> tuple[StreamTransport, BaseProtocol]:
        from auditpy.system import transports

        return await transports.create_connection(
            self, factory, host, port, sock=sock, ssl=ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout)

    async def connect_accepted_socket(self, factory: Callable[[], BaseProtocol],
                                      sock: socket.socket
                                      ) -> tuple[StreamTransport, BaseProtocol]:
        from auditpy.system import transports

        return await transports.connect_accepted_socket(self, factory, sock)

    async def start_tls(self, transport: StreamTransport, protocol: BaseProtocol,
                        context: ssl.SSLContext, *, server_side: bool = False,
                        server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None) -> StreamTransport:
        from auditpy.system import transports

        return await transports.start_tls(
            self, transport, protocol, context, server_side=server_side,
            server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout)

    async def create_server(self, factory: Callable[[], BaseProtocol], host: str | None,
                            port: int, *, reuse_address: bool = True) -> Server:
        from auditpy.system import transports

        return await transports.create_server(self, factory, host, port,
                                              reuse_address=reuse_address)

    async def create_unix_server(self, factory: Callable[[], BaseProtocol], path: str
                                 ) -> Server:
        from auditpy.system import transports

        return await transports.create_unix_server(self, factory, path)

    async def getaddrinfo(self, host: str | None, port: int | str | None, *, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0
                          ) -> list[tuple[Any, ...]]:
        from auditpy.system import transports

        return await transports.getaddrinfo(self, host, port, family=family, type=type,
                                            proto=proto, flags=flags)

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        from auditpy.system import transports

        await transports.sock_connect(self, sock, address)

    # -- file descriptors

    def _set_mask(self, fd: int, mask: int) -> None:
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self._masks[fd]
            # closed before it was removed: epoll forgot it already
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        elif old:
            self._masks[fd] = mask
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:  # closed and its number reused: epoll forgot it
                self._epoll.register(fd, mask)
        else:
            self._epoll.register(fd, mask)
            self._masks[fd] = mask

    def add_reader(self, fd: int | Any, callback: Callable[..., object], *args: Any) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._check_open()
        old = self._readers.get(fd)
        if old is not None:
            old.cancel()
        self._readers[fd] = Handle(self, callback, args)
        self._set_mask(fd, self._masks.get(fd, 0) | _READ)

    def remove_reader(self, fd: int | Any) -> bool:
        fd = fd if isinstance(fd, int) else fd.fileno()
        handle = self._readers.pop(fd, None)
        if handle is None:
            return False
        handle.cancel()
        if not self._closed:
            self._set_mask(fd, self._masks.get(fd, 0) & ~_READ)
        return True

    def add_writer(self, fd: int | Any, callback: Callable[..., object], *args: Any) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._check_open()
        old = self._writers.get(fd)
        if old is not None:
            old.cancel()
        self._writers[fd] = Handle(self, callback, args)
        self._set_mask(fd, self._masks.get(fd, 0) | _WRITE)

    def remove_writer(self, fd: int | Any) -> bool:
        fd = fd if isinstance(fd, int) else fd.fileno()
        handle = self._writers.pop(fd, None)
        if handle is None:
            return False
        handle.cancel()
        if not self._closed:
            self._set_mask(fd, self._masks.get(fd, 0) & ~_WRITE)
        return True

    # -- running

    def _run_once(self) -> None:
        ready = self._ready
        if ready or self._stopping:
            timeout = 0.0
        else:
            deadline = self._timers.next_deadline()
            timeout = -1.0 if deadline is None else min(max(0.0, deadline - self.time()),
                                                        _MAX_WAIT)
        events = self._epoll.poll(timeout, _MAX_EVENTS)
        readers, writers = self._readers, self._writers
        for fd, mask in events:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
                continue
            if mask & _READ_NEWS:
                handle = readers.get(fd)
                if handle is not None:
                    ready.append(handle)
            if mask & _WRITE_NEWS:
                handle = writers.get(fd)
                if handle is not None:
                    ready.append(handle)
        if self._timers.heap:
            ready.extend(self._timers.due(self.time()))
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def run_forever(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the loop is already running")
        self._check_open()
        if _running.loop is not None:
            raise RuntimeError("another loop is running in this thread")
        self._thread = threading.get_ident()
        _running.loop = self
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._stopping = False
            self._thread = None
            _running.loop = None

    def run_until_complete(self, awaitable: Awaitable[T]) -> T:
        future = ensure_future(awaitable, loop=self)

        def stop(_future: Future[T]) -> None:
            self.stop()

        future.add_done_callback(stop)
        try:
            self.run_forever()
        finally:
            future.remove_done_callback(stop)
        if not future.done():
            raise RuntimeError("the loop stopped before the future completed")
        return future.result()

    def stop(self) -> None:
        """Stop after the callbacks that are ready now have run."""
        self._stopping = True

    def is_running(self) -> bool:
        return self._thread is not None

    def is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event loop is closed")

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("cannot close a running event loop")
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._timers = Timers()
        self._readers.clear()
        self._writers.clear()
        self._masks.clear()
        self._epoll.close()
        os.close(self._wake)

    def all_tasks(self) -> set[Task[Any]]:
        return {task for task in self._tasks if not task.done()}

    def set_exception_handler(
            self, handler: Callable[[Loop, dict[str, Any]], object] | None) -> None:
        """Who hears of an error no caller can: a failed callback, a task's unretrieved
        error (None: the log)."""
        self._exception_handler = handler

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is not None:
            try:
                self._exception_handler(self, context)
                return
            except Exception:  # the handler's own failure goes to the log, with the error
                log.exception("the loop's exception handler failed")
        exc = context.get("exception")
        log.error("%s", context.get("message", "unhandled error in the event loop"),
                  exc_info=exc if isinstance(exc, BaseException) else None)


class Worker:
    """One thread that runs the calls given to it in order (for the blocking calls a loop
    must not make: fsync, a netlink request, a configuration file to read). Started at the
    first call; `shutdown` lets it finish what it has and ends it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: collections.deque[tuple[Loop, Future[Any], Callable[..., Any],
                                             tuple[Any, ...]] | None] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def submit(self, loop: Loop, future: Future[T], fn: Callable[..., T],
               args: tuple[Any, ...]) -> None:
        if self._thread is not None and self._pid != os.getpid():
            # a forked child: the thread stayed in the parent, and so may the lock
            self._ready = threading.Condition(threading.Lock())
            self._calls.clear()
            self._thread = None
        with self._ready:
            if self._closed:
                raise RuntimeError(f"worker {self._name} is shut down")
            self._calls.append((loop, future, fn, args))
            if self._thread is None:
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._calls:
                    self._ready.wait()
                call = self._calls.popleft()
            if call is None:
                return
            loop, future, fn, args = call
            try:
                result = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def shutdown(self, wait: bool = True, *, cancel_pending: bool = False) -> None:
        """No more calls; the thread ends after the one it runs (and, unless
        `cancel_pending`, after those waiting: their futures are cancelled otherwise)."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            if cancel_pending:
                for call in self._calls:
                    if call is not None and not call[0].is_closed():
                        call[0].call_soon_threadsafe(call[1].cancel)
                self._calls.clear()
            self._calls.append(None)
            self._ready.notify()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()


def _settle(future: Future[T], result: T, exc: BaseException | None) -> None:
    if future.done():
        return  # cancelled while the call ran
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def release(waiter: Future[Any], *_args: object) -> None:
    """Wake whoever awaits `waiter` (a callback for timers, readers and futures alike)."""
    if not waiter.done():
        waiter.set_result(None)


# -- the coroutine helpers, as asyncio's


def ensure_future(awaitable: Awaitable[T], *, loop: Loop | None = None) -> Future[T]:
    if isinstance(awaitable, Future):
        return awaitable
    loop = loop if loop is not None else running_loop()
    if hasattr(awaitable, "send") and hasattr(awaitable, "throw"):
        return loop.create_task(awaitable)  # type: ignore[arg-type]

    async def wrap() -> T:
        return await awaitable

    return loop.create_task(wrap())


def create_task(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> Task[T]:
    """A task on the running loop."""
    return running_loop().create_task(coro, name=name)


class _Yield:
    def __await__(self) -> Generator[None, None, None]:
        yield None


async def sleep(delay: float, result: T | None = None) -> T | None:
    """Suspend for `delay` seconds (0: let everything that is ready run first)."""
    if delay <= 0:
        await _Yield()
        return result
    loop = running_loop()
    future: Future[None] = loop.create_future()
    timer = loop.call_later(delay, release, future)
    try:
        await future
    finally:
        timer.cancel()
    return result


async def wait_for(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await `awaitable`; after `timeout` seconds cancel it, wait until it has stopped, and
    raise TimeoutError. Cancelling the caller cancels it too."""
    if timeout is None:
        return await awaitable
    loop = running_loop()
    future = ensure_future(awaitable, loop=loop)
    if future.done():
        return future.result()
    waiter: Future[None] = loop.create_future()
    timer = loop.call_later(max(timeout, 0.0), release, waiter)
    wake = functools.partial(release, waiter)
    future.add_done_callback(wake)
    try:
        try:
            await waiter
        except CancelledError:
            future.remove_done_callback(wake)
            await _cancel_and_wait(future)
            raise
        if future.done():
            return future.result()
        future.remove_done_callback(wake)
        await _cancel_and_wait(future)
        try:
            return future.result()
        except CancelledError as exc:
            raise TimeoutError from exc
    finally:
        timer.cancel()


async def _cancel_and_wait(future: Future[Any]) -> None:
    """Cancel `future` and wait until it is done (a task may take steps to end)."""
    loop = future.get_loop()
    waiter: Future[None] = loop.create_future()
    future.add_done_callback(functools.partial(release, waiter))
    future.cancel()
    await waiter


def shield(awaitable: Awaitable[T]) -> Future[T]:
    """A future that follows `awaitable` but whose cancellation does not reach it."""
    inner = ensure_future(awaitable)
    if inner.done():
        return inner
    outer: Future[T] = inner.get_loop().create_future()

    def copy(_inner: Future[T]) -> None:
        if outer.done():
            if not inner.cancelled():
                inner.exception()  # retrieved: the outer was cancelled, nobody asks
            return
        if inner.cancelled():
            outer.cancel()
        elif (exc := inner.exception()) is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(inner.result())

    def forget(_outer: Future[T]) -> None:
        if not inner.done():
            inner.remove_done_callback(copy)

    inner.add_done_callback(copy)
    outer.add_done_callback(forget)
    return outer


def gather(*awaitables: Awaitable[Any], return_exceptions: bool = False
           ) -> Future[list[Any]]:
    """A future of all their results in order; the first error is its error (or, with
    `return_exceptions`, each error is its place's result). Cancelling it cancels them."""
    # the loop of the first future given (gather may be called before the loop runs)
    loop = next((a.get_loop() for a in awaitables if isinstance(a, Future)), None)
    loop = loop if loop is not None else running_loop()
    children = [ensure_future(a, loop=loop) for a in awaitables]
    outer: Future[list[Any]] = loop.create_future()
    if not children:
        outer.set_result([])
        return outer
    left = [len(children)]

    def child_done(child: Future[Any]) -> None:
        left[0] -= 1
        if outer.done():
            if not child.cancelled():
                child.exception()
            return
        if not return_exceptions:
            if child.cancelled():
                outer.cancel()
                return
            if (exc := child.exception()) is not None:
                outer.set_exception(exc)
                return
        if left[0] == 0:
            results: list[Any] = []
            for c in children:
                if c.cancelled():
                    results.append(CancelledError())
                else:
                    results.append(c.exception() or c.result())
            outer.set_result(results)

    def outer_done(_outer: Future[list[Any]]) -> None:
        if outer.cancelled():
            for child in children:
                child.cancel()

    for child in children:
        child.add_done_callback(child_done)
    outer.add_done_callback(outer_done)
    return outer


async def wait(futures: Iterable[Future[Any]], timeout: float | None = None,
               return_when: str = ALL_COMPLETED) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """(done, pending) once the first is done (FIRST_COMPLETED) or all are, or at
    `timeout`; nothing is cancelled."""
    loop = running_loop()
    fs = {ensure_future(f, loop=loop) for f in futures}
    if not fs:
        raise ValueError("no futures to wait for")
    done = {f for f in fs if f.done()}
    if (return_when == FIRST_COMPLETED and done) or len(done) == len(fs):
        return done, fs - done
    waiter: Future[None] = loop.create_future()
    timer = loop.call_later(timeout, release, waiter) if timeout is not None else None
    left = [len(fs) - len(done)]

    def one_done(_f: Future[Any]) -> None:
        left[0] -= 1
        if return_when == FIRST_COMPLETED or left[0] == 0:
            release(waiter)

    for f in fs:
        f.add_done_callback(one_done)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for f in fs:
            f.remove_done_callback(one_done)
    done = {f for f in fs if f.done()}
    return done, fs - done


class Event:
    """asyncio.Event: `wait` returns once `set` is called, until `clear`."""

    def __init__(self) -> None:
        self._waiters: collections.deque[Future[None]] = collections.deque()
        self._value = False

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters:
                release(waiter)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: Future[None] = running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run: a new loop runs `main` to its end; the tasks it left are cancelled and
    awaited, then the loop is closed."""
    loop = Loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = loop.all_tasks()
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(gather_on(loop, left))
                for task in left:
                    if not task.cancelled() and task.exception() is not None:
                        loop.call_exception_handler({
                            "message": f"unhandled error in {task!r} at the end of run()",
                            "exception": task.exception()})
        finally:
            loop.close()


def gather_on(loop: Loop, futures: Iterable[Future[Any]]) -> Future[list[Any]]:
    """`gather(..., return_exceptions=True)` from outside a running loop."""
    async def collect() -> list[Any]:
        return await gather(*futures, return_exceptions=True)
    return loop.create_task(collect())
