#!/usr/bin/env python3
"""What one wakeup of the event loop costs: auditpy's own loop (auditpy.system.evloop, which
every program runs on) against asyncio's, a bare `selectors` loop and a bare `select.epoll`
loop, each woken by a byte on a socketpair and calling one callback that reads it, in this
process (the fan-in server wakes once per batch of clients).

The second table is the daemon at low rates, which reads about fifty times a second, each
time after a pause: a wakeup after sleeping finds cold caches, so each loop is woken by its
own timer after --pause-ms with nothing else to do (a callback that schedules the next),
beside a bare `select.epoll` poll with that timeout, libc's epoll_wait called through
ctypes, and the same in C (bench/wake.c, built with gcc, left out without it).

    python3 bench/loops.py [--wakeups 100000] [--rounds 5] [--pause-ms 20]
                           [--paused-wakeups 100]

Prints CPU µs per wakeup for each loop (median of the rounds) side by side. No root and no
kernel audit state needed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import select
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from auditpy.system.evloop import Loop  # this tree's, not an installed one


class PingPong:
    """A socketpair whose every wakeup reads one byte and sends the next, `wakeups` times."""

    def __init__(self, wakeups: int) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.left = wakeups

    def readable(self) -> None:
        self.ours.recv(64)
        self.left -= 1
        if self.left:
            self.theirs.send(b"x")

    def start(self) -> float:
        self.theirs.send(b"x")
        return time.process_time()

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def on_loop(new_loop: Callable[[], Any], wakeups: int) -> float:
    """The ping-pong on an asyncio-style loop (asyncio's or auditpy's: the same calls)."""
    loop = new_loop()
    pair = PingPong(wakeups)
    done = loop.create_future()

    def readable() -> None:
        pair.readable()
        if not pair.left and not done.done():
            done.set_result(None)

    loop.add_reader(pair.ours.fileno(), readable)
    start = pair.start()
    loop.run_until_complete(done)
    spent = time.process_time() - start
    loop.remove_reader(pair.ours.fileno())
    loop.close()
    pair.close()
    return float(spent)


def selectors_loop(wakeups: int) -> float:
    selector = selectors.DefaultSelector()
    pair = PingPong(wakeups)
    selector.register(pair.ours, selectors.EVENT_READ, pair.readable)
    start = pair.start()
    while pair.left:
        for key, _events in selector.select(1.0):
            key.data()
    spent = time.process_time() - start
    selector.close()
    pair.close()
    return spent


def epoll_loop(wakeups: int) -> float:
    epoll = select.epoll()
    pair = PingPong(wakeups)
    callbacks = {pair.ours.fileno(): pair.readable}
    epoll.register(pair.ours.fileno(), select.EPOLLIN)
    start = pair.start()
    while pair.left:
        for fd, _events in epoll.poll(1.0):
            callbacks[fd]()
    spent = time.process_time() - start
    epoll.close()
    pair.close()
    return spent


def paused_on_loop(new_loop: Callable[[], Any], wakeups: int, pause: float) -> float:
    """An asyncio-style loop woken `wakeups` times by its own timer, `pause` s apart."""
    loop = new_loop()
    done = loop.create_future()
    left = [wakeups]

    def tick() -> None:
        left[0] -= 1
        if left[0]:
            loop.call_later(pause, tick)
        elif not done.done():
            done.set_result(None)

    loop.call_soon(tick)
    start = time.process_time()
    loop.run_until_complete(done)
    spent = time.process_time() - start
    loop.close()
    return float(spent)


def paused_epoll(wakeups: int, pause: float) -> float:
    epoll = select.epoll()
    start = time.process_time()
    for _ in range(wakeups):
        epoll.poll(pause)
    spent = time.process_time() - start
    epoll.close()
    return spent


def paused_ctypes_epoll(wakeups: int, pause: float) -> float:
    """libc's epoll_wait through ctypes, as pyauditd reads with recvmmsg: what a libc call
    in place of select.epoll's would buy for the wait."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    epoll_wait = libc.epoll_wait
    epoll_wait.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    epoll_wait.restype = ctypes.c_int
    epoll = select.epoll()
    events = ctypes.create_string_buffer(12 * 8)  # struct epoll_event, packed: 12 bytes
    fd, timeout = epoll.fileno(), round(pause * 1000)
    start = time.process_time()
    for _ in range(wakeups):
        epoll_wait(fd, events, 8, timeout)
    spent = time.process_time() - start
    epoll.close()
    return spent


def paused_c(binary: Path, wakeups: int, pause: float) -> float:
    done = subprocess.run([str(binary), str(round(pause * 1000)), str(wakeups)],
                          capture_output=True, text=True, check=True, timeout=wakeups * pause + 60)
    return float(done.stdout) * wakeups / 1e9


def build_wake(build: Path) -> Path | None:
    """bench/wake.c compiled, or None without gcc."""
    if shutil.which("gcc") is None:
        return None
    binary = build / "wake"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary),
                    str(Path(__file__).resolve().parent / "wake.c")], check=True)
    return binary


LOOPS: dict[str, Callable[[int], float]] = {
    "asyncio": functools.partial(on_loop, asyncio.new_event_loop),
    "auditpy.system.evloop (pyauditd's loop)": functools.partial(on_loop, Loop),
    "selectors.DefaultSelector": selectors_loop,
    "select.epoll": epoll_loop,
}


PAUSED: dict[str, Callable[[int, float], float]] = {
    "asyncio": functools.partial(paused_on_loop, asyncio.new_event_loop),
    "auditpy.system.evloop (pyauditd's loop)": functools.partial(paused_on_loop, Loop),
    "select.epoll": paused_epoll,
    "ctypes: libc epoll_wait": paused_ctypes_epoll,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wakeups", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause-ms", type=float, default=20.0)
    parser.add_argument("--paused-wakeups", type=int, default=100)
    args = parser.parse_args(argv)
    figures: dict[str, list[float]] = {name: [] for name in LOOPS}
    for _round in range(args.rounds):
        for name, run in LOOPS.items():  # alternating, so drift touches each alike
            figures[name].append(run(args.wakeups) / args.wakeups * 1e6)
    print(f"CPU µs per wakeup (a byte on a socketpair, one callback that reads it and sends "
          f"the next), median of {args.rounds} rounds of {args.wakeups:,}; Python "
          f"{sys.version.split()[0]}:")
    print()
    print("| loop | CPU µs per wakeup |")
    print("|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    with tempfile.TemporaryDirectory(prefix="bench-loops-") as build:
        wake = build_wake(Path(build))
        paused = dict(PAUSED)
        if wake is not None:
            paused["C: epoll_wait (bench/wake.c)"] = functools.partial(paused_c, wake)
        pause = args.pause_ms / 1000
        slept: dict[str, list[float]] = {name: [] for name in paused}
        for _round in range(args.rounds):
            for name, run_paused in paused.items():
                slept[name].append(run_paused(args.paused_wakeups, pause)
                                   / args.paused_wakeups * 1e6)
    print()
    print(f"CPU µs per wakeup after a pause of {args.pause_ms:g} ms (each loop's own timer, "
          f"nothing else to do), median of {args.rounds} rounds of {args.paused_wakeups:,}"
          + ("" if wake is not None else "; no gcc, so no C figure") + ":")
    print()
    print("| woken after a pause | CPU µs per wakeup |")
    print("|---|---|")
    for name, values in slept.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
