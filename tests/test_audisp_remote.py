"""pyaudisp-remote: configuration, queues, and real processes against Debian's C auditd
(as a network server only: local_events = no) and against fake servers in this test."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy import structs
from auditpy.audisp_remote import delivery
from auditpy.audisp_remote import input as remote_input
from auditpy.audisp_remote import main as remote_main
from auditpy.audisp_remote import plugin as ar
from auditpy.config import remote_conf as rc
from auditpy.config.errors import ConfigError
from auditpy.proto import dispatch as wire
from auditpy.proto import remote as rp
from auditpy.system import evloop, spool

from .conftest import (
    free_port,
    listening,
    make_pki,
    missing,
    remote_plugin_state,
    wait_for,
    wait_for_async,
)

C_AUDITD = "/sbin/auditd"
IS_ROOT = os.geteuid() == 0
_NO_C_SERVER = missing(C_AUDITD) or (
    None if IS_ROOT else "needs root: Debian's auditd (run only as a network server) says so"
)
needs_c_auditd = pytest.mark.skipif(_NO_C_SERVER is not None, reason=_NO_C_SERVER or "")
MARKER = re.compile(rb"text=marker-(\d+)'")


def record(n: int) -> str:
    return (
        f"node=h1 type=USER msg=audit(1700000000.123:{n}): pid=1 uid=0 auid=0 ses=1 "
        f"msg='text=marker-{n}'"
    )


def markers(lines: Iterable[bytes]) -> collections.Counter[int]:
    found: collections.Counter[int] = collections.Counter()
    for line in lines:
        match = MARKER.search(line)
        if match:
            found[int(match.group(1))] += 1
    return found


def write_conf(path: Path, **keys: object) -> Path:
    settings_ = {
        "remote_server": "127.0.0.1",
        "transport": "tcp",
        "mode": "immediate",
        "queue_depth": 50000,
        "network_retry_time": 1,
        "max_tries_per_record": 3,
        "max_time_per_record": 5,
        "network_failure_action": "warn_once",
    }
    settings_.update(keys)
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings_.items()))
    os.chmod(path, 0o640)
    return path


# --------------------------------------------------------------------------------------
# Processes


class Plugin:
    """pyaudisp-remote as a child, stdin a pipe, stderr a file."""

    def __init__(self, conf: Path, err: Path, *, stdin: Any = subprocess.PIPE) -> None:
        self.err = err
        with open(err, "ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditpy.audisp_remote", "-c", str(conf), "--no-syslog"],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

    def send(self, lines: Iterable[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.proc.stdin.flush()

    def send_bytes(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def finish(self, timeout: float = 30) -> int:
        self.close_stdin()
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> None:
        wait_for(lambda: text in self.stderr(), timeout, repr(text), context=self.stderr)

    def state(self) -> dict[str, str]:
        """The plugin's state line (SIGUSR1), as {"queue_size": "10", ...}."""
        return remote_plugin_state(self.proc.pid, self.err)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class CServer:
    """Debian's auditd as a listener only: local_events = no never touches the kernel."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.conf_dir = root / "etc"
        self.log = root / "log" / "audit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in (self.conf_dir, root / "plugins", self.log.parent):
            sub.mkdir(parents=True, exist_ok=True)
        conf = self.conf_dir / "auditd.conf"
        conf.write_text(
            f"local_events = no\nwrite_logs = yes\nlog_file = {self.log}\nlog_format = RAW\n"
            "flush = incremental_async\nfreq = 100\nnum_logs = 2\nmax_log_file = 1000\n"
            "max_log_file_action = ignore\nspace_left = 2\nspace_left_action = ignore\n"
            "admin_space_left = 1\nadmin_space_left_action = ignore\n"
            "disk_full_action = ignore\ndisk_error_action = ignore\n"
            f"tcp_listen_port = {port}\ntcp_max_per_addr = 4\nuse_libwrap = no\n"
            f"plugin_dir = {root / 'plugins'}\n"
        )
        os.chown(conf, 0, 0)
        os.chmod(conf, 0o640)

    def start(self) -> None:
        with open(self.root / "auditd.err", "ab") as errors:
            self.proc = subprocess.Popen(
                [C_AUDITD, "-n", "-c", str(self.conf_dir)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
            )

        wait_for(lambda: listening(self.port), 10, f"the C auditd listening on {self.port}",
                 context=lambda: (self.root / "auditd.err").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def markers(self) -> collections.Counter[int]:
        if not self.log.exists():
            return collections.Counter()
        return markers(self.log.read_bytes().splitlines())


@pytest.fixture
def cleanup() -> Iterator[list[Plugin | CServer | FakeServer]]:
    owned: list[Plugin | CServer | FakeServer] = []
    try:
        yield owned
    finally:
        for thing in reversed(owned):
            thing.stop()


# --------------------------------------------------------------------------------------
# A fake server speaking the managed protocol

CLOSE = "close"
Reply = list[bytes] | str


def ack(frame: rp.Frame) -> list[bytes]:
    return [rp.pack_frame(rp.TYPE_ACK, frame.seq)]


class FakeServer:
    """`policy(server, connection_number, frame)` returns the bytes to answer with, or
    CLOSE; it appends the payloads it considers stored to `server.stored`."""

    def __init__(
        self,
        policy: Callable[[FakeServer, int, rp.Frame], Reply] | None = None,
        tls: ssl.SSLContext | None = None,
        *,
        ascii_lines: bool = False,
    ) -> None:
        self.policy = policy or FakeServer.store_and_ack
        self.tls = tls
        self.ascii_lines = ascii_lines
        self.stored: list[bytes] = []
        self.frames: list[tuple[int, rp.Frame]] = []
        self.connections = 0
        self.tls_errors: list[str] = []
        self.client_names: list[str] = []
        self.state: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.peer_ports: list[int] = []
        self.running = True
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @staticmethod
    def store_and_ack(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if frame.msg_type == rp.TYPE_MESSAGE:
            server.stored.append(frame.payload)
        return ack(frame)

    def _accept(self) -> None:
        self.listener.settimeout(0.05)  # so that stop() never waits on accept()
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                number = self.connections
                self.connections += 1
                self.conns.append(conn)
                self.peer_ports.append(int(conn.getpeername()[1]))
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        sock: socket.socket = conn
        try:
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.tls_errors.append(str(exc))
                    return
                peer = sock.getpeercert()
                if peer:
                    subject = dict(item[0] for item in peer["subject"])
                    self.client_names.append(str(subject.get("commonName")))
                with self.lock:
                    self.conns.append(sock)
            reader = rp.FrameReader()
            while self.running:
                data = sock.recv(65536)
                if not data:
                    return
                if self.ascii_lines:
                    self.state.setdefault("ascii", bytearray()).extend(data)
                    continue
                for frame in reader.feed(data):
                    with self.lock:
                        self.frames.append((number, frame))
                        out = self.policy(self, number, frame)
                    if out == CLOSE:
                        return
                    for chunk in out:
                        sock.sendall(chunk)
        except (OSError, rp.ProtocolError):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def heartbeats(self) -> int:
        return sum(1 for _, frame in self.frames if frame.msg_type == rp.TYPE_HEARTBEAT)

    def stop(self) -> None:
        self.running = False
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
        for thread in self.threads:
            thread.join(5)


def lines_stored(server: FakeServer) -> collections.Counter[int]:
    return markers(server.stored)


# --------------------------------------------------------------------------------------
# Configuration


def parse(text: str) -> rc.RemoteConfig:
    return rc.parse_remote_conf(text, "/x/remote.conf").config


DEBIAN_REMOTE_CONF = Path("/etc/audit/audisp-remote.conf")


@pytest.mark.skipif(not DEBIAN_REMOTE_CONF.exists(),
                    reason=f"needs {DEBIAN_REMOTE_CONF} (Debian package audispd-plugins)")
def test_debian_shipped_file_parses_once_the_server_is_set() -> None:
    text = DEBIAN_REMOTE_CONF.read_text()
    with pytest.raises(ConfigError, match=r"remote.conf:\d+: remote_server: no value given"):
        parse(text)
    fixed, count = re.subn(r"^remote_server *=.*$", "remote_server = log.example", text,
                           flags=re.MULTILINE)
    assert count == 1
    config = parse(fixed)
    assert config.remote_server == "log.example"
    assert config.queue_depth == 10240


def test_every_key() -> None:
    text = """
