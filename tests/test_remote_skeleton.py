"""pyaudisp-remote's process skeleton (issues #9 and #15): signals held from the first
instruction of `main` and read from a signalfd, and helpers that never see the record stream.

Each test runs the real program against a fake server on loopback.  Written to fail before
the change: the plugin used to install asyncio signal handlers at the end of its start-up (a
SIGHUP before that killed it; a storm filled asyncio's wake-up socket, printed tracebacks and
could lose the SIGTERM behind it), and its exec helpers inherited its stdin.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from auditpy.audisp_remote.link import Link
from auditpy.audisp_remote.plugin import RemotePlugin
from auditpy.audisp_remote.signals import HANDLED_SIGNALS
from auditpy.config.remote_conf import load_remote_conf
from auditpy.proto import remote as rp
from auditpy.system import evloop
from auditpy.system.service import Signal

from .conftest import wait_for
from .test_audisp_remote import (
    FakeServer,
    Plugin,
    Reply,
    ack,
    lines_stored,
    record,
    write_conf,
)
from .test_audisp_remote import (
    cleanup as cleanup,  # the fixture
)


def blocked_signals(pid: int) -> set[int]:
    """The signals `pid` has blocked, from /proc/PID/status (SigBlk, a hex mask)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    mask = int(line.split()[1], 16)
                    return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    except (FileNotFoundError, ProcessLookupError):
        pass
    return set()


def start(tmp_path: Path, cleanup: list[Any], server: FakeServer, **keys: object) -> Plugin:
    plugin = Plugin(write_conf(tmp_path / "r.conf", port=server.port, **keys),
                    tmp_path / "plugin.err")
    cleanup.append(plugin)
    return plugin


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]


def test_a_sighup_storm_through_start_up_does_not_kill_the_plugin(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    server = FakeServer()
    cleanup.append(server)
    plugin = start(tmp_path, cleanup, server)
    pid = plugin.proc.pid
    # The earliest moment a signal can be survived: once the kernel shows it blocked.
    wait_for(lambda: signal.SIGHUP in blocked_signals(pid) or plugin.proc.poll() is not None,
             20, "SIGHUP held (SigBlk in /proc/PID/status) while the plugin starts",
             context=plugin.stderr)
    assert plugin.proc.poll() is None and signal.SIGHUP in blocked_signals(pid), (
        "SIGHUP is never held while the plugin starts", plugin.stderr())
    sent = 0
    deadline = time.monotonic() + 30
    # From then on, SIGHUPs as fast as we can send them, through the whole start-up, until
    # the plugin's loop shows it is handling them.
    while "configuration reloaded" not in plugin.stderr() and time.monotonic() < deadline:
        for _ in range(100):
            os.kill(pid, signal.SIGHUP)
            sent += 1
        assert plugin.proc.poll() is None, (sent, plugin.stderr())
    err = plugin.stderr()
    assert "started: server" in err and "configuration reloaded" in err, err
    reloads = err.count("configuration reloaded")
    assert reloads < sent  # coalesced: a handful of reloads for thousands of signals
    plugin.send(record(n) for n in range(20))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(20))
    no_traceback(plugin.stderr())
    print(f"{sent} SIGHUPs during start-up, {reloads} reloads")


