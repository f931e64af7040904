"""pyaudispd end to end: a real dispatcher fed through its stdin, real plugin processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import select
import signal
import socket
import stat
import syslog
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auditpy.audispd.builtin_syslog import SyslogPlugin, syslog_text
from auditpy.audispd.runner import Record, RunnerContext
from auditpy.config.plugins import PluginConfig
from auditpy.proto import dispatch as wire
from auditpy.system import evloop

from .audispd_support import EOE, Audispd, install
from .conftest import needs, proc_state, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plugins must be root-owned")

V0, V1 = wire.PROTOCOL_V0, wire.PROTOCOL_V1


Make = Callable[..., Audispd]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """Audispd(tmp_path, ...) that is always stopped, checking nothing is left behind."""
    made: list[Audispd] = []

    def factory(**kw: Any) -> Audispd:
        d = Audispd(tmp_path, **kw)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.stop()
        assert not d.leftovers(), f"plugin processes left behind: {d.leftovers()}"


def assert_no_zombies(d: Audispd) -> None:
    kids = d.children()
    assert "Z" not in kids.values(), kids


# --------------------------------------------------------------------------- delivery


def test_string_and_binary_delivery_are_byte_exact(make: Make) -> None:
    d = make()
    d.plugin("text")
    d.plugin("bin", fmt="binary")
    d.start()
    # Both plugins must be up before input ends: at EOF a plugin gets 50 ms before SIGTERM,
    # which a Python plugin still starting on a loaded machine may not survive.
    for name in ("text", "bin"):
        wait_for(lambda name=name: Path(str(d.output(name)) + ".probe").exists(), 10)
    records = [
        (V0, 1300, b"audit(1700000000.123:42): arch=c000003e syscall=59 success=yes"),
        (
            V1,
            1309,
            b'node=box type=EXECVE msg=audit(1700000000.123:42): argc=1 a0="ls"\x1dAUID="root"',
        ),
        (V1, 1005, b"type=USER msg=audit(1.0:2): msg='two\nlines'"),
        (V0, 9999, b"audit(1.0:3): unknown type"),
        (V1, EOE, b"type=EOE msg=audit(1700000000.123:42): "),
        (V1, 1005, b"x" * 8970),
    ]
    for version, msg_type, payload in records:
        d.send(payload, msg_type, version)
    d.close_input()
    assert d.wait_exit() == 0
    assert d.output("text").read_bytes() == b"".join(
        wire.string_line(v, t, p) for v, t, p in records
    )
    assert d.output("bin").read_bytes() == b"".join(wire.frame(v, t, p) for v, t, p in records)
    text = d.output("text").read_bytes().split(b"\n")
    assert (
        text[0] == b"type=SYSCALL msg=audit(1700000000.123:42): arch=c000003e syscall=59 "
        b"success=yes"
    )
    assert text[2] == b"type=USER msg=audit(1.0:2): msg='two lines'"
    assert text[3] == b"type=UNKNOWN[9999] msg=audit(1.0:3): unknown type"
    assert text[4].startswith(b"type=EOE")
    assert "2 records" not in d.log() and "6 records delivered, 0 dropped" in d.log()


def test_plugin_environment(make: Make) -> None:
    """Empty environment, nothing above fd 2, empty mask, own session, boosted priority."""
    d = make(settings={"priority_boost": 3})
    d.plugin("p", args=[str(d.output("p")), "extra arg"])
    d.start()
    wait_for(lambda: d.output("p").with_suffix(".probe").exists(), what="probe")
    probe = json.loads(d.output("p").with_suffix(".probe").read_text())
    assert probe["argv"][1:] == [str(d.output("p")), "extra", "arg"]
    assert probe["env"] == {} or set(probe["env"]) <= {"LC_CTYPE"}  # python may set LC_CTYPE
    assert probe["fds"][:3] == [0, 1, 2] and len(probe["fds"]) == 4  # plus listdir's own
    assert probe["SigBlk"] == 0
    # Python itself ignores SIGPIPE and SIGXFSZ; glibc's posix_spawn sets its two internal
    # signals (32, 33) to SIG_IGN, which glibc in the new program takes over again.
    expected = {signal.SIGPIPE, signal.SIGXFSZ, 32, 33}
    assert probe["SigIgn"] & ~sum(1 << (n - 1) for n in expected) == 0
    assert probe["sid"] == probe["pid"]
    assert probe["nice"] <= -3
    assert stat.S_ISSOCK(os.stat(f"/proc/{probe['pid']}/fd/0").st_mode)


def test_no_active_plugins_exits_zero(make: Make) -> None:
    d = make()
    d.plugin("off", active=False)
    d.start()
    assert d.wait_exit() == 0
    assert "no active plugins, exiting" in d.log()


def test_bad_settings_exit_one(make: Make) -> None:
    d = make(settings={"overflow_action": "panic"})
    d.plugin("p")
    d.start()
    assert d.wait_exit() == 1
    assert "cannot load the dispatcher settings" in d.log()


def test_bad_frame_exits_one(make: Make) -> None:
    d = make()
    d.plugin("p")
    d.start()
    assert d.sock is not None
    d.sock.sendall(wire.HEADER.pack(7, 16, 1005, 3) + b"abc")
    assert d.wait_exit() == 1
    assert "bad dispatcher header" in d.log()


def test_sigterm_stops_and_reaps_everything(make: Make) -> None:
    d = make()
    d.plugin("a")
    d.plugin("b", path=d.program("stubborn.py"))
    d.start()
    wait_for(lambda: len(d.children()) == 2, what="two plugins")
    d.wait_ready("a", "b")  # stubborn ignores SIGTERM only once it has said so
    pids = list(d.children())
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert all(proc_state(pid) is None for pid in pids)
    assert "ignored SIGTERM" in d.log()  # stubborn needed SIGKILL, and was reaped


def test_state_file(make: Make) -> None:
    d = make(settings={"q_depth": 600})
    d.plugin("a")
    d.start()
    d.send(b"type=USER msg=audit(1.0:1): hello")
    wait_for(lambda: d.output("a").exists() and d.output("a").read_bytes(), what="delivery")
    state = d.state()
    path = d.run_dir / "audispd.state"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert state[""]["q_depth"] == "600"
    assert state[""]["number of active plugins"] == "1"
    plugin = state["plugin a.conf"]
    assert plugin["state"] == "running"
    assert int(plugin["pid"]) == d.plugin_pids()["a"]
    assert (plugin["records delivered"], plugin["records dropped"]) == ("1", "0")
    assert (plugin["queue depth"], plugin["max queue depth"]) == ("0", "1")


# --------------------------------------------------------------------------- reload


def test_reload_diff(make: Make) -> None:
    d = make()
    d.plugin("same")
    d.plugin("gone")
    d.plugin("off")
    d.plugin("edited")
    replaced = d.program(name="replaced.py")
    d.plugin("replaced", path=replaced)
    d.plugin("later", active=False)
    d.start()
    d.wait_ready("same", "gone", "off", "edited", "replaced")
    before = d.plugin_pids()

    (d.plugin_dir / "gone.conf").unlink()
    d.plugin("off", active=False)
    d.plugin("edited", args=[str(d.output("edited")), "new-arg"])
    install("recorder.py", replaced)
    d.plugin("later")
    d.reload()

    after = d.plugin_pids()
    assert set(after) == {"same", "edited", "replaced", "later"}
    assert after["same"] == before["same"]
    assert ("hup", before["same"]) in d.events("same")
    assert after["edited"] != before["edited"] and after["replaced"] != before["replaced"]
    for name in ("gone", "off", "edited", "replaced"):
        assert proc_state(before[name]) is None, name  # reaped, not a zombie
        assert ("eof", before[name]) in d.events(name)  # input closed first
    log = d.log()
    assert "stopping plugin gone.conf because its file was removed" in log
    assert "stopping plugin off.conf because it is no longer active" in log
    assert "restarting plugin edited.conf: args changed" in log
    assert "restarting plugin replaced.conf: program file changed" in log
    assert "starting new plugin later.conf" in log
    assert "reload done: 1 started, 2 stopped, 2 restarted, 1 signalled" in log
    # the replacement started only after its predecessor was gone
    d.wait_ready("edited", "replaced", "later")
    assert d.starts("edited") == [before["edited"], after["edited"]]
    d.send(b"type=USER msg=audit(1.0:9): after")
    for name in after:
        wait_for(lambda n=name: b"audit(1.0:9)" in d.output(n).read_bytes(), what=name)
    assert_no_zombies(d)


def test_reload_to_no_active_plugin_exits(make: Make) -> None:
    d = make()
    d.plugin("only")
    d.start()
    wait_for(lambda: "only" in d.plugin_pids(), what="plugin")
    pid = d.plugin_pids()["only"]
    d.plugin("only", active=False)
    d.signal(signal.SIGHUP)
    assert d.wait_exit() == 0
    assert proc_state(pid) is None
    assert "no active plugins, exiting" in d.log()


def test_broken_file_on_reload_stops_only_that_plugin(make: Make) -> None:
    d = make()
    d.plugin("a")
    d.plugin("b")
    d.start()
    d.wait_ready("a", "b")
    conf = d.plugin("b")
    conf.write_text(conf.read_text() + "format = xml\n")
    d.reload()
    assert set(d.plugin_pids()) == {"a"}
    assert f"skipping plugin: {conf}:7: format: 'xml'" in d.log()
    assert "because its file has errors" in d.log()


def test_fifty_reloads_no_zombies_no_fd_growth(make: Make) -> None:
    d = make()
    d.plugin("steady")
    d.plugin("flip")
    d.start()
    d.wait_ready("steady", "flip")
    d.reload()
    fds = d.fd_count()
    for i in range(50):
        d.plugin("flip", args=[str(d.output("flip")), str(i % 2)], active=i % 3 != 0)
        d.reload()
        assert_no_zombies(d)
        if i % 3 != 0:
            d.wait_ready("flip")
    d.plugin("flip")
    d.reload()
    wait_for(lambda: len(d.plugin_pids()) == 2, what="plugins")
    assert d.fd_count() == fds
    assert len(d.events("steady")) == 1 + 51 + 1  # start, 51 SIGHUPs ... and no restart
    assert d.starts("steady") == [d.plugin_pids()["steady"]]


# --------------------------------------------------------------------------- crashes


def test_kill_9_is_noticed_and_restarted(make: Make) -> None:
    d = make()
    d.plugin("victim")
    d.plugin("bystander")
    d.start()
    wait_for(lambda: len(d.plugin_pids()) == 2, what="plugins")
    victim = d.plugin_pids()["victim"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: d.plugin_pids().get("victim", victim) != victim, 1.0, "restart")
    assert proc_state(victim) is None
    assert "terminated unexpectedly: killed by SIGKILL" in d.log()
    d.send(b"type=USER msg=audit(1.0:1): after the crash")
    wait_for(lambda: d.output("victim").exists() and b"after" in d.output("victim").read_bytes())
    assert d.state()["plugin victim.conf"]["restarts"] == "1"


def test_restart_budget_exhaustion_then_fixed_program(make: Make) -> None:
    d = make(settings={"max_restarts": 2})
    program = d.program("crasher.sh", name="plugin")
    d.plugin("p", path=program)
    d.plugin("ok")
    d.start()
    d.wait_log(r"plugin p.conf has exceeded max_restarts \(2\)")
    # Its own state report says it is left stopped: no restart is pending.
    assert d.state()["plugin p.conf"]["state"] == "stopped (failed)"
    assert len(d.starts("p")) == 3
    d.send(b"type=USER msg=audit(1.0:1): while failed")
    assert d.state()["plugin p.conf"]["records dropped"] == "1"

    install("recorder.py", program)  # the fix: a new program, so a restart and a new budget
    d.wait_ready("ok")
    d.reload()
    assert "p" in d.plugin_pids()
    assert "restarting plugin p.conf: program file changed" in d.log()


def test_reload_revives_a_failed_plugin(make: Make) -> None:
    d = make(settings={"max_restarts": 0})
    d.plugin("p", path=d.program("crasher.sh"))
    d.plugin("ok")
    d.start()
    d.wait_log(r"exceeded max_restarts")
    assert len(d.starts("p")) == 1
    d.wait_ready("ok")
    d.reload()
    wait_for(lambda: len(d.starts("p")) == 2, what="second start")
    assert "starting plugin p.conf again after it failed" in d.log()


def test_reload_restarts_a_plugin_waiting_out_its_back_off(make: Make) -> None:
    """After SIGHUP the running plugins are the configured ones, even one that just crashed."""
    d = make(args=["--backoff-initial", "30", "--backoff-max", "30"])
    d.plugin("p", path=d.program("crasher.sh"))  # exits at once
    d.plugin("ok")
    d.start()
    d.wait_log(r"plugin p.conf will be restarted in 30.00 s")
    assert len(d.starts("p")) == 1
    d.wait_ready("ok")
    d.reload()
    wait_for(lambda: len(d.starts("p")) == 2, 2.0, "the restart on reload")
    assert "plugin p.conf unchanged: restarting it now" in d.log()
    assert d.state()["plugin p.conf"]["restarts"] in ("1", "2")  # it may have died again


def test_program_change_between_crashes_refills_budget(make: Make) -> None:
    d = make(settings={"max_restarts": 2})
    program = d.program("crasher.sh", name="plugin")
    # Each crasher exits when it reads a line from the gate: the test says when it crashes.
    gate = d.root / "gate"
    os.mkfifo(gate, 0o600)
    holder = os.open(gate, os.O_RDWR)  # lines wait in the FIFO until a crasher reads one
    try:
        d.plugin("p", path=program, args=[str(d.output("p")), str(gate)])
        d.plugin("ok")
        d.start()
        os.write(holder, b"crash\n")
        wait_for(lambda: len(d.starts("p")) == 2, what="second start")  # 1 restart used
        install("crasher.sh", program)  # same content, new inode: a changed program
        os.write(holder, b"crash\n" * 3)
        d.wait_log(r"exceeded max_restarts")
    finally:
        os.close(holder)
    # without the change: 1 + 2 restarts; with it the budget is full again at the 2nd crash
    assert len(d.starts("p")) == 4
    assert "program" in d.log() and "changed; restart budget refilled" in d.log()


def test_stable_run_refills_budget(make: Make) -> None:
    d = make(settings={"max_restarts": 1}, args=["--stable-after", "0.2"])
    d.plugin("p")
    d.start()
    refilled = r"plugin p.conf has run for 0.2 s; restart budget refilled"
    for kill in range(4):
        d.wait_ready("p")  # running, and its start is on record
        pid = d.plugin_pids()["p"]
        if kill:  # the first run has used no budget yet; every restart has used all of it
            d.wait_log(refilled, kill)  # so it ran longer than stable-after
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: d.plugin_pids().get("p", p) != p, 2.0, "restart")
    assert "exceeded max_restarts" not in d.log()
    wait_for(lambda: len(d.starts("p")) == 5, what="fifth start")
    assert d.count(refilled) == 3


def test_no_restart_during_shutdown(make: Make) -> None:
    d = make()
    d.plugin("p", path=d.program("crasher.sh"))
    d.plugin("ok")
    d.start()
    wait_for(lambda: len(d.starts("p")) >= 2, what="restarts")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    # No plugin process outlives the dispatcher, so none can record another start.
    assert not d.leftovers()


def test_plugin_that_closes_its_input_is_restarted(make: Make) -> None:
    d = make(settings={"max_restarts": 1})
    d.plugin("closer", path=d.program("closer.py"))
    d.plugin("ok")
    d.start()
    for i in range(2):
        # closer.py records its start after closing its input: the write below fails
        wait_for(lambda n=i: len(d.starts("closer")) == n + 1, what=f"start {i + 1}")
        d.send(b"type=USER msg=audit(1.0:1): x")
        d.wait_log(r"plugin closer.conf \(pid \d+\) stopped reading its input", i + 1)
    d.wait_log("plugin closer.conf has exceeded max_restarts")
    assert_no_zombies(d)


def test_sighup_storm_is_coalesced(make: Make) -> None:
    d = make()
    d.plugin("a")
    d.plugin("b")
    d.start()
    d.wait_ready("a", "b")
    d.plugin("c")
    for _ in range(20):
        d.signal(signal.SIGHUP)
    # Signals are handled in the order they arrive: once the state report (SIGCONT) is
    # written, all twenty SIGHUPs have been seen; then wait until every reload begun ended.
    d.state()
    wait_for(lambda: 1 <= d.count("reload done") == d.count("reloading the configuration"),
             what="the reloads to end")
    assert 1 <= d.count("reload done") < 20
    d.wait_ready("a", "b", "c")
    assert set(d.plugin_pids()) == {"a", "b", "c"}
    assert len(d.starts("a")) == 1


def test_sigterm_during_a_reload(make: Make) -> None:
    d = make()
    d.plugin("stubborn", path=d.program("stubborn.py"))
    d.plugin("ok")
    d.start()
    d.wait_ready("ok")
    wait_for(lambda: d.starts("stubborn"), what="stubborn")
    d.plugin("stubborn", active=False)
    d.plugin("new")
    d.signal(signal.SIGHUP)
    d.wait_log("stopping plugin stubborn.conf")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert not d.leftovers()
    assert proc_state(d.starts("stubborn")[0]) is None


# --------------------------------------------------------------------------- overflow


def big_record(i: int) -> bytes:
    return f"type=USER msg=audit(1.0:{i}): ".encode() + b"y" * 4000


def test_stuck_plugin_does_not_delay_the_others(make: Make) -> None:
    d = make(settings={"q_depth": 512}, args=["--report-interval", "0.3"])
    d.plugin("stuck", path=d.program("idle.py"))
    d.plugin("fast")
    d.start()
    wait_for(lambda: len(d.plugin_pids()) == 2, what="plugins")
    d.wait_ready("fast")
    n, chunk = 1200, 100
    # Paced, a chunk at a time (400 KB, well under the fast plugin's q_depth): the fast
    # plugin then never holds more than a chunk, so any record it misses was held back by
    # the stuck one. Unpaced, a fast plugin whose file writes stall for a moment on a busy
    # machine overflows its own queue, which is right but not what this test is about.
    size = 0
    for first in range(0, n, chunk):
        for i in range(first, first + chunk):
            record = big_record(i)
            d.send(record)
            size += len(record) + 1
        try:
            wait_for(
                lambda want=size: d.output("fast").stat().st_size == want,
                10.0,
                f"records up to {first + chunk} at the fast plugin",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; state: {d.state()}") from None
    state = d.state()
    stuck, fast = state["plugin stuck.conf"], state["plugin fast.conf"]
    assert int(stuck["records dropped"]) > 0
    assert (
        int(stuck["records delivered"]) + int(stuck["records dropped"]) + int(stuck["queue depth"])
        == n
    )
    assert stuck["queue depth"] == "512" and stuck["max queue depth"] == "512"
    assert (fast["records delivered"], fast["records dropped"]) == (str(n), "0")
    assert d.count("queue to plugin stuck.conf is full - dropping event") == 5
    assert "queue full reporting limit reached" in d.log()
    d.wait_log(r"plugin stuck.conf: \d+ records dropped in the last 0.3 s")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert f"plugin stuck.conf (pid {d.starts('stuck')[0]}) stopped" in d.log()


def test_the_dispatcher_sends_its_ledger_back(make: Make) -> None:
    """pyaudispd reports, on the stream pyauditd feeds it, each plugin's figures: offered =
    delivered + dropped + queued, for a stuck plugin with a tiny queue and a working one."""
    d = make(settings={"q_depth": 8})
    d.plugin("stuck", path=d.program("idle.py"))
    d.plugin("fast")
    d.start()
    wait_for(lambda: len(d.plugin_pids()) == 2, what="plugins")
    d.wait_ready("fast")
    n = 300  # 1.2 MB: more than the stuck plugin's socket and queue hold
    for i in range(n):
        d.send(big_record(i))
    assert d.sock is not None
    d.sock.setblocking(False)
    buffer = bytearray()
    reports: list[dict[str, dict[str, int]]] = []

    def complete() -> dict[str, dict[str, int]] | None:
        with contextlib.suppress(BlockingIOError):
            buffer.extend(d.sock.recv(65536) if d.sock else b"")
        reports.extend(wire.parse_figures(buffer))
        last = reports[-1] if reports else {}
        done = all(last.get(name, {}).get("offered") == n for name in ("stuck.conf",
                                                                        "fast.conf"))
        return last if done else None

    figures = wait_for(complete, 15, "a report of every record")
    for name, mine in figures.items():
        assert mine["offered"] == mine["delivered"] + mine["dropped"] + mine["queued"], name
    assert figures["stuck.conf"]["dropped"] > 0


def test_input_closed_with_figures_unread_is_the_end_of_input(make: Make) -> None:
    """pyauditd may close its end with the dispatcher's last figures unread in it; the
    dispatcher then reads a reset after the records, and stops as at the end of input."""
    d = make()
    d.plugin("fast")
    d.start()
    d.wait_ready("fast")
    for i in range(20):
        d.send(big_record(i))
    assert d.sock is not None
    wait_for(lambda: select.select([d.sock], [], [], 0)[0], 15, "figures from pyaudispd")
    assert d.stop() == 0, d.log()
    assert "end of input" in d.log() and "cannot read records" not in d.log()
    assert d.output("fast").read_bytes().count(b"\n") == 20


def test_overflow_suspend_and_sigusr2(make: Make) -> None:
    d = make(settings={"q_depth": 4, "overflow_action": "suspend"})
    d.plugin("stuck", path=d.program("idle.py"))
    d.plugin("fast")
    d.start()
    d.wait_ready("fast")
    for i in range(200):
        d.send(big_record(i))
    d.wait_log("suspending event passing to plugins")
    state = d.state()
    assert state[""]["queueing suspended"] == "yes"
    delivered = int(state["plugin fast.conf"]["records delivered"])
    assert delivered < 200 and int(state["plugin fast.conf"]["records dropped"]) > 0
    d.signal(signal.SIGUSR2)
    d.wait_log("resuming event passing to plugins")
    d.send(b"type=USER msg=audit(2.0:1): resumed")
    wait_for(lambda: b"resumed" in d.output("fast").read_bytes(), what="resumed delivery")
    # the stuck plugin's queue is still full, so that same record suspends passing again
    d.wait_log("suspending event passing to plugins", 2)
    assert d.state()[""]["queueing suspended"] == "yes"


@pytest.mark.parametrize(("action", "runlevel"), [("halt", "0"), ("single", "1")])
def test_overflow_single_and_halt_run_init(make: Make, action: str, runlevel: str) -> None:
    d = make(settings={"q_depth": 2, "overflow_action": action})
    fake_init = d.program("fake_init.sh")
    d.args += ["--init-path", str(fake_init)]
    d.plugin("stuck", path=d.program("idle.py"))
    d.start()
    wait_for(lambda: len(d.plugin_pids()) == 1, what="plugin")
    for i in range(200):
        d.send(big_record(i))
    calls = Path(f"{fake_init}.calls")
    wait_for(calls.exists, what="init call")
    d.wait_log(rf"{fake_init} {runlevel}: exit status 0")
    assert calls.read_text() == f"{runlevel}\n"  # once, not once per dropped record
    assert_no_zombies(d)


# --------------------------------------------------------------------------- builtins


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    return client


def test_af_unix_builtin(make: Make) -> None:
    d = make(settings={"q_depth": 8})
    text_sock = d.root / "text.sock"
    bin_sock = d.root / "bin.sock"
    d.plugin("text", path="builtin_af_unix", args=["0600", str(text_sock)])
    d.plugin("bin", path="af_unix", args=[str(bin_sock), "binary", "0640"])
    d.start()
    d.wait_log(r"plugin (text|bin).conf started: builtin af_unix", 2)
    assert stat.S_IMODE(os.stat(text_sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(bin_sock).st_mode) == 0o640
    t1, t2, b1, slow = (connect(p) for p in (text_sock, text_sock, bin_sock, bin_sock))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    wait_for(lambda: d.state()["plugin bin.conf"]["clients connected"] == "2", what="clients")
    records = [
        (V1, 1005, f"type=USER msg=audit(1.0:{i}): ".encode() + b"z" * 6000) for i in range(60)
    ]
    records.insert(0, (V0, 1300, b"audit(1.0:0): syscall=1"))
    records.append((V1, EOE, b"type=EOE msg=audit(1.0:60): "))
    lines = [wire.string_line(*r) for r in records]
    frames = [wire.frame(*r) for r in records]
    got = {t1: bytearray(), t2: bytearray(), b1: bytearray()}

    def reader(client: socket.socket, total: int) -> None:
        client.settimeout(10)
        while len(got[client]) < total and (chunk := client.recv(65536)):
            got[client] += chunk

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        readers = [
            pool.submit(reader, t1, len(b"".join(lines))),
            pool.submit(reader, t2, len(b"".join(lines))),
            pool.submit(reader, b1, len(b"".join(frames))),
        ]
        # Paced, so the reading clients never hold more than a few records: only the client
        # that does not read at all can overflow its queue.
        for i, (version, msg_type, payload) in enumerate(records):
            d.send(payload, msg_type, version)
            if i % 4 == 3:
                want_text, want_bin = len(b"".join(lines[: i + 1])), len(b"".join(frames[: i + 1]))
                wait_for(
                    lambda t=want_text, b=want_bin: (
                        len(got[t1]) >= t and len(got[t2]) >= t and len(got[b1]) >= b
                    ),
                    what="the reading clients",
                )
        for r in readers:
            r.result()
    assert bytes(got[t1]) == bytes(got[t2]) == b"".join(lines)
    assert bytes(got[b1]) == b"".join(frames)
    d.wait_log(r"plugin bin.conf: client 2 did not read \(8 records waiting\); disconnected")
    state = d.state()["plugin bin.conf"]
    assert state["clients dropped for not reading"] == "1"
    assert int(state["records dropped"]) > 0
    # the slow client was closed: once its buffer is read it sees end of file
    slow.settimeout(5)
    while slow.recv(65536):
        pass
    for client in (t1, t2, b1, slow):
        client.close()
    d.plugin("text", active=False)
    d.reload()
    assert not text_sock.exists()  # unlinked on stop
    d.close_input()
    assert d.wait_exit() == 0
    assert not bin_sock.exists()


def test_af_unix_refuses_to_remove_a_file(make: Make) -> None:
    d = make()
    victim = d.root / "precious"
    victim.write_text("keep me")
    d.plugin("sock", path="builtin_af_unix", args=[str(victim)])
    d.plugin("other")
    d.start()
    d.wait_log("exists and is not a socket")
    assert victim.read_text() == "keep me"


def test_syslog_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []
    opened: list[tuple[object, ...]] = []
    monkeypatch.setattr(syslog, "syslog", lambda pri, msg: calls.append((pri, msg)))
    monkeypatch.setattr(syslog, "openlog", lambda *a: opened.append(a))
    loop = evloop.Loop()
    try:
        config = PluginConfig(
            name="s.conf",
            file="s.conf",
            active=True,
            path="syslog",
            builtin="syslog",
            type="builtin",
            args=("LOG_LOCAL2", "LOG_WARNING"),
        )
        plugin = SyslogPlugin(config, RunnerContext(loop))
        plugin.start()
        records = [
            Record(V1, 1300, b"type=SYSCALL msg=audit(1.0:1): a=1\x1dB=2\x1dC=3"),
            Record(V0, 1005, b"audit(1.0:2): msg='x\ny'"),
            Record(V1, EOE, b"type=EOE msg=audit(1.0:1): "),
            Record(V1, 1005, b"type=USER msg=audit(1.0:3): bad \xff\0hidden"),
        ]
        for record in records:
            assert plugin.offer(record)
    finally:
        loop.close()
    assert opened == [("audispd", 0, syslog.LOG_LOCAL2)]
    pri = syslog.LOG_WARNING | syslog.LOG_LOCAL2
    assert calls == [
        (pri, "type=SYSCALL msg=audit(1.0:1): a=1 B=2\x1dC=3"),
        (pri, "type=USER msg=audit(1.0:2): msg='x y'"),
        (pri, "type=USER msg=audit(1.0:3): bad \\xff"),
    ]
    assert plugin.delivered == 3
    assert syslog_text(Record(V1, 1, b"a\x1db")) == "a b"


def test_syslog_builtin_end_to_end(make: Make) -> None:
    d = make()
    d.plugin("s", path="builtin_syslog", args=["LOG_DEBUG"])
    d.start()
    d.wait_log("plugin s.conf started: builtin syslog LOG_DEBUG")
    d.send(b"type=USER msg=audit(1.0:1): x")
    wait_for(lambda: d.state()["plugin s.conf"]["records delivered"] == "1", what="delivery")


@needs("/sbin/audisp-syslog")
def test_debian_audisp_syslog_runs_unmodified(make: Make) -> None:
    d = make()
    d.plugin("deb", path="/sbin/audisp-syslog", args=["LOG_INFO"])
    d.start()
    wait_for(lambda: len(d.children()) == 1, what="audisp-syslog")
    pid = next(iter(d.children()))
    for i in range(20):
        d.send(f"type=USER msg=audit(1.0:{i}): hello".encode())
    d.send(b"type=EOE msg=audit(1.0:20): ", EOE)
    wait_for(lambda: d.state()["plugin deb.conf"]["records delivered"] == "21", what="delivery")
    d.reload()
    assert d.children() == {pid: d.children()[pid]}  # SIGHUP did not end it
    d.close_input()
    assert d.wait_exit() == 0
    assert proc_state(pid) is None
    assert f"plugin deb.conf (pid {pid}) stopped: exit status 0" in d.log()
    assert "ignored SIGTERM" not in d.log()