# comment
remote_server = 192.0.2.1
port = 6000
local_port = 600
transport = TLS
mode = forward
queue_file = /var/spool/q
queue_depth = 7
format = managed
network_retry_time = 2
max_tries_per_record = 4
max_time_per_record = 9
heartbeat_timeout = 30
network_failure_action = exec /bin/true
disk_low_action = syslog
disk_full_action = suspend
disk_error_action = single
remote_ending_action = RECONNECT
generic_error_action = halt
generic_warning_action = ignore
queue_error_action = warn_once_continue
overflow_action = suspend
startup_failure_action = exec /bin/false
tls_ca_file = /ca.pem
tls_cert_file = /c.pem
tls_key_file = /c.key
tls_server_name = logs.example
krb5_principal = x
krb5_client_name = y
krb5_key_file = /k
enable_krb5 = no
"""
    parsed = rc.parse_remote_conf(text, "/x/remote.conf")
    c = parsed.config
    assert (c.remote_server, c.port, c.local_port, c.transport) == ("192.0.2.1", 6000, 600, "tls")
    assert (c.mode, c.queue_file, c.queue_depth, c.format) == ("forward", "/var/spool/q", 7,
                                                               "managed")
    assert (c.network_retry_time, c.max_tries_per_record, c.max_time_per_record,
            c.heartbeat_timeout) == (2, 4, 9, 30)
    assert c.network_failure_action == rc.Action("exec", "/bin/true")
    assert c.startup_failure_action == rc.Action("exec", "/bin/false")
    assert str(c.network_failure_action) == "exec /bin/true"
    assert [str(getattr(c, key)) for key in (
        "disk_low_action", "disk_full_action", "disk_error_action", "remote_ending_action",
        "generic_error_action", "generic_warning_action", "queue_error_action",
        "overflow_action")] == ["syslog", "suspend", "single", "reconnect", "halt", "ignore",
                                "warn_once_continue", "suspend"]
    assert (c.tls_ca_file, c.tls_cert_file, c.tls_key_file, c.tls_server_name) == (
        "/ca.pem", "/c.pem", "/c.key", "logs.example")
    assert parsed.lines["port"] == 4
    assert any("krb5_principal is ignored" in str(w) for w in parsed.warnings)


def test_defaults_are_the_c_code_defaults() -> None:
    c = parse("remote_server = h\n")
    assert (c.port, c.local_port, c.mode, c.queue_depth, c.format) == (
        60, None, "immediate", 2048, "managed")
    assert str(c.network_failure_action) == "stop"
    assert str(c.startup_failure_action) == "warn_once_continue"
    assert parse("remote_server = h\nlocal_port = any\n").local_port is None
    assert parse("remote_server = h\nlocal_port = 0\n").local_port is None
    assert parse("REMOTE_SERVER = h\nPort = 61\n").port == 61


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bogus = 1", "unknown keyword 'bogus'"),
        ("port=60", "missing '='"),
        ("port = 0", "port: value 0 is too small"),
        ("port = 65536", "port: value 65536 is too large"),
        ("port = 60 extra", "port: unexpected 'extra'"),
        ("port", "missing '='"),
        ("queue_depth = 0", "too small"),
        ("queue_depth = 12abc", "should only be digits"),
        ("heartbeat_timeout = -1", "should only be digits"),
        ("network_retry_time = 2147483648", "too large"),
        ("max_tries_per_record = 0", "too small"),
        ("max_time_per_record = 0", "too small"),
        ("mode = sideways", "not one of immediate, forward"),
        ("format = json", "not one of managed, ascii"),
        ("transport = krb5", "krb5 is not supported"),
        ("transport = udp", "not one of"),
        ("enable_krb5 = yes", "krb5 is not supported"),
        ("queue_file = relative", "not an absolute path"),
        ("network_failure_action = exec", "exec needs the path"),
        ("network_failure_action = exec relative", "not an absolute path"),
        ("network_failure_action = reconnect", "not one of"),
        ("network_failure_action = syslog extra", "unexpected 'extra'"),
        ("overflow_action = stop", "not one of"),
        ("overflow_action = exec /bin/true", "not one of"),
        ("startup_failure_action = stop", "not one of"),
        ("disk_low_action = a b c", "unexpected"),
        ("remote_server = ", "no value given"),
        ("remote_server = a b", "unexpected 'b'"),
        ("local_port = 70000", "too large"),
        ("tls_ca_file = ca.pem", "not an absolute path"),
        ("port = \x00", "NUL"),
        ("port = " + "6" * 5000, "longer than"),
    ],
)
def test_bad_values_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(f"# first\nremote_server = h\n{line}\n")
    assert len(info.value.errors) == 1
    problem = info.value.errors[0]
    assert (problem.path, problem.line) == ("/x/remote.conf", 3)
    assert message in problem.message
    assert str(problem).startswith("/x/remote.conf:3: ")


def test_every_error_is_reported_and_cross_checks() -> None:
    with pytest.raises(ConfigError) as info:
        parse("port = x\nmode = bad\n")
    assert [p.line for p in info.value.errors] == [1, 2]
    with pytest.raises(ConfigError, match="remote_server is not set"):
        parse("port = 61\n")
    with pytest.raises(ConfigError, match=r":3: mode = forward needs format = managed"):
        parse("remote_server = h\nmode = forward\nformat = ascii\n")
    with pytest.raises(ConfigError, match="transport = tls needs format = managed"):
        parse("remote_server = h\ntransport = tls\nformat = ascii\n")
    with pytest.raises(ConfigError, match="tls_key_file is set but tls_cert_file is not"):
        parse("remote_server = h\ntransport = tls\ntls_key_file = /k\n")
    parsed = rc.parse_remote_conf("remote_server = h\ntls_ca_file = /ca\n", "/f")
    assert "tls_ca_file is ignored unless transport = tls" in str(parsed.warnings[0])


CONF_PIECES = [
    " ", " = ", "=", "#", "\n", "\t", "\r", "\x00", "\udcff", "\u00e9", "exec", "/bin/true",
    "yes", "no", "0", "1", "65535", "99999999999", "-1", "any", "syslog", "forward", "ascii",
    "tls", "tcp", "krb5", "127.0.0.1", "stop", "reconnect", "relative", "x" * 5000,
    *sorted(rc.KEYWORDS),
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(CONF_PIECES), max_size=40).map("".join))
def test_hostile_text_gives_a_config_or_config_error(text: str) -> None:
    try:
        parsed = rc.parse_remote_conf(text, "/f")
    except ConfigError as exc:
        assert exc.errors
        for problem in exc.errors:
            assert problem.path == "/f"
            assert problem.line is None or problem.line >= 1
    else:
        assert parsed.config.remote_server


def test_load_checks_the_file_and_exec_helpers(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "r.conf", network_failure_action="exec /nonexistent/x")
    with pytest.raises(ConfigError, match=r"r.conf:\d+: network_failure_action: cannot stat"):
        rc.load_remote_conf(str(conf))
    conf = write_conf(tmp_path / "r.conf")
    os.chmod(conf, 0o646)
    with pytest.raises(ConfigError, match="world writable"):
        rc.load_remote_conf(str(conf))
    with pytest.raises(ConfigError, match="cannot open"):
        rc.load_remote_conf(str(tmp_path / "missing.conf"))
    conf = write_conf(tmp_path / "t.conf", transport="tls", tls_ca_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="tls_ca_file: cannot read"):
        rc.load_remote_conf(str(conf))
    bad_ca = tmp_path / "bad.pem"
    bad_ca.write_text("not a certificate\n")
    conf = write_conf(tmp_path / "t.conf", transport="tls", tls_ca_file=bad_ca)
    with pytest.raises(ConfigError, match="cannot load the TLS certificates"):
        rc.load_remote_conf(str(conf))


@pytest.fixture
def own_signal_mask() -> Iterator[None]:
    """`main` holds the plugin's signals for the life of its process; run in this one, it
    must not leave pytest (and every child pytest starts later) with SIGTERM blocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    sigchld = signal.getsignal(signal.SIGCHLD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGCHLD, sigchld)