def pending_signals(pid: int) -> int:
    """The process-wide pending-signal mask of `pid` (ShdPnd)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("ShdPnd:"):
                return int(line.split()[1], 16)
    return 0


@pytest.mark.parametrize("round_", range(3))
def test_1500_sighups_then_sigterm_exits_promptly_with_status_0(
    tmp_path: Path, cleanup: list[Any], round_: int
) -> None:
    """Each SIGHUP is sent once the plugin has taken the one before (or after 1 ms), so the
    kernel does not merge them: a plugin that takes signals through a handler has to queue
    every one of them for its loop (asyncio's wake-up socket overflowed after a few hundred,
    with a traceback each, and could drop the SIGTERM); one that reads them from a
    signalfd takes each when its loop gets to it."""
    server = FakeServer()
    cleanup.append(server)
    conf = write_conf(tmp_path / "r.conf", port=server.port)
    # A well-commented file near the size limit: each reload then takes about a
    # millisecond (20 us without), as a loop that has other work does.
    comments = "".join(f"# {n:4} a line of commentary about the settings below\n"
                       for n in range(1100))
    conf.write_text(comments + conf.read_text())
    plugin = Plugin(conf, tmp_path / "plugin.err")
    cleanup.append(plugin)
    plugin.send([record(0)])
    assert wait_for(lambda: len(server.stored) == 1, 20), plugin.stderr()
    pid = plugin.proc.pid
    hup = 1 << (signal.SIGHUP - 1)
    for _ in range(1500):
        os.kill(pid, signal.SIGHUP)
        taken_by = time.monotonic() + 0.001
        while pending_signals(pid) & hup and time.monotonic() < taken_by:
            pass
    os.kill(pid, signal.SIGTERM)
    sent_at = time.monotonic()
    try:
        status = plugin.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM lost: still running 15 s later\n{plugin.stderr()[-3000:]}")
    took = time.monotonic() - sent_at
    err = plugin.stderr()
    assert status == 0, err[-3000:]
    assert "SIGTERM: exiting" in err
    no_traceback(err)
    assert took < 5, took
    print(f"exited {took * 1000:.0f} ms after the SIGTERM that followed 1,500 SIGHUPs "
          f"({err.count('configuration reloaded')} reloads)")


def test_an_exec_helper_does_not_inherit_the_record_stream(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    """disk_low_action = exec: the helper's stdin is /dev/null, not the plugin's stdin; a
    helper that reads its stdin takes nothing from the plugin."""
    seen, stolen, done = tmp_path / "stdin", tmp_path / "stolen", tmp_path / "done"
    helper = tmp_path / "helper.sh"
    helper.write_text(
        "#!/bin/sh\n"
        f"readlink /proc/self/fd/0 > {seen}\n"
        f"timeout 3 cat >> {stolen}\n"
        f"echo done > {done}\n"
    )
    os.chmod(helper, 0o755)

    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if frame.msg_type == rp.TYPE_MESSAGE:
            server.stored.append(frame.payload)
            if not server.state.get("low"):
                server.state["low"] = True
                return [rp.pack_frame(rp.TYPE_DISKLOW, frame.seq)]
        return ack(frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = start(tmp_path, cleanup, server, disk_low_action=f"exec {helper}")
    plugin.send([record(0)])
    assert wait_for(lambda: seen.exists() and seen.read_text().strip(), 20), plugin.stderr()
    plugin.send(record(n) for n in range(1, 50))  # while the helper would be reading
    assert wait_for(done.exists, 20)
    assert plugin.finish(30) == 0, plugin.stderr()
    assert seen.read_text().strip() == "/dev/null"
    assert not stolen.exists() or stolen.read_bytes() == b""
    assert lines_stored(server) == collections.Counter(range(50))


def test_every_held_signal_is_handled(tmp_path: Path) -> None:
    """The signals main holds and the ones the loop acts on are one set: each one does what
    it is for (a held signal nobody handles would just be ignored for ever)."""
    conf = write_conf(tmp_path / "r.conf", port=60)
    messages: list[str] = []
    plugin = RemotePlugin(str(conf), load_remote_conf(str(conf)),
                          lambda _p, m: messages.append(m))
    effects = {}

    async def signals() -> None:  # (a reload may connect: that takes a loop)
        for signum in sorted(HANDLED_SIGNALS):
            before = len(messages)
            plugin._on_signal(Signal(signum))
            effects[signal.Signals(signum).name] = messages[before:]

    evloop.run(signals())
    assert effects == {
        "SIGHUP": ["configuration reloaded; server 127.0.0.1:60"],
        "SIGINT": ["SIGINT: exiting"],
        "SIGUSR1": [plugin.state_line()],
        "SIGUSR2": [],  # (not suspended: resuming says nothing)
        "SIGTERM": [],  # (already exiting)
    }
    assert plugin.exit_code == 0


def test_a_link_holds_what_the_server_said_before_the_connect_completed() -> None:
    """A server may answer, or hang up, before the plugin learns its connect succeeded:
    those reports wait for `release` instead of reaching a plugin that has no connection."""
    reports: list[tuple[str, object]] = []

    class Owner:
        def link_data(self, link: Link, data: bytes) -> None:
            reports.append(("data", data))

        def link_eof(self, link: Link) -> None:
            reports.append(("eof", None))

        def link_lost(self, link: Link, error: str | None) -> None:
            reports.append(("lost", error))

        def link_writable(self, link: Link) -> None:
            reports.append(("writable", None))

    link = Link(Owner())
    link.data_received(b"ENDING")
    assert link.eof_received() is False
    link.pause_writing()
    assert link.paused and not reports
    link.release()
    assert reports == [("data", b"ENDING"), ("eof", None)]
    link.resume_writing()
    link.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert reports[2:] == [("writable", None), ("lost", "Connection reset by peer")]
    ended = Link(Owner())
    ended.release()
    ended.abort()  # no transport yet: only the reports stop
    ended.data_received(b"late")
    assert len(reports) == 4 and ended.closed.is_set() is False
