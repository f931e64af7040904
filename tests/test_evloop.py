"""auditpy's own event loop (system.evloop): the timer heap as a pure structure, the loop's
file descriptors, threads and tasks, the coroutine helpers, and the same schedule as asyncio's
for the same program (the property the move from asyncio rests on)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.system import evloop

SRC = Path(__file__).resolve().parents[1] / "src"


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def wrapper() -> Any:
        return await main()
    return evloop.run(wrapper())


# -- the timer heap


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=300),
       st.integers(0, 25))
def test_timers_come_due_in_deadline_then_schedule_order(
        plan: list[tuple[int, bool]], now: int) -> None:
    timers = evloop.Timers()
    loop = evloop.Loop()
    try:
        handles = [timers.add(loop, when, print, ()) for when, _ in plan]
        for handle, (_when, cancel) in zip(handles, plan, strict=True):
            if cancel:
                handle.cancel()
                handle.cancel()  # twice counts once
        live = [(when, i) for i, (when, cancel) in enumerate(plan) if not cancel]
        assert len(timers) == len(live)
        expected_next = min(live)[0] if live else None
        assert timers.next_deadline() == expected_next
        due = timers.due(now)
        assert [handles.index(t) for t in due] == [i for when, i in sorted(live) if when <= now]
        assert len(timers) == len([1 for when, _ in live if when > now])
        assert all(not t.cancelled() for t in due)
    finally:
        loop.close()


def test_many_cancelled_timers_are_dropped_at_once() -> None:
    timers = evloop.Timers()
    loop = evloop.Loop()
    try:
        handles = [timers.add(loop, float(i), print, ()) for i in range(400)]
        for handle in handles[1:300]:
            handle.cancel()
        assert timers.next_deadline() == 0.0
        assert len(timers.heap) == 101 and timers.cancelled == 0
        assert [t.when() for t in timers.due(1000.0)] == [0.0, *map(float, range(300, 400))]
    finally:
        loop.close()


# -- the loop


def test_callbacks_run_in_order_and_new_ones_wait_for_the_next_round() -> None:
    loop = evloop.Loop()
    seen: list[object] = []

    def first() -> None:
        seen.append("first")
        loop.call_soon(seen.append, "scheduled by first")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    cancelled = loop.call_soon(seen.append, "cancelled")
    cancelled.cancel()
    loop.run_forever()
    assert seen == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["first", "second", "scheduled by first"]
    loop.close()
    assert loop.is_closed()
    with pytest.raises(RuntimeError):
        loop.add_reader(0, print)


def test_timers_fire_in_order_after_their_delay() -> None:
    loop = evloop.Loop()
    seen: list[str] = []
    start = loop.time()
    b = loop.call_later(0.03, seen.append, "b")
    loop.call_later(0.01, seen.append, "a")
    loop.call_at(b.when(), seen.append, "c")  # the same deadline: after b
    loop.call_later(0.02, seen.append, "never").cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert seen == ["a", "b", "c"]
    assert loop.time() - start >= 0.05
    loop.close()


def test_readers_and_writers_on_a_socketpair() -> None:
    loop = evloop.Loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got: list[bytes] = []

    def readable() -> None:
        data = ours.recv(100)
        got.append(data)
        if data == b"stop":
            assert loop.remove_reader(ours)
            assert not loop.remove_reader(ours)
            loop.stop()

    def writable() -> None:
        assert loop.remove_writer(ours.fileno())
        theirs.send(b"one")

    loop.add_reader(ours, readable)
    loop.add_writer(ours, writable)  # same fd, both directions
    loop.call_later(0.02, theirs.send, b"stop")
    loop.run_forever()
    assert got == [b"one", b"stop"]
    ours.close()
    theirs.close()
    loop.close()


def test_a_closed_fd_whose_number_is_reused_can_be_watched_again() -> None:
    loop = evloop.Loop()
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    loop.add_writer(a, print)
    number = a.fileno()
    a.close()  # without remove_reader: epoll forgets it by itself
    b.close()
    c, d = socket.socketpair()
    fds = [c, d]
    while c.fileno() != number and d.fileno() != number and len(fds) < 20:
        fds.extend(socket.socketpair())
    reused = next(s for s in fds if s.fileno() == number)
    assert loop.remove_writer(number)  # leaves the reader's mask: modify() on a new file
    peer = fds[fds.index(reused) ^ 1]
    peer.send(b"x")
    loop.add_reader(reused, loop.stop)
    loop.run_forever()
    for s in fds:
        s.close()
    loop.close()


def test_call_soon_threadsafe_wakes_a_waiting_loop() -> None:
    loop = evloop.Loop()
    seen: list[str] = []

    def from_thread() -> None:
        time.sleep(0.02)
        loop.call_soon_threadsafe(seen.append, "woken")
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    thread.start()
    start = time.monotonic()
    loop.run_forever()  # nothing else to do: it waits in epoll without a timeout
    thread.join()
    assert seen == ["woken"] and time.monotonic() - start < 5
    loop.close()


def test_a_failing_callback_is_logged_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = evloop.Loop()
    seen: list[str] = []

    def fails() -> None:
        raise ValueError("boom")

    loop.call_soon(fails)
    loop.call_soon(seen.append, "after")
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, "auditpy.loop"):
        loop.run_forever()
    assert seen == ["after"]
    assert "Exception in callback" in caplog.text and "boom" in caplog.text
    loop.close()


def test_only_one_loop_runs_in_a_thread_and_it_is_the_running_one() -> None:
    outer = evloop.Loop()
    inner = evloop.Loop()

    async def main() -> None:
        assert evloop.running_loop() is outer
        with pytest.raises(RuntimeError):
            inner.run_forever()

    outer.run_until_complete(main())
    with pytest.raises(RuntimeError):
        evloop.running_loop()
    outer.close()
    inner.close()


# -- tasks and futures


def test_a_task_runs_its_coroutine_to_its_result() -> None:
    async def main() -> int:
        loop = evloop.running_loop()
        future: evloop.Future[int] = loop.create_future()
        loop.call_later(0.01, future.set_result, 41)
        return await future + 1

    assert run(main) == 42


def test_an_error_reaches_the_awaiting_task() -> None:
    async def fails() -> None:
        await evloop.sleep(0)
        raise KeyError("inner")

    async def main() -> str:
        try:
            await evloop.running_loop().create_task(fails())
        except KeyError as exc:
            return str(exc)
        return "no error"

    assert run(main) == "'inner'"


def test_cancelling_a_task_throws_into_what_it_awaits_and_it_may_go_on() -> None:
    async def stubborn(log: list[str]) -> str:
        try:
            await evloop.sleep(10)
        except evloop.CancelledError:
            log.append("cancelled")
        await evloop.sleep(0)
        return "went on"

    async def plain() -> None:
        await evloop.sleep(10)

    async def main() -> tuple[str, bool, bool]:
        loop = evloop.running_loop()
        log: list[str] = []
        task = loop.create_task(stubborn(log))
        other = loop.create_task(plain())
        never_started = loop.create_task(plain())
        never_started.cancel()
        await evloop.sleep(0)
        assert task.cancel() and other.cancel()
        result = await task
        with pytest.raises(evloop.CancelledError):
            await other
        assert log == ["cancelled"] and not task.cancel()
        return result, other.cancelled(), never_started.cancelled()

    assert run(main) == ("went on", True, True)


def test_a_misused_await_is_an_error_the_task_hears_about() -> None:
    other = evloop.Loop()

    class Odd:
        def __await__(self) -> Any:
            yield 5

    async def main() -> str:
        with pytest.raises(RuntimeError, match="another loop"):
            await other.create_future()
        with pytest.raises(RuntimeError, match="not a Future"):
            await Odd()
        return "went on"

    assert run(main) == "went on"
    other.close()


def test_a_future_set_twice_or_read_too_early_is_an_error() -> None:
    loop = evloop.Loop()
    future = loop.create_future()
    with pytest.raises(evloop.InvalidStateError):
        future.result()
    future.set_result(1)
    with pytest.raises(evloop.InvalidStateError):
        future.set_result(2)
    assert not future.cancel() and future.result() == 1
    loop.close()


def test_wait_for_times_out_and_cancels_what_it_waited_for() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        slow = loop.create_task(evloop.sleep(10))
        start = loop.time()
        with pytest.raises(TimeoutError):
            await evloop.wait_for(slow, 0.02)
        assert slow.cancelled() and loop.time() - start < 5
        assert await evloop.wait_for(evloop.sleep(0, "quick"), 5) == "quick"
        assert await evloop.wait_for(evloop.sleep(0, "no timeout"), None) == "no timeout"

    run(main)


def test_cancelling_wait_for_cancels_the_inner_one_too() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        inner = loop.create_task(evloop.sleep(10))
        outer = loop.create_task(evloop.wait_for(inner, 10))
        await evloop.sleep(0)
        outer.cancel()
        with pytest.raises(evloop.CancelledError):
            await outer
        assert inner.cancelled()

    run(main)


def test_shield_keeps_the_inner_task_running() -> None:
    async def main() -> str | None:
        loop = evloop.running_loop()
        inner = loop.create_task(evloop.sleep(0.02, "done"))
        outer = evloop.shield(inner)
        outer.cancel()
        with pytest.raises(evloop.CancelledError):
            await outer
        return await inner

    assert run(main) == "done"


def test_gather_in_order_first_error_and_cancel() -> None:
    async def fails() -> None:
        raise ValueError("x")

    async def main() -> None:
        loop = evloop.running_loop()
        assert await evloop.gather(evloop.sleep(0.02, 1), evloop.sleep(0, 2)) == [1, 2]
        results = await evloop.gather(fails(), evloop.sleep(0, 3), return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == 3
        with pytest.raises(ValueError):
            await evloop.gather(fails(), evloop.sleep(0, 3))
        child = loop.create_task(evloop.sleep(10))
        everything = evloop.gather(child)
        everything.cancel()
        await evloop.sleep(0)
        await evloop.sleep(0)
        assert child.cancelled()
        assert await evloop.gather() == []

    run(main)


def test_wait_first_completed_and_timeout() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        fast = loop.create_task(evloop.sleep(0.01, "fast"))
        slow = loop.create_task(evloop.sleep(10))
        done, pending = await evloop.wait([fast, slow], return_when=evloop.FIRST_COMPLETED)
        assert done == {fast} and pending == {slow}
        done, pending = await evloop.wait([slow], timeout=0.01)
        assert not done and pending == {slow}
        slow.cancel()
        done, _ = await evloop.wait([slow, fast])
        assert done == {slow, fast}

    run(main)


def test_event_wakes_every_waiter_until_cleared() -> None:
    async def main() -> list[str]:
        loop = evloop.running_loop()
        event = evloop.Event()
        seen: list[str] = []

        async def waiter(name: str) -> None:
            await event.wait()
            seen.append(name)

        tasks = [loop.create_task(waiter(n)) for n in "ab"]
        await evloop.sleep(0)
        assert not seen
        event.set()
        await evloop.gather(*tasks)
        assert event.is_set() and await event.wait()
        event.clear()
        assert not event.is_set()
        with pytest.raises(TimeoutError):
            await evloop.wait_for(event.wait(), 0.01)
        return seen

    assert run(main) == ["a", "b"]


def test_a_worker_runs_calls_in_order_off_the_loop() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        worker = evloop.Worker("test-worker")
        order: list[int] = []

        def call(n: int) -> str:
            order.append(n)
            return threading.current_thread().name

        names = await evloop.gather(*(loop.run_in_executor(worker, call, n) for n in range(5)))
        assert order == list(range(5)) and set(names) == {"test-worker"}

        def fails() -> None:
            raise OSError("in the worker")

        with pytest.raises(OSError, match="in the worker"):
            await loop.run_in_executor(worker, fails)
        gate = threading.Event()
        abandoned = loop.run_in_executor(worker, gate.wait)
        abandoned.cancel()  # its result arrives later and is dropped, not an error
        gate.set()
        assert await loop.run_in_executor(worker, lambda: "after") == "after"
        worker.shutdown()
        with pytest.raises(RuntimeError):
            loop.run_in_executor(worker, print)

    run(main)


def test_a_worker_used_before_a_fork_works_in_the_child() -> None:
    """Its thread stays in the parent (and its lock may be held there): the child gets a
    thread of its own at its first call (the resolver is such a worker)."""
    worker = evloop.Worker("forked")

    async def call() -> int:
        return await evloop.running_loop().run_in_executor(worker, os.getpid)

    parent = evloop.run(call())
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the call ran on a thread of the child
        code = 1
        try:
            code = 0 if evloop.run(evloop.wait_for(call(), 5)) == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and parent == os.getpid()
    worker.shutdown()


def test_run_cancels_what_main_left_running_and_closes_the_loop() -> None:
    left: list[evloop.Task[None]] = []
    seen: list[str] = []

    async def forever() -> None:
        try:
            await evloop.sleep(100)
        finally:
            seen.append("cleaned up")

    async def main() -> None:
        left.append(evloop.running_loop().create_task(forever()))
        await evloop.sleep(0)

    run(main)
    assert seen == ["cleaned up"] and left[0].cancelled()
    assert left[0].get_loop().is_closed()


def test_the_loop_loads_neither_asyncio_nor_typing() -> None:
    code = ("import sys; import auditpy.system.evloop; "
            "bad = [m for m in ('asyncio', 'typing', 'concurrent.futures', 'inspect', "
            "'dataclasses') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr


# -- the same schedule as asyncio's

_STEP = st.one_of(
    st.just(("yield",)),
    st.tuples(st.just("set"), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 3)),
    st.tuples(st.just("spawn"), st.integers(0, 3)),
)


def _schedule(lib: Any, new_loop: Callable[[], Any], programs: list[list[tuple[Any, ...]]]
              ) -> list[str]:
    """Run the same little programs (tasks that yield, set and wait on events, cancel and
    start each other) on `lib`'s loop and return what happened, in order."""
    trace: list[str] = []

    async def body(n: int, events: list[Any], tasks: dict[int, Any], depth: int) -> None:
        try:
            for step in programs[n]:
                trace.append(f"{n}:{step}")
                if step[0] == "yield":
                    await lib.sleep(0)
                elif step[0] == "set":
                    events[step[1]].set()
                elif step[0] == "wait":
                    await events[step[1]].wait()
                elif step[0] == "cancel" and step[1] in tasks:
                    trace.append(f"{n}:cancel->{tasks[step[1]].cancel()}")
                elif step[0] == "spawn" and depth < 2 and step[1] < len(programs):
                    key = len(tasks) + 100
                    tasks[key] = loop.create_task(body(step[1], events, tasks, depth + 1))
            trace.append(f"{n}:end")
        except lib.CancelledError:
            trace.append(f"{n}:cancelled")
            raise

    async def main() -> None:
        events = [lib.Event() for _ in range(3)]
        tasks: dict[int, Any] = {}
        for n in range(len(programs)):
            tasks[n] = loop.create_task(body(n, events, tasks, 0))
        for _ in range(12):
            await lib.sleep(0)
        for event in events:
            event.set()
        while any(not t.done() for t in tasks.values()):
            await lib.gather(*tasks.values(), return_exceptions=True)
        trace.append("states:" + "".join(
            "c" if t.cancelled() else "d" for _, t in sorted(tasks.items())))

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return trace


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_STEP, max_size=6), min_size=1, max_size=4))
def test_the_same_programs_run_in_the_same_order_as_on_asyncio(
        programs: list[list[tuple[Any, ...]]]) -> None:
    ours = _schedule(evloop, evloop.Loop, programs)
    theirs = _schedule(asyncio, asyncio.new_event_loop, programs)
    assert ours == theirs