@pytest.mark.usefixtures("own_signal_mask")
def test_main_exits_1_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path / "r.conf", port="sixty")
    assert remote_main.main(["-c", str(conf), "--no-syslog"]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:" in err and "port: value 'sixty' should only be digits" in err
    good = write_conf(tmp_path / "g.conf")
    assert remote_main.main(["-c", str(good), "--no-syslog", "--check"]) == 0


# --------------------------------------------------------------------------------------
# Input and queues (in-process)


def test_input_decoder_lines_and_binary() -> None:
    decoder = remote_input.InputDecoder()
    assert decoder.feed(b"type=A msg=1\ntype=B") == [b"type=A msg=1"]
    assert decoder.feed(b" msg=2\n") == [b"type=B msg=2"]
    assert decoder.finish() == ([], 0)
    decoder = remote_input.InputDecoder()
    decoder.feed(b"x" * (remote_input.MAX_INPUT_LINE + 10))
    assert decoder.feed(b"yyy\nnext\n") == [b"next"]
    assert decoder.cut_lines == 1
    binary = remote_input.InputDecoder()
    data = wire.frame(wire.PROTOCOL_V0, 1005, b"audit(1.0:1): a") + wire.frame(
        wire.PROTOCOL_V1, 1005, b"node=n type=USER msg=audit(1.0:2): b"
    )
    assert binary.feed(data[:20]) == []
    assert binary.feed(data[20:]) == [
        b"type=USER msg=audit(1.0:1): a", b"node=n type=USER msg=audit(1.0:2): b"
    ]
    with pytest.raises(wire.FrameError):
        binary.feed(b"\x07" * 16)
    assert remote_input.is_eoe(b"type=EOE msg=audit(1.0:1): ")
    assert remote_input.is_eoe(b"node=x type=EOE msg=audit(1.0:1): ")
    assert not remote_input.is_eoe(b"node=x type=EOES msg=")


def test_disk_queue_survives_reopen_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "q")
    logged: list[str] = []
    queue = spool.DiskQueue(path, lambda _p, m: logged.append(m))
    queue.append_many([b"one", b"two", b"three"])
    assert (len(queue), queue.sendable, queue.unsynced) == (3, 0, 3)
    queue.sync()
    queue.pop_front(1)
    with pytest.raises(spool.QueueError, match="in use by another process"):
        spool.DiskQueue(path, lambda _p, m: None)
    queue.close()
    with open(path, "ab") as f:
        f.write(b"\x05\x00\x00\x00\x00\x00")  # a crash in the middle of a record header
    queue = spool.DiskQueue(path, lambda _p, m: logged.append(m))
    assert [queue.get(i) for i in range(len(queue))] == [b"two", b"three"]
    assert queue.recovered == 2 and "dropping 6 bytes" in logged[0]
    queue.pop_front(2)
    assert os.path.getsize(path) == 32  # emptied: truncated back to the header
    queue.close()
    assert len(spool.DiskQueue(path, lambda _p, m: None)) == 0


