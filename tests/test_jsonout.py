"""The JSON output around the pure core: its configuration file, sinks, the pipeline, the
pyaudisp-json program, pyaudispd's builtin_json and the Python API."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditpy.config.errors import ConfigError
from auditpy.config.jsonout import JsonConfig, load_json_conf, parse_json_conf
from auditpy.config.plugins import parse_json_args
from auditpy.events.lineage import ProcInfo
from auditpy.jsonout.api import follow, log_files, read_lines, read_log
from auditpy.jsonout.decode import StreamDecoder
from auditpy.jsonout.pipeline import (
    FORGET_DEAD_SECONDS,
    FORGET_GROWTH,
    FORGET_SOON_SECONDS,
    NO_ACCESS,
    JsonPipeline,
    ProcAccess,
)
from auditpy.jsonout.sinks import FileSink, SocketSink
from auditpy.proto import dispatch as wire
from tests.audispd_support import Audispd, wait_for
from tests.test_events_assemble import corpus_lines
from tests.test_laurel_compat import MemorySink

EXEC_EVENT = [
    b'type=SYSCALL msg=audit(1700000000.100:7): arch=c000003e syscall=59 success=yes exit=0 '
    b"a0=1 a1=2 a2=3 a3=4 items=1 ppid=1 pid=4242 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 "
    b'egid=0 sgid=0 fsgid=0 tty=(none) ses=1 comm="true" exe="/usr/bin/true" key="k1"\n',
    b'type=EXECVE msg=audit(1700000000.100:7): argc=1 a0="true"\n',
    b"type=PROCTITLE msg=audit(1700000000.100:7): proctitle=74727565\n",
    b"type=EOE msg=audit(1700000000.100:7): \n",
]


# -- configuration ----------------------------------------------------------------------------


def test_config_keys_and_defaults() -> None:
    text = (
        "# comment\n"
        "output = /var/log/a.json\n"
        "SIZE = 1000\n"
        "generations = 3\n"
        "mode = 0640\n"
        "group = 0\n"
        'line_prefix = "@cee: "\n'
        "translate_universal = yes\n"
        "execve_argv = both\n"
        "execve_env = none\n"
        "label_keys = a, b c\n"
        "label_exe = ^/usr/bin/(ba)?sh$ shell\n"
        "label_exe = java$ java\n"
        "filter_types = CRED_REFR, 1104\n"
    )
    config, warnings = parse_json_conf(text, "/etc/x.conf")
    assert warnings == []
    assert config.output == "/var/log/a.json" and config.size == 1000
    assert config.mode == 0o640 and config.group == 0 and config.line_prefix == "@cee: "
    assert config.argv_array and config.argv_string and config.execve_env == ()
    assert config.label_keys == {"a", "b", "c"}
    assert config.label_exe == (("^/usr/bin/(ba)?sh$", "shell"), ("java$", "java"))
    assert config.filter_types == {1110, 1104}
    assert JsonConfig().output == "/var/log/audit/audit.json" and JsonConfig().mode == 0o600


def test_config_errors_name_file_and_line() -> None:
    text = "output = relative\nmode = 0666\nbogus = 1\nlabel_exe = ( x\nsize = -1\nnope\n"
    with pytest.raises(ConfigError) as info:
        parse_json_conf(text, "/etc/x.conf")
    messages = [str(p) for p in info.value.errors]
    assert [m.split(":")[1] for m in messages] == ["1", "2", "3", "4", "5", "6"]
    assert "anyone write" in messages[1] and "unknown key 'bogus'" in messages[2]


def test_config_duplicate_is_a_warning_and_file_checks(tmp_path: Path) -> None:
    _, warnings = parse_json_conf("size = 1\nsize = 2\n", "f")
    assert "already set on line 1" in str(warnings[0])
    path = tmp_path / "j.conf"
    path.write_text("size = 5\n")
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError, match="group or world writable"):
        load_json_conf(str(path))
    os.chmod(path, 0o644)
    assert load_json_conf(str(path))[0].size == 5
    with pytest.raises(ConfigError, match="No such file"):
        load_json_conf(str(tmp_path / "missing"))


def test_builtin_args() -> None:
    assert parse_json_args([]) is None
    assert parse_json_args(["/etc/j.conf"]) == "/etc/j.conf"
    with pytest.raises(ValueError, match="absolute"):
        parse_json_args(["j.conf"])
    with pytest.raises(ValueError, match="one argument"):
        parse_json_args(["/a", "/b"])


# -- sinks ------------------------------------------------------------------------------------


def test_file_sink_mode_group_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    group = grp.getgrall()[-1].gr_gid
    sink = FileSink(str(path), size=100, generations=2, mode=0o640, group=group)
    line = b"x" * 39 + b"\n"
    for _ in range(8):
        sink.write([line])
    sink.close()
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.1", "out.json.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert sink.stats.lines == 8 and sink.stats.rotations == 3


def test_file_sink_counts_what_it_cannot_write(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "no" / "dir.json"))
    sink.write([b"a\n", b"b\n"])
    assert sink.stats.dropped == 2 and sink.stats.errors == 1


def test_socket_sink_stream_datagram_and_absent_peer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    now = [0.0]
    sink = SocketSink(str(path), clock=lambda: now[0])
    sink.write([b"early\n"])
    assert sink.stats.errors == 1 and sink.pending() == 6  # held, not lost
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    now[0] = 10.0
    sink.write([b"one\n", b"two\n"])
    assert [server.recv(100) for _ in range(3)] == [b"early\n", b"one\n", b"two\n"]
    server.close()
    os.unlink(path)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(path))
    stream.listen()
    sink2 = SocketSink(str(path))
    sink2.write([b"a\n", b"b\n"])
    conn, _ = stream.accept()
    assert conn.recv(100) == b"a\nb\n"
    sink2.close()
    conn.close()
    stream.close()


# -- pipeline ---------------------------------------------------------------------------------


def pipeline(config: JsonConfig, access: ProcAccess = NO_ACCESS) -> tuple[JsonPipeline,
                                                                           MemorySink]:
    sink = MemorySink()
    return JsonPipeline(config, sink=sink, clock=None, access=access), sink


def test_filters_prefix_and_state() -> None:
    pipe, sink = pipeline(JsonConfig(filter_keys=frozenset({"k1"}), line_prefix="@cee: "))
    for line in EXEC_EVENT:
        pipe.add_line(line)
    pipe.add_line(b"type=USER msg=audit(1700000000.200:8): pid=1 uid=0 msg='hi'\n")
    pipe.close()
    assert len(sink.lines) == 1 and sink.lines[0].startswith(b'@cee: {"ID":"1700000000.200:8"')
    assert pipe.stats.filtered == 1
    state = dict(pipe.state_lines())
    assert state["events written"] == 1 and state["events filtered"] == 1


def test_execve_environment_and_container() -> None:
    cid = "0f" * 32
    access = ProcAccess(
        read_proc=lambda pid: None,
        read_cgroup=lambda pid: f"/system.slice/docker-{cid}.scope",
        read_environ=lambda pid, names: {"LD_PRELOAD": b"/x.so"},
        scan=None, user_name=None, group_name=None,
    )
    pipe, sink = pipeline(JsonConfig(), access)
    for line in EXEC_EVENT:
        pipe.add_line(line)
    pipe.flush()
    [event] = [json.loads(line) for line in sink.lines]
    assert event["EXECVE"] == {"argc": 1, "ARGV": ["true"], "ENV": {"LD_PRELOAD": "/x.so"}}
    assert event["CONTAINER_INFO"] == {"ID": cid}
    assert event["SYSTEMD_INFO"] == {"UNIT": f"docker-{cid}.scope"}
    assert event["SYSCALL"]["PID"] == {"EVENT_ID": "1700000000.100:7"}


def test_gone_processes_leave_the_table_every_forget_period() -> None:
    """Live pipelines let go of processes /proc no longer shows, at most once per
    FORGET_DEAD_SECONDS; without /proc access (saved logs) nothing is forgotten."""
    alive = {1}
    scans: list[int] = []

    def alive_now() -> set[int]:
        scans.append(1)
        return set(alive)

    access = ProcAccess(read_proc=lambda pid: None, read_cgroup=None, read_environ=None,
                        scan=None, user_name=None, group_name=None, live_pids=alive_now)
    pipe, _sink = pipeline(JsonConfig(), access)
    for line in EXEC_EVENT:
        pipe.add_line(line)
    assert len(pipe.table) == 1  # the exec'd process, pid 4242, not alive here
    pipe.forget_dead_when_due(100.0)
    pipe.forget_dead_when_due(100.0 + FORGET_DEAD_SECONDS - 0.1)
    assert len(scans) == 1 and len(pipe.table) == 1  # it was used since the last pass
    pipe.forget_dead_when_due(100.0 + FORGET_DEAD_SECONDS)
    assert len(scans) == 2 and len(pipe.table) == 0
    assert dict(pipe.state_lines())["processes forgotten (gone from /proc)"] == 1
    from auditpy.jsonout.procfs import live_pids
    assert os.getpid() in (live_pids() or ()) and live_pids("/nonexistent") is None
    kept, _ = pipeline(JsonConfig())
    for line in EXEC_EVENT:
        kept.add_line(line)
    for now in (0.0, 100.0, 200.0):
        kept.forget_dead_when_due(now)
    assert len(kept.table) == 1


def test_a_burst_of_new_processes_is_let_go_of_sooner() -> None:
    """Once the table grew by FORGET_GROWTH entries since the last pass, the next comes
    FORGET_SOON_SECONDS after it rather than FORGET_DEAD_SECONDS; growth below that waits
    for the whole period."""
    scans: list[float] = []
    access = ProcAccess(read_proc=lambda pid: ProcInfo(pid, 1), read_cgroup=None,
                        read_environ=None, scan=None, user_name=None, group_name=None,
                        live_pids=lambda: scans.append(0) or {1})
    pipe, _sink = pipeline(JsonConfig(), access)
    pipe.forget_dead_when_due(0.0)
    assert len(scans) == 1
    for pid in range(1000, 1000 + FORGET_GROWTH - 1):
        pipe.table.lookup(pid)
    pipe.forget_dead_when_due(FORGET_SOON_SECONDS)
    assert len(scans) == 1  # one entry short of the growth
    pipe.table.lookup(5000)
    pipe.forget_dead_when_due(FORGET_SOON_SECONDS - 0.01)
    assert len(scans) == 1  # too soon after the last pass
    pipe.forget_dead_when_due(FORGET_SOON_SECONDS)
    assert len(scans) == 2 and len(pipe.table) == FORGET_GROWTH  # used since the pass before
    pipe.forget_dead_when_due(2 * FORGET_SOON_SECONDS)
    assert len(scans) == 2  # the table did not grow since
    pipe.forget_dead_when_due(FORGET_SOON_SECONDS + FORGET_DEAD_SECONDS)
    assert len(scans) == 3 and len(pipe.table) == 0


def test_a_process_caches_its_fragments_from_its_second_event() -> None:
    """A process seen once (most of a fork/exec load) keeps no rendered fragments in its
    table entry; from its second event on they are cached and used, and the lines are the
    same either way."""
    access = ProcAccess(read_proc=lambda pid: ProcInfo(1, 0, b"init") if pid == 1 else None,
                        read_cgroup=None, read_environ=None, scan=None, user_name=None,
                        group_name=None, live_pids=None)
    pipe, sink = pipeline(JsonConfig(), access)
    for line in EXEC_EVENT:
        pipe.add_line(line)
    entry = pipe.table.get(4242)
    assert entry is not None and not isinstance(entry.cache, tuple)
    getpid = [line.replace(b"syscall=59", b"syscall=39") for line in EXEC_EVENT
              if not line.startswith(b"type=EXECVE")]
    cached = []
    for serial in (8, 9):
        for line in getpid:
            pipe.add_line(line.replace(b":7)", b":%d)" % serial))
        cached.append(entry.cache)
    assert isinstance(cached[0], tuple) and cached[1] is cached[0]
    pipe.close()
    lines = [json.loads(line) for line in sink.lines]
    assert len(lines) == 3
    context = [(line["SYSCALL"]["PPID"], line["SYSCALL"]["PID"]) for line in lines]
    assert context == [({"comm": "init", "pid": 1}, {"EVENT_ID": "1700000000.100:7"})] * 3


def test_reconfigure_keeps_events_in_flight() -> None:
    pipe, sink = pipeline(JsonConfig())
    for line in EXEC_EVENT[:2]:
        pipe.add_line(line)
    pipe.reconfigure(JsonConfig(translate_universal=True))
    for line in EXEC_EVENT[2:]:
        pipe.add_line(line)
    pipe.flush()
    [event] = [json.loads(line) for line in sink.lines]
    assert event["SYSCALL"]["SYSCALL"] == "execve" and "INCOMPLETE" not in event


def test_reconfigure_keeps_the_process_table() -> None:
    pipe, sink = pipeline(JsonConfig())
    for line in EXEC_EVENT:
        pipe.add_line(line)
    table = pipe.table
    pipe.reconfigure(JsonConfig(label_keys=frozenset({"k2"})))
    later = EXEC_EVENT[0].replace(b"syscall=59", b"syscall=110").replace(b":7)", b":8)")
    pipe.add_line(later.replace(b'key="k1"', b'key="k2"'))
    pipe.add_line(b"type=EOE msg=audit(1700000000.100:8): \n")
    pipe.flush()
    assert pipe.table is table
    event = json.loads(sink.lines[-1])
    assert event["SYSCALL"]["PID"] == {"EVENT_ID": "1700000000.100:7"}
    assert event["SYSCALL"]["LABELS"] == ["k2"]


def test_socket_sink_drops_only_a_line_too_large_for_a_datagram(tmp_path: Path) -> None:
    path = tmp_path / "d"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    sink = SocketSink(str(path))
    sink.write([b"x" * (1 << 20) + b"\n", b"small\n"])
    assert server.recv(100) == b"small\n"
    assert sink.stats.dropped == 1 and sink.stats.lines == 1
    server.close()


def test_decoder_formats() -> None:
    text = StreamDecoder()
    assert text.feed(b"type=EO") == []
    assert text.feed(b"E msg=audit(1.0:1): \ntype=") == [(None, b"type=EOE msg=audit(1.0:1): ")]
    assert text.rest() == [(None, b"type=")]
    binary = StreamDecoder()
    frame = wire.frame(0, 1300, b"audit(1.0:1): a=1")
    assert binary.feed(frame[:5]) == []
    assert binary.feed(frame[5:] + frame) == [(1300, b"audit(1.0:1): a=1")] * 2


# -- the program ------------------------------------------------------------------------------


def program(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "auditpy.audisp_json", "-f", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_program_without_configuration_to_stdout_and_file(tmp_path: Path) -> None:
    proc = program("--output", "-")
    out, err = proc.communicate(b"".join(corpus_lines()), timeout=60)
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 119
    target = tmp_path / "events.json"
    proc = program("--output", str(target))
    _, err = proc.communicate(b"".join(EXEC_EVENT), timeout=60)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["EXECVE"]["ARGV"] == ["true"]


def test_program_binary_input_and_check(tmp_path: Path) -> None:
    frames = b"".join(wire.frame(0, t, p) for t, p in [
        (1300, EXEC_EVENT[0].split(b"msg=", 1)[1].rstrip(b"\n")),
        (1320, b"audit(1700000000.100:7): "),
    ])
    proc = program("--output", "-")
    out, _ = proc.communicate(frames, timeout=60)
    assert json.loads(out)["SYSCALL"]["pid"] == 4242
    conf = tmp_path / "j.conf"
    conf.write_text("mode = 0666\n")
    os.chmod(conf, 0o644)
    check = subprocess.run([sys.executable, "-m", "auditpy.audisp_json", "-c", str(conf),
                            "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and f"{conf}:1: mode" in check.stderr


def test_program_sighup_reload_keeps_events_in_flight(tmp_path: Path) -> None:
    conf = tmp_path / "j.conf"
    out = tmp_path / "out.json"
    errors = tmp_path / "stderr"
    conf.write_text(f"output = {out}\n")
    os.chmod(conf, 0o644)
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "auditpy.audisp_json", "-f", "-c",
                                 str(conf)], stdin=subprocess.PIPE, stderr=err)
    assert proc.stdin is not None
    try:
        # A signal before the program's start would kill it, as it kills any plugin.
        wait_for(lambda: b"started" in errors.read_bytes(), 30, "the program's start")
        proc.stdin.write(b"".join(EXEC_EVENT[:2]))
        proc.stdin.flush()
        conf.write_text(f"output = {out}\ntranslate_universal = yes\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"configuration reloaded" in errors.read_bytes(), 30, "the reload")
        proc.stdin.write(b"".join(EXEC_EVENT[2:]))
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    [event] = [json.loads(line) for line in out.read_text().splitlines()]
    assert "INCOMPLETE" not in event and event["EXECVE"]["ARGV"] == ["true"]
    assert event["SYSCALL"]["SYSCALL"] == "execve"


def test_program_timeout_closes_an_event_without_input(tmp_path: Path) -> None:
    conf = tmp_path / "j.conf"
    out = tmp_path / "out.json"
    conf.write_text(f"output = {out}\nend_of_event_timeout = 1\n")
    os.chmod(conf, 0o644)
    proc = program("-c", str(conf))
    assert proc.stdin is not None
    try:
        proc.stdin.write(EXEC_EVENT[0])
        proc.stdin.flush()
        wait_for(lambda: out.exists() and out.read_text(), 10, "the timed-out event")
        event = json.loads(out.read_text())
        assert event["INCOMPLETE"] == {"reason": "timeout"}
    finally:
        proc.stdin.close()
        proc.wait(30)


# -- pyaudispd builtin ------------------------------------------------------------------------


def test_builtin_json_in_pyaudispd(tmp_path: Path) -> None:
    d = Audispd(tmp_path)
    out = tmp_path / "out" / "events.json"
    conf = tmp_path / "json.conf"
    conf.write_text(f"output = {out}\ntranslate_universal = yes\n")
    os.chmod(conf, 0o644)
    d.plugin("json", path="builtin_json", args=[str(conf)])
    d.start()
    try:
        d.wait_log("plugin json.conf started")
        for line in EXEC_EVENT[:2]:
            d.send(line.split(b"msg=", 1)[1].rstrip(b"\n"), msg_type=1300 if b"SYSCALL" in line
                   else 1309, version=wire.PROTOCOL_V0)
        conf.write_text(f"output = {out}\ntranslate_universal = no\nline_prefix = \"@cee: \"\n")
        d.reload()
        d.wait_log("plugin json.conf reloaded its configuration; 1 events in flight kept")
        d.send(EXEC_EVENT[2].split(b"msg=", 1)[1].rstrip(b"\n"), msg_type=1327,
               version=wire.PROTOCOL_V0)
        d.send(b"audit(1700000000.100:7): ", msg_type=1320, version=wire.PROTOCOL_V0)
        d.send(b"node=h1 type=USER msg=audit(1700000000.200:8): pid=1 uid=0 msg='hi'",
               msg_type=1005)
        wait_for(lambda: out.exists() and out.read_text().count("\n") == 2, 10, "two events")
        first, second = out.read_text().splitlines()
        event = json.loads(first.removeprefix("@cee: "))
        assert "ARCH" not in event["SYSCALL"] and event["EXECVE"]["ARGV"] == ["true"]
        assert json.loads(second.removeprefix("@cee: "))["NODE"] == "h1"
        state = d.state()["plugin json.conf"]
        assert state["events written"] == "2" and state["records delivered"] == "5"
    finally:
        assert d.stop() == 0
    assert "plugin json.conf stopped" in d.log()


def test_builtin_json_with_bad_configuration_fails_alone(tmp_path: Path) -> None:
    d = Audispd(tmp_path)
    conf = tmp_path / "json.conf"
    conf.write_text("output = x\n")
    os.chmod(conf, 0o644)
    d.plugin("json", path="builtin_json", args=[str(conf)])
    d.plugin("rec")
    d.start()
    try:
        d.wait_log(f"plugin json.conf: {conf}:1: output")
        d.wait_ready("rec")
    finally:
        d.stop()


# -- API --------------------------------------------------------------------------------------


def test_api_reads_rotated_logs_in_order(tmp_path: Path) -> None:
    lines = [line for line in corpus_lines() if not line.startswith(b"type=EOE")]
    log = tmp_path / "audit.log"
    (tmp_path / "audit.log.2").write_bytes(b"".join(lines[:200]))
    (tmp_path / "audit.log.1").write_bytes(b"".join(lines[200:400]))
    log.write_bytes(b"".join(lines[400:]))
    assert [p.name for p in log_files(log)] == ["audit.log.2", "audit.log.1", "audit.log"]
    events = list(read_log(log, rotated=True))
    whole = list(read_lines(lines))
    assert [e.id for e in events] == [e.id for e in whole] and len(events) == 119
    execs = [e for e in events if e.data.get("EXECVE")]
    assert execs[0].record("SYSCALL") is not None
    assert execs[0].record("SYSCALL").get("syscall") == 59  # type: ignore[union-attr]
    assert json.loads(execs[0].json()) == execs[0].data


def test_api_follows_a_dispatcher_socket(tmp_path: Path) -> None:
    path = tmp_path / "events.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    stream = follow(path, idle=3.0, config=JsonConfig(end_of_event_timeout=1))
    conn_holder: list[socket.socket] = []

    def first() -> object:
        return next(stream)

    import threading

    def serve() -> None:
        conn, _ = server.accept()
        conn_holder.append(conn)
        conn.sendall(b"".join(EXEC_EVENT) + EXEC_EVENT[0].replace(b":7)", b":9)"))

    thread = threading.Thread(target=serve)
    thread.start()
    event = first()
    second = next(stream)
    thread.join()
    assert event.id == "1700000000.100:7" and event.incomplete is None  # type: ignore[attr-defined]
    assert second.id == "1700000000.100:9" and second.incomplete == "timeout"
    conn_holder[0].close()
    assert list(stream) == []
    server.close()


def test_builtin_event_timeout_is_auditd_confs_unless_its_file_sets_one(tmp_path: Path) -> None:
    """Under pyaudispd, end_of_event_timeout comes from auditd.conf (as the C dispatcher's
    event assembly takes it); the JSON file's own key overrides it."""
    from auditpy.audispd.builtin_json import JsonPlugin
    from auditpy.audispd.runner import RunnerContext
    from auditpy.config.plugins import PluginConfig, load_dispatcher_settings
    from auditpy.system import evloop

    (tmp_path / "auditd.conf").write_text(
        "end_of_event_timeout = 7\nspace_left = 75\nadmin_space_left = 50\n")
    os.chmod(tmp_path / "auditd.conf", 0o640)
    settings, _ = load_dispatcher_settings(str(tmp_path))
    assert settings.end_of_event_timeout == 7
    loop = evloop.Loop()
    try:
        ctx = RunnerContext(loop, end_of_event_timeout=float(settings.end_of_event_timeout))
        for text, expected in (("", 7.0), ("end_of_event_timeout = 3\n", 3.0)):
            conf = tmp_path / "json.conf"
            conf.write_text(f"output = {tmp_path / 'out.json'}\n{text}")
            os.chmod(conf, 0o644)
            plugin = JsonPlugin(PluginConfig(name="json", file="json.conf", active=True,
                                             path="builtin_json", args=(str(conf),)), ctx)
            plugin.start()
            assert plugin.pipeline is not None
            assert plugin.pipeline.assembler.timeout == expected
            loop.run_until_complete(plugin.stop())
    finally:
        loop.close()