def test_disk_queue_detects_corruption_and_compacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q"
    path.write_bytes(b"something else entirely, not a queue file")
    with pytest.raises(spool.QueueError, match="not a pyaudisp-remote queue"):
        spool.DiskQueue(str(path), lambda _p, m: None)
    path.unlink()
    monkeypatch.setattr(spool, "COMPACT_BYTES", 1000)
    queue = spool.DiskQueue(str(path), lambda _p, m: None)
    queue.append_many([b"r%05d" % i + b"x" * 50 for i in range(100)])
    queue.sync()
    queue.pop_front(60)
    assert os.path.getsize(path) < 40 * 70  # rewritten with only the live records
    queue.append_many([b"tail"])
    queue.close()
    queue = spool.DiskQueue(str(path), lambda _p, m: None)
    assert len(queue) == 41 and queue.get(0).startswith(b"r00060") and queue.get(40) == b"tail"
    queue.close()
    # a bit flip in a record stops recovery there (CRC), keeping what came before it
    data = bytearray(path.read_bytes())
    data[32 + 8 + 60 * 0 + 3] ^= 0x20
    path.write_bytes(bytes(data))
    assert len(spool.DiskQueue(str(path), lambda _p, m: None)) == 0


# --------------------------------------------------------------------------------------
# Against Debian's auditd


@needs_c_auditd
def test_ten_thousand_records_reach_c_auditd_exactly_once(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    server = CServer(tmp_path / "server", free_port())
    cleanup.append(server)
    server.start()
    conf = write_conf(tmp_path / "r.conf", port=server.port)
    plugin = Plugin(conf, tmp_path / "plugin.err")
    cleanup.append(plugin)
    started = time.monotonic()
    plugin.send(record(n) for n in range(10_000))
    assert plugin.finish(60) == 0, plugin.stderr()
    elapsed = time.monotonic() - started
    server.stop()
    found = server.markers()
    assert found == collections.Counter(range(10_000)), plugin.stderr()
    print(f"10,000 records in {elapsed:.2f} s")


@needs_c_auditd
def test_forward_mode_loses_nothing_across_a_server_outage(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    server = CServer(tmp_path / "server", free_port())
    cleanup.append(server)
    server.start()
    conf = write_conf(
        tmp_path / "r.conf", port=server.port, mode="forward",
        queue_file=tmp_path / "queue", max_time_per_record=2,
    )
    plugin = Plugin(conf, tmp_path / "plugin.err")
    cleanup.append(plugin)
    sent = 0

    def feed_until(condition: Callable[[], object], what: str) -> None:
        """A steady stream, 20 records every 0.02 s, until the condition holds."""

        def send_and_check() -> object:
            nonlocal sent
            plugin.send(record(n) for n in range(sent, sent + 20))
            sent += 20
            return condition()

        wait_for(send_and_check, 60, what, interval=0.02, context=plugin.stderr)

    feed_until(lambda: len(server.markers()) >= 500, "500 records at the server")
    server.stop()
    # Across the outage until the plugin gives up on a record (max_time_per_record = 2 s,
    # network_failure_action = warn_once): in forward mode it keeps it all the same.
    feed_until(lambda: "cannot deliver a record to" in plugin.stderr(), "the failure action")
    assert "cannot connect" in plugin.stderr()
    server.start()
    reconnects = plugin.stderr().count("connected to 127.0.0.1")
    feed_until(lambda: plugin.stderr().count("connected to 127.0.0.1") > reconnects,
               "the plugin back at the server")
    after = sent + 500
    feed_until(lambda: max(server.markers(), default=0) >= after,
               "records sent after the outage at the server")
    assert plugin.finish(60) == 0, plugin.stderr()
    server.stop()
    found = server.markers()
    missing = set(range(sent)) - set(found)
    twice = {n for n, count in found.items() if count > 1}
    assert not missing and not twice, (len(missing), sorted(twice)[:20], plugin.stderr())
    assert os.path.getsize(tmp_path / "queue") == 32


@needs_c_auditd
def test_forward_mode_loses_nothing_when_the_plugin_is_killed(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    server = CServer(tmp_path / "server", free_port())
    cleanup.append(server)
    server.start()
    conf = write_conf(
        tmp_path / "r.conf", port=server.port, mode="forward", queue_file=tmp_path / "queue",
        queue_depth=200000,
    )
    first = Plugin(conf, tmp_path / "first.err")
    cleanup.append(first)
    total = 100_000
    writer = threading.Thread(target=first.send, args=([record(n) for n in range(total)],))
    writer.start()
    writer.join(60)
    # A record counts as received once it is written to the queue file: from then on a
    # SIGKILL cannot lose it.
    wait_for(lambda: first.state()["received"] == str(total), 30, "every record queued",
             interval=0.2)
    wait_for(lambda: len(server.markers()) > 1000, 20)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    delivered_before = len(server.markers())
    assert delivered_before < total, "the plugin finished before it could be killed"
    second = Plugin(conf, tmp_path / "second.err")
    cleanup.append(second)
    second.send(record(n) for n in range(total, total + 1000))
    assert second.finish(120) == 0, second.stderr()
    assert "will be sent first" in second.stderr()
    server.stop()
    found = server.markers()
    assert set(found) == set(range(total + 1000))
    twice = [n for n, count in found.items() if count > 1]
    assert len(twice) <= delivery.WINDOW, len(twice)
    print(f"killed after {delivered_before} of {total}; {len(twice)} duplicates")


# --------------------------------------------------------------------------------------
# Against fake servers: replies, failures and hostile peers


def run_plugin(tmp_path: Path, cleanup: list[Any], port: int, **keys: object) -> Plugin:
    conf = write_conf(tmp_path / "r.conf", port=port, **keys)
    plugin = Plugin(conf, tmp_path / "plugin.err")
    cleanup.append(plugin)
    return plugin


def refuse_while(
    reply_type: int, text: bytes, count: int
) -> Callable[[FakeServer, int, rp.Frame], Reply]:
    """Refuse every record on the first `count` connections, then store and ack."""

    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if conn < count and frame.msg_type == rp.TYPE_MESSAGE:
            return [rp.pack_frame(reply_type, frame.seq, text)]
        return FakeServer.store_and_ack(server, conn, frame)

    return policy


def test_disk_full_warn_once_keeps_the_record(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer(refuse_while(rp.TYPE_DISKFULL, b"disk full", 2))
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, disk_full_action="warn_once")
    plugin.send(record(n) for n in range(50))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(50))
    err = plugin.stderr()
    assert err.count("did not store a record: DISKFULL (disk full)") == 1, err
    assert server.connections >= 3


def test_disk_error_syslog_drops_the_refused_record(tmp_path: Path, cleanup: list[Any]) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if frame.msg_type == rp.TYPE_MESSAGE and b"marker-0'" in frame.payload:
            return [rp.pack_frame(rp.TYPE_DISKERROR, frame.seq, b"disk write error")]
        return FakeServer.store_and_ack(server, conn, frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, disk_error_action="syslog")
    plugin.send(record(n) for n in range(20))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(1, 20))
    assert "a record was dropped (disk_error_action)" in plugin.stderr()


def test_generic_error_and_warning_replies(tmp_path: Path, cleanup: list[Any]) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if frame.msg_type == rp.TYPE_MESSAGE and b"marker-0'" in frame.payload and conn == 0:
            return [rp.pack_frame(0x60000003, frame.seq, b"quota\nexceeded")]
        if frame.msg_type == rp.TYPE_MESSAGE and b"marker-1'" in frame.payload:
            server.stored.append(frame.payload)
            return [rp.pack_frame(0x50000009, frame.seq, b"nearly")]
        return FakeServer.store_and_ack(server, conn, frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, generic_error_action="warn_once")
    plugin.send(record(n) for n in range(5))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(5))
    err = plugin.stderr()
    assert "ERROR(0x60000003) (quota?exceeded)" in err
    assert "reports WARNING(0x50000009) (nearly)" in err


def test_disk_low_runs_the_exec_helper(tmp_path: Path, cleanup: list[Any]) -> None:
    out = tmp_path / "helper.out"
    helper = tmp_path / "helper.sh"
    helper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {out}\n')
    os.chmod(helper, 0o755)

    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if frame.msg_type == rp.TYPE_MESSAGE:
            server.stored.append(frame.payload)
            return [rp.pack_frame(rp.TYPE_DISKLOW, frame.seq)]
        return ack(frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, disk_low_action=f"exec {helper}")
    plugin.send([record(0)])
    wait_for(lambda: out.exists() and "DISKLOW" in out.read_text(), 10, context=plugin.stderr)
    assert plugin.finish(30) == 0
    assert lines_stored(server) == collections.Counter([0])


def test_ending_reconnects_and_delivers_the_rest(tmp_path: Path, cleanup: list[Any]) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if conn == 0 and len(server.stored) >= 5:
            if server.state.get("ended"):
                return CLOSE
            server.state["ended"] = True
            return [rp.pack_frame(rp.TYPE_ENDING, 0)]
        return FakeServer.store_and_ack(server, conn, frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port)
    plugin.send(record(n) for n in range(40))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(40))
    err = plugin.stderr()
    assert "ended the connection; will reconnect" in err
    assert server.connections >= 2


def test_ending_with_stop_exits_1(tmp_path: Path, cleanup: list[Any]) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        return [rp.pack_frame(rp.TYPE_ENDING, 0)]

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, remote_ending_action="stop")
    plugin.send([record(0)])
    assert plugin.proc.wait(20) == 1
    assert "(remote_ending_action = stop)" in plugin.stderr()


def test_close_mid_frame_then_recover(tmp_path: Path, cleanup: list[Any]) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if conn > 0:
            return FakeServer.store_and_ack(server, conn, frame)
        if server.state.get("answered"):
            return CLOSE
        server.state["answered"] = True
        return [rp.pack_frame(rp.TYPE_ACK, frame.seq)[:9]]

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port)
    plugin.send(record(n) for n in range(3))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(3))
    assert "closed the connection in the middle of a frame" in plugin.stderr()


def test_a_server_that_never_answers(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer(lambda server, conn, frame: [])
    cleanup.append(server)
    plugin = run_plugin(
        tmp_path, cleanup, server.port, max_time_per_record=1, max_tries_per_record=2,
        network_failure_action="stop",
    )
    started = time.monotonic()
    plugin.send([record(0)])
    assert plugin.proc.wait(20) == 1
    assert time.monotonic() - started < 10
    err = plugin.stderr()
    assert f"no reply from 127.0.0.1:{server.port} for a record within 1 s" in err
    assert "(network_failure_action = stop)" in err


def test_retries_count_from_the_record_not_from_the_connection(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if not server.stored:
            return FakeServer.store_and_ack(server, conn, frame)
        server.listener.close()  # the server goes away: later connects are refused
        return CLOSE

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, max_time_per_record=2,
                        network_failure_action="stop")
    plugin.send([record(0)])
    wait_for(lambda: len(server.stored) == 1, 10)
    # What is tested is time passing on a healthy, idle connection, longer than
    # max_time_per_record, which must then count from record 1, not from the connection.
    # Nothing in the plugin shows idle time, so this sleeps.
    time.sleep(2.5)
    plugin.send([record(1)])
    assert plugin.proc.wait(20) == 1
    err = plugin.stderr()
    assert "closed the connection with 1 replies outstanding" in err
    assert "cannot deliver a record to 127.0.0.1" in err and "after 3 tries" in err, err


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "bad magic 48545450"),
        (rp.HEADER.pack(rp.MAGIC, 0, 0, rp.TYPE_ACK, 0xFFFF, 1),
         "frame length 65535 exceeds the maximum 8970"),
        (rp.HEADER.pack(rp.MAGIC, 7, 0, rp.TYPE_ACK, 0, 1), "unsupported header version 7"),
        (rp.pack_frame(rp.TYPE_MESSAGE, 1, b"hi"), "sent MESSAGE frame instead of a reply"),
        (rp.pack_frame(rp.TYPE_ACK, 999), "lost sync"),
    ],
)
def test_hostile_replies_close_the_connection(
    tmp_path: Path, cleanup: list[Any], reply: bytes, reason: str
) -> None:
    def policy(server: FakeServer, conn: int, frame: rp.Frame) -> Reply:
        if conn == 0:
            return [reply]
        return FakeServer.store_and_ack(server, conn, frame)

    server = FakeServer(policy)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port)
    plugin.send(record(n) for n in range(3))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(3))
    err = plugin.stderr()
    line = next(line for line in err.splitlines() if reason in line)
    assert f"127.0.0.1:{server.port}" in line, err


def test_heartbeats_while_idle(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer()
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, heartbeat_timeout=1)
    plugin.send([record(0)])
    wait_for(lambda: server.heartbeats() >= 2, 10, context=plugin.stderr)
    plugin.send([record(1)])
    assert plugin.finish(30) == 0
    assert server.connections == 1
    assert lines_stored(server) == collections.Counter([0, 1])


def test_suspend_state_report_and_resume(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer(refuse_while(rp.TYPE_DISKFULL, b"disk full", 1))
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, disk_full_action="suspend")
    plugin.send(record(n) for n in range(10))
    plugin.wait_log("suspending remote logging")
    state = plugin.state()
    assert (state["suspended"], state["queue_size"], state["connected"]) == ("yes", "10", "no")
    # Its own state, asked again, shows it holds everything and stays away from the server.
    assert plugin.state() == state
    assert server.stored == []
    plugin.signal(signal.SIGUSR2)
    wait_for(lambda: len(server.stored) == 10, 10, context=plugin.stderr)
    assert plugin.finish(30) == 0


def test_sighup_rereads_the_config(tmp_path: Path, cleanup: list[Any]) -> None:
    first, second = FakeServer(), FakeServer()
    cleanup.extend([first, second])
    plugin = run_plugin(tmp_path, cleanup, first.port)
    plugin.send([record(0)])
    wait_for(lambda: len(first.stored) == 1, 10, context=plugin.stderr)
    (tmp_path / "r.conf").write_text("remote_server = 127.0.0.1\nport = nonsense\n")
    plugin.signal(signal.SIGHUP)
    plugin.wait_log("configuration refused")
    write_conf(tmp_path / "r.conf", port=second.port)
    plugin.signal(signal.SIGHUP)
    plugin.wait_log(f"configuration reloaded; server 127.0.0.1:{second.port}")
    plugin.send([record(1)])
    assert plugin.finish(30) == 0, plugin.stderr()
    assert (lines_stored(first), lines_stored(second)) == (
        collections.Counter([0]), collections.Counter([1]))


def test_sigterm_keeps_the_forward_queue_for_the_next_start(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    port = free_port()  # nobody listens yet
    plugin = run_plugin(tmp_path, cleanup, port, mode="forward", queue_file=tmp_path / "q")
    plugin.send(record(n) for n in range(100))
    plugin.wait_log("cannot connect")
    wait_for(lambda: plugin.state()["received"] == "100", what="the 100 records queued")
    plugin.signal(signal.SIGTERM)
    assert plugin.proc.wait(10) == 0
    assert "100 records kept in" in plugin.stderr()
    server = FakeServer()
    cleanup.append(server)
    again = Plugin(write_conf(tmp_path / "r2.conf", port=server.port, mode="forward",
                              queue_file=tmp_path / "q"), tmp_path / "again.err")
    cleanup.append(again)
    assert again.finish(30) == 0, again.stderr()
    assert lines_stored(server) == collections.Counter(range(100))


def test_eof_in_immediate_mode_with_no_server_exits_1(tmp_path: Path, cleanup: list[Any]) -> None:
    plugin = run_plugin(tmp_path, cleanup, free_port(), max_time_per_record=1,
                        max_tries_per_record=1, network_retry_time=1)
    plugin.send([record(0)])
    assert plugin.finish(30) == 1
    err = plugin.stderr()
    assert "cannot connect to 127.0.0.1" in err
    assert "1 records could not be delivered" in err


def test_overflow_drops_and_says_so(tmp_path: Path, cleanup: list[Any]) -> None:
    plugin = run_plugin(tmp_path, cleanup, free_port(), queue_depth=5)
    plugin.send(record(n) for n in range(50))
    plugin.wait_log("queue is full (5 records); 45 records dropped")
    plugin.signal(signal.SIGTERM)
    assert plugin.proc.wait(10) == 0


def test_local_port(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer()
    cleanup.append(server)
    local = free_port()
    plugin = run_plugin(tmp_path, cleanup, server.port, local_port=local)
    plugin.send([record(0)])
    assert plugin.finish(30) == 0, plugin.stderr()
    assert server.peer_ports == [local]


def test_actions_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "calls"
    helper = tmp_path / "helper.sh"
    helper.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$0" "$1" >> {out}\n')
    os.chmod(helper, 0o755)
    monkeypatch.setattr(ar, "INIT_PATH", str(helper))  # never the real init
    conf = write_conf(tmp_path / "r.conf", disk_low_action=f"exec {helper}")
    messages: list[str] = []
    plugin = ar.RemotePlugin(str(conf), rc.load_remote_conf(str(conf)),
                             lambda _p, m: messages.append(m))

    async def scenario() -> None:
        def act(kind: str) -> bool:
            plugin.core.config = structs.replace(plugin.config,
                                                     disk_full_action=rc.Action(kind))
            return plugin.act("disk_full_action", f"test {kind}")

        assert act("ignore") and not messages
        assert act("syslog") and messages[-1] == "test syslog"
        assert not act("warn_once") and not act("warn_once")
        assert sum("test warn_once" in m for m in messages) == 1
        plugin.core.policy.forget_warnings()  # as after a delivered record
        assert act("warn_once_continue") and act("warn_once_continue")
        assert sum("test warn_once_continue" in m for m in messages) == 1
        assert not act("reconnect")
        assert not act("suspend") and plugin.suspended
        plugin._feed(plugin.core.resume)
        assert not act("single") and plugin.suspended
        assert not act("halt")
        assert plugin.act("disk_low_action", "low")
        assert not act("stop") and plugin.exit_code == 1
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3)
        # the loop reaps the helpers through their pidfds
        await wait_for_async(lambda: not plugin._children, what="the helpers reaped")

    evloop.run(scenario())
    assert sorted(line.split("|")[1] for line in out.read_text().splitlines()) == [
        "0", "1", "low"]


def test_binary_input_and_eoe(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer()
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port)
    data = b"".join([
        wire.frame(wire.PROTOCOL_V0, 1005, b"audit(1.0:1): msg='text=marker-0'"),
        wire.frame(wire.PROTOCOL_V0, 1320, b"audit(1.0:1): "),
        wire.frame(wire.PROTOCOL_V1, 1005, record(1).encode()),
        wire.frame(wire.PROTOCOL_V1, 1320, b"node=h1 type=EOE msg=audit(1.0:2): "),
    ])
    plugin.send_bytes(data)
    assert plugin.finish(30) == 0, plugin.stderr()
    assert server.stored == [b"type=USER msg=audit(1.0:1): msg='text=marker-0'",
                             record(1).encode()]


def test_ascii_format(tmp_path: Path, cleanup: list[Any]) -> None:
    server = FakeServer(ascii_lines=True)
    cleanup.append(server)
    plugin = run_plugin(tmp_path, cleanup, server.port, format="ascii")
    plugin.send(record(n) for n in range(100))
    assert plugin.finish(30) == 0, plugin.stderr()
    wait_for(lambda: bytes(server.state.get("ascii", b"")).count(b"\n") == 100, 5)
    lines = bytes(server.state["ascii"]).splitlines()
    assert markers(lines) == collections.Counter(range(100))


def test_regular_file_on_stdin_is_read_as_the_queue_drains(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    server = FakeServer()
    cleanup.append(server)
    source = tmp_path / "records.txt"
    source.write_text("".join(record(n) + "\n" for n in range(3000)))
    with open(source, "rb") as stdin:
        plugin = Plugin(write_conf(tmp_path / "r.conf", port=server.port, queue_depth=100),
                        tmp_path / "p.err", stdin=stdin)
    cleanup.append(plugin)
    assert plugin.proc.wait(60) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(3000))


# --------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    make_pki(directory)
    return {"ca": directory / "ca.pem", "other_ca": directory / "other-ca.pem",
            "server_key": directory / "server.key", "server_cert": directory / "server.pem",
            "client_key": directory / "client.key", "client_cert": directory / "client.pem"}


def tls_server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server_cert"], pki["server_key"])
    context.load_verify_locations(pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_tls_delivers_with_a_client_certificate(
    tmp_path: Path, cleanup: list[Any], pki: dict[str, Path]
) -> None:
    server = FakeServer(tls=tls_server_context(pki))
    cleanup.append(server)
    plugin = run_plugin(
        tmp_path, cleanup, server.port, transport="tls", tls_ca_file=pki["ca"],
        tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"],
    )
    plugin.send(record(n) for n in range(500))
    assert plugin.finish(30) == 0, plugin.stderr()
    assert lines_stored(server) == collections.Counter(range(500))
    assert server.client_names == ["client"]


def test_tls_with_the_wrong_ca_refuses_to_send(
    tmp_path: Path, cleanup: list[Any], pki: dict[str, Path]
) -> None:
    server = FakeServer(tls=tls_server_context(pki))
    cleanup.append(server)
    plugin = run_plugin(
        tmp_path, cleanup, server.port, transport="tls", tls_ca_file=pki["other_ca"],
        tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"],
        max_tries_per_record=1, network_failure_action="stop",
    )
    plugin.send([record(0)])
    assert plugin.proc.wait(20) == 1
    assert server.stored == []
    err = plugin.stderr()
    assert re.search(rf"cannot connect to 127.0.0.1:{server.port}: TLS certificate "
                     r"verification failed: \S.*certificate", err), err


def test_tls_server_name_must_match(
    tmp_path: Path, cleanup: list[Any], pki: dict[str, Path]
) -> None:
    server = FakeServer(tls=tls_server_context(pki))
    cleanup.append(server)
    plugin = run_plugin(
        tmp_path, cleanup, server.port, transport="tls", tls_ca_file=pki["ca"],
        tls_cert_file=pki["client_cert"], tls_key_file=pki["client_key"],
        tls_server_name="logs.example", max_tries_per_record=1,
        network_failure_action="stop",
    )
    plugin.send([record(0)])
    assert plugin.proc.wait(20) == 1
    assert "Hostname mismatch" in plugin.stderr() or "doesn't match" in plugin.stderr()
    assert server.stored == []

