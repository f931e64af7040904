"""pyauditd as a network log server, end to end with real processes: Debian's audisp-remote
as the client, ausearch on the result, a full disk, hostile peers, TLS, the dispatcher,
reloads, and the fan-in benchmark on a tiny workload.

Every daemon here runs with ``local_events = no`` (and pyauditd with ``-s nochange``): none
registers with the kernel's audit system, so these tests never touch its state.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from auditpy.proto.remote import (
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    TYPE_ACK,
    TYPE_DISKERROR,
    TYPE_DISKFULL,
    TYPE_DISKLOW,
    TYPE_ENDING,
    TYPE_HEARTBEAT,
    TYPE_MESSAGE,
    Frame,
    FrameReader,
    pack_frame,
)

from .audispd_support import install
from .conftest import (
    free_port,
    listening,
    make_pki,
    needs,
    remote_plugin_state,
    wait_for,
)

AUDISP_REMOTE = "/sbin/audisp-remote"
REMOTE_CONF = "/etc/audit/audisp-remote.conf"
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: the daemons refuse to run otherwise")


def user_line(node: str, n: int, text: str = "marker") -> bytes:
    return (f"node={node} type=USER msg=audit(1700000000.123:{n}): pid=1 uid=0 auid=0 ses=1 "
            f"msg='text={text}-{n}'").encode()


class Server:
    """One pyauditd (or C auditd) in a directory of its own; stderr goes to a file."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port if port is not None else free_port()
        self.conf_dir = root / "etc"
        self.log_dir = root / "log"
        self.run_dir = root / "run"
        for d in (self.conf_dir, self.conf_dir / "plugins.d", self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log_dir.chmod(0o700)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / "audit.log"

    def write_config(self, extra: str = "", listen: bool = True, **overrides: str) -> None:
        settings = {
            "local_events": "no",
            "log_file": str(self.log),
            "log_format": "RAW",
            "flush": "INCREMENTAL_ASYNC",
            "freq": "20",
            "space_left": "2",
            "admin_space_left": "1",
            "space_left_action": "IGNORE",
            "admin_space_left_action": "IGNORE",
            "disk_full_action": "SUSPEND",
            "disk_error_action": "SUSPEND",
            "priority_boost": "0",
            "plugin_dir": str(self.conf_dir / "plugins.d"),
            "use_libwrap": "no",
            # above 1: the readiness probe's connection may not be gone yet
            "tcp_max_per_addr": "8",
        }
        if listen:
            settings["tcp_listen_port"] = str(self.port)
        settings.update(overrides)
        path = self.conf_dir / "auditd.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()) + extra)
        path.chmod(0o640)

    def start(self, wrapper: list[str] | None = None, c_daemon: bool = False,
              wait: bool = True) -> None:
        # Never a daemon that would register with the kernel: no config, no start.
        conf = self.conf_dir / "auditd.conf"
        assert conf.exists() and "local_events = no\n" in conf.read_text()
        if c_daemon:
            argv = ["/sbin/auditd", "-n", "-c", str(self.conf_dir)]
        else:
            argv = [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
                    str(self.conf_dir), "--run-dir", str(self.run_dir)]
        with open(self.root / "daemon.err", "ab") as errors:
            self.proc = subprocess.Popen([*(wrapper or []), *argv], stderr=errors,
                                         stdout=subprocess.DEVNULL)
        if wait:
            wait_for(lambda: listening(self.port) or self.proc.poll() is not None,
                     what=f"the server listening on port {self.port}", context=self.stderr)
            assert self.proc.poll() is None, self.stderr()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stderr(self) -> str:
        path = self.root / "daemon.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def lines(self, path: Path | None = None) -> list[str]:
        target = path or self.log
        if not target.exists():
            return []
        return target.read_bytes().decode("utf-8", "replace").split("\n")[:-1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "server")
    try:
        yield srv
    finally:
        srv.stop()


class Client:
    """A blocking managed-format client (the source address and port may be chosen)."""

    def __init__(self, port: int, source: tuple[str, int] = ("127.0.0.1", 0),
                 wrap: Callable[[socket.socket], socket.socket] | None = None) -> None:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.bind(source)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        host, port_ = raw.getsockname()[:2]
        self.name = f"{host}:{port_}"
        self.sock = wrap(raw) if wrap else raw
        self.reader = FrameReader()
        self.pending: list[Frame] = []

    def reply(self) -> Frame:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def roundtrip(self, msg_type: int, seq: int, payload: bytes = b"") -> Frame:
        self.sock.sendall(pack_frame(msg_type, seq, payload))
        return self.reply()

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


def low_port_client(port: int, ip: str = "127.0.0.1") -> Client:
    """A client from a privileged source port (tcp_client_ports = 1-1023)."""
    for source_port in range(1023, 600, -1):
        try:
            return Client(port, (ip, source_port))
        except OSError:
            continue
    raise RuntimeError("no free source port below 1024")


# --------------------------------------------------------------------------------------
# (1) Debian's audisp-remote delivers 10,000 records


@needs(AUDISP_REMOTE, "unshare", "mount", "ausearch")
def test_audisp_remote_delivers_10000_records(server: Server, tmp_path: Path) -> None:
    server.write_config()
    server.start()
    remote_conf = tmp_path / "audisp-remote.conf"
    remote_conf.write_text(
        f"remote_server = 127.0.0.1\nport = {server.port}\ntransport = tcp\n"
        "mode = immediate\nqueue_depth = 20000\nformat = managed\nnetwork_retry_time = 1\n"
        "max_tries_per_record = 5\nmax_time_per_record = 10\nheartbeat_timeout = 0\n"
        "network_failure_action = syslog\ndisk_low_action = ignore\n"
        "disk_full_action = warn_once\ndisk_error_action = warn_once\n"
        "remote_ending_action = reconnect\ngeneric_error_action = syslog\n"
        "generic_warning_action = syslog\noverflow_action = syslog\n"
        "startup_failure_action = warn_once_continue\n"
    )
    remote_conf.chmod(0o640)
    # audisp-remote reads only /etc/audit/audisp-remote.conf: ours is bound over it in a
    # mount namespace of the client's own, so the host's file is untouched.
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount --bind "{remote_conf}" {REMOTE_CONF} && exec {AUDISP_REMOTE}']
    count = 10_000
    with open(tmp_path / "remote.err", "wb") as errors:
        client = subprocess.Popen(wrapper, stdin=subprocess.PIPE, stderr=errors)
    try:
        assert client.stdin is not None
        client.stdin.write(b"".join(user_line("client1", n) + b"\n"
                                    for n in range(1, count + 1)))
        client.stdin.close()
        client.wait(180)  # stdin is a pipe: it sends everything it queued, then exits
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    def delivered() -> list[str]:
        return [ln for ln in server.lines() if "text=marker-" in ln]

    wait_for(lambda: len(delivered()) >= count, 30, context=lambda: server.stderr()[-2000:])
    lines = delivered()
    numbers = [int(re.search(r"text=marker-(\d+)", ln).group(1)) for ln in lines]  # type: ignore[union-attr]
    assert sorted(numbers) == list(range(1, count + 1))  # every one, exactly once
    assert all(ln == user_line("client1", n).decode() for ln, n in zip(lines, numbers,
                                                                        strict=True))
    accepted = [ln for ln in server.lines() if "type=DAEMON_ACCEPT" in ln]
    assert accepted and "res=success" in accepted[0]
    found = subprocess.run(["ausearch", "-if", str(server.log), "-m", "USER", "--node",
                            "client1"], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert len(re.findall(r"text=marker-\d+", found.stdout)) == count
    assert server.stop() == 0


# --------------------------------------------------------------------------------------
# (2) A full disk is reported back to the client


@needs("unshare", "mount")
def test_full_disk_is_reported_with_diskfull(server: Server) -> None:
    server.write_config()
    # The log directory is a 64 KiB tmpfs mounted in the daemon's own mount namespace.
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs -o size=64k,mode=0700 auditpy-test "$0" && exec "$@"',
               str(server.log_dir)]
    server.start(wrapper=wrapper)
    assert server.proc is not None
    client = Client(server.port)
    seen: list[tuple[int, bytes]] = []
    answered: dict[int, int] = {}
    for n in range(1, 5000):
        reply = client.roundtrip(TYPE_MESSAGE, n, user_line("full", n))
        assert reply.seq == n
        answered[n] = reply.msg_type
        if not seen or seen[-1][0] != reply.msg_type:
            seen.append((reply.msg_type, reply.payload))
        if reply.msg_type == TYPE_DISKERROR:
            break
    kinds = [kind for kind, _ in seen]
    # below space_left (2 MiB) from the start, then ENOSPC, then suspended
    assert kinds == [TYPE_DISKLOW, TYPE_DISKFULL, TYPE_DISKERROR], seen
    assert dict(seen)[TYPE_DISKFULL] == b"disk full"
    assert dict(seen)[TYPE_DISKERROR] == b"remote logging suspended"
    assert client.roundtrip(TYPE_HEARTBEAT, 99999).msg_type == TYPE_ACK
    # Everything acknowledged as written is in the log (seen through the daemon's namespace).
    log = Path(f"/proc/{server.proc.pid}/root") / str(server.log).lstrip("/")
    written = {int(m) for m in re.findall(r"text=marker-(\d+)'\n", log.read_text())}
    stored = {n for n, kind in answered.items() if kind in (TYPE_ACK, TYPE_DISKLOW)}
    assert stored and stored <= written
    assert "suspending logging due to no space left" in server.stderr().lower() or \
        "no space" in server.stderr().lower()
    client.close()


# --------------------------------------------------------------------------------------
# (3) Hostile peers: each closes only its own connection, with a log line naming it


def test_hostile_peers(server: Server) -> None:
    server.write_config(tcp_client_ports="1-1023", tcp_max_per_addr="4")
    server.start()
    good = low_port_client(server.port)
    assert good.roundtrip(TYPE_MESSAGE, 1, user_line("good", 1)).msg_type == TYPE_ACK

    bad_magic = low_port_client(server.port, "127.0.0.2")
    bad_magic.sock.sendall(b"type=USER msg=plain ascii line\n")
    oversized = low_port_client(server.port, "127.0.0.3")
    oversized.sock.sendall(HEADER.pack(MAGIC, 0, 0, TYPE_MESSAGE, MAX_PAYLOAD + 1, 7))
    stalled = low_port_client(server.port, "127.0.0.4")
    stalled.sock.sendall(pack_frame(TYPE_MESSAGE, 8, user_line("stall", 8))[:25])
    wrong_port = Client(server.port, ("127.0.0.5", 0))  # an unprivileged source port
    flood = []
    for _ in range(8):
        try:
            flood.append(low_port_client(server.port, "127.0.0.6"))
        except OSError:
            break
    expected = {
        bad_magic.name: "bad magic",
        oversized.name: "exceeds the maximum",
        stalled.name: "incomplete frame (25 bytes) stalled",
    }
    for hostile in (bad_magic, oversized, wrong_port):
        assert hostile.closed_by_server()
    # The good client is served all along, including while the stalled frame waits (its
    # frame_timeout is 10 s).
    for n in range(2, 40):
        assert good.roundtrip(TYPE_MESSAGE, n, user_line("good", n)).msg_type == TYPE_ACK
    assert "stalled" not in server.stderr()
    assert stalled.closed_by_server(20)
    assert good.roundtrip(TYPE_HEARTBEAT, 100).msg_type == TYPE_ACK

    errors = server.stderr()
    for peer, reason in expected.items():
        line = next((ln for ln in errors.splitlines() if f"client {peer}:" in ln), "")
        assert reason in line and "closing connection" in line, (peer, errors)
    assert re.search(rf"TCP connection from {re.escape(wrong_port.name)} rejected: source "
                     r"port \d+ is outside tcp_client_ports 1-1023", errors)
    assert "too many connections from 127.0.0.6 (tcp_max_per_addr 4)" in errors
    log = "\n".join(server.lines())
    ip, port = wrong_port.name.split(":")
    assert f"op=port addr={ip} port={port} res=no" in log
    assert len(re.findall(r"op=dup addr=127\.0\.0\.6 port=\d+ res=no", log)) == len(flood) - 4
    for hostile in (bad_magic, oversized, stalled):
        ip, port = hostile.name.split(":")
        assert re.search(rf"DAEMON_ACCEPT .*addr={re.escape(ip)} port={port} res=success", log)
        assert re.search(rf"DAEMON_CLOSE .*addr={re.escape(ip)} port={port} res=success", log)
    assert len([ln for ln in server.lines() if ln.startswith("node=good ")]) == 39
    for c in (good, *flood):
        c.close()
    assert server.stop() == 0


# --------------------------------------------------------------------------------------
# (4) TLS


def test_tls_only_clients_with_a_certificate_of_our_ca(server: Server, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    server.write_config(
        f"tls_cert_file = {pki}/server.pem\ntls_key_file = {pki}/server.key\n"
        f"tls_ca_file = {pki}/ca.pem\ntls_verify_client = yes\n",
        transport="TLS",
    )
    server.start()

    def wrapper(cert: str | None) -> Callable[[socket.socket], socket.socket]:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if cert:
            context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
        return lambda raw: context.wrap_socket(raw, server_hostname="localhost")

    good = Client(server.port, wrap=wrapper("client"))
    for n in range(1, 51):
        reply = good.roundtrip(TYPE_MESSAGE, n, user_line("tls", n))
        assert (reply.msg_type, reply.seq) == (TYPE_ACK, n)
    refused = []
    for cert in (None, "rogue"):
        with pytest.raises(OSError):
            bad = Client(server.port, wrap=wrapper(cert))
            refused.append(bad.name)
            bad.roundtrip(TYPE_MESSAGE, 1, user_line("intruder", 1))
    # (the readiness probe is refused too: it closed without a handshake)
    wait_for(lambda: server.stderr().count("TLS handshake failed") == 3, context=server.stderr)
    errors = server.stderr()
    for peer, reason in zip(refused, ("PEER_DID_NOT_RETURN_A_CERTIFICATE",
                                      "CERTIFICATE_VERIFY_FAILED"), strict=True):
        assert f"client {peer}: TLS handshake failed: {reason} - closing connection" in errors
    log = server.lines()
    assert len([ln for ln in log if ln.startswith("node=tls ")]) == 50
    assert not [ln for ln in log if "node=intruder" in ln]
    for peer in refused:
        ip, port = peer.split(":")
        assert f"op=tls addr={ip} port={port} res=no" in "\n".join(log)
    assert "certificate CN=client" in server.stderr()
    good.close()
    assert server.stop() == 0


# --------------------------------------------------------------------------------------
# (5) distribute_network: network records reach the plugins


def test_distribute_network_feeds_the_dispatcher(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "plugin.out"
    program = install("recorder.py", tmp_path / "recorder.py")
    conf = server.conf_dir / "plugins.d" / "recorder.conf"
    conf.write_text(f"active = yes\ndirection = out\npath = {program}\ntype = always\n"
                    f"format = string\nargs = {out}\n")
    conf.chmod(0o640)
    server.write_config(distribute_network="yes")
    server.start()
    client = Client(server.port)
    for n in range(1, 101):
        assert client.roundtrip(TYPE_MESSAGE, n, user_line("dist", n)).msg_type == TYPE_ACK

    def received() -> list[str]:
        text = out.read_text(errors="replace") if out.exists() else ""
        return [ln for ln in text.splitlines() if ln.startswith("node=dist ")]

    wait_for(lambda: len(received()) == 100, context=server.stderr)
    assert received() == [user_line("dist", n).decode() for n in range(1, 101)]
    client.close()
    assert server.stop() == 0


def test_without_distribute_network_plugins_see_no_network_records(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "plugin.out"
    program = install("recorder.py", tmp_path / "recorder.py")
    conf = server.conf_dir / "plugins.d" / "recorder.conf"
    conf.write_text(f"active = yes\ndirection = out\npath = {program}\ntype = always\n"
                    f"format = string\nargs = {out}\n")
    conf.chmod(0o640)
    server.write_config()
    server.start()
    client = Client(server.port)
    assert client.roundtrip(TYPE_MESSAGE, 1, user_line("local", 1)).msg_type == TYPE_ACK
    wait_for(lambda: out.exists() and "DAEMON_ACCEPT" in out.read_text())
    assert "node=local " not in out.read_text()
    client.close()


# --------------------------------------------------------------------------------------
# Reload, shutdown, state report


def test_sighup_turns_the_listener_on_and_moves_it(server: Server) -> None:
    server.write_config(listen=False)
    server.start(wait=False)
    wait_for(lambda: "type=DAEMON_START" in "\n".join(server.lines()))
    assert not listening(server.port)
    server.write_config()
    server.signal(signal.SIGHUP)
    wait_for(lambda: listening(server.port), context=server.stderr)
    client = Client(server.port)
    assert client.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
    # Limits change in place: the client stays connected.
    server.write_config(tcp_max_per_addr="3")
    server.signal(signal.SIGHUP)
    wait_for(lambda: len([ln for ln in server.lines() if "op=reconfigure" in ln]) == 2)
    assert client.roundtrip(TYPE_HEARTBEAT, 2).msg_type == TYPE_ACK
    # A new port restarts the listener: ENDING to the client, the old port closed.
    old_port = server.port
    server.port = free_port()
    server.write_config()
    server.signal(signal.SIGHUP)
    ending = client.reply()
    assert (ending.msg_type, ending.seq) == (TYPE_ENDING, 0)
    wait_for(lambda: listening(server.port))
    assert not listening(old_port)
    moved = Client(server.port)
    assert moved.roundtrip(TYPE_MESSAGE, 3, user_line("moved", 3)).msg_type == TYPE_ACK
    server.signal(signal.SIGCONT)
    state = server.run_dir / "auditd.state"
    wait_for(lambda: state.exists() and "total connections" in state.read_text())
    text = state.read_text()
    assert "listening for network connections = yes" in text
    assert "active connections = 1" in text
    assert "network records received = 1" in text
    # Removing the port stops listening.
    server.write_config(listen=False)
    server.signal(signal.SIGHUP)
    assert moved.reply().msg_type == TYPE_ENDING
    wait_for(lambda: not listening(server.port))
    assert server.stop() == 0


def test_shutdown_sends_ending_then_daemon_end(server: Server) -> None:
    server.write_config()
    server.start()
    clients = [Client(server.port) for _ in range(3)]
    for c in clients:
        assert c.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
    assert server.stop() == 0
    for c in clients:
        ending = c.reply()
        assert (ending.msg_type, ending.seq) == (TYPE_ENDING, 0)
    kinds = [ln.split()[0] for ln in server.lines()]
    # the three clients are closed (ENDING sent) before DAEMON_END, as auditd does
    assert kinds[-4:] == ["type=DAEMON_CLOSE"] * 3 + ["type=DAEMON_END"]


def test_port_in_use_fails_start_with_network_init(server: Server) -> None:
    blocker = socket.socket(socket.AF_INET6)
    blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("::", server.port))
    blocker.listen()
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("0.0.0.0", server.port))
    other.listen()
    try:
        server.write_config()
        server.start(wait=False)
        assert server.proc is not None
        assert server.proc.wait(15) == 1
        assert "op=network-init" in "\n".join(server.lines())
        assert "cannot listen for network connections" in server.stderr()
    finally:
        blocker.close()
        other.close()


# --------------------------------------------------------------------------------------
# The fan-in benchmark runs (tiny workload; no timing is asserted)


@needs("/sbin/auditd")
def test_fanin_benchmark_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fanin.py"), "--clients", "3", "--events", "30",
         "--rounds", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "FANIN.md").read_text()
    assert "| 1 | pyauditd | 90 |" in report and "| 1 | auditd | 90 |" in report
    assert "pyauditd / C" in report
    assert "WARNING" not in result.stderr


# --------------------------------------------------------------------------------------
# Both ends ours: pyaudisp-remote (forward mode) to pyauditd over TLS, across a restart


def test_pyaudisp_remote_to_pyauditd_over_tls_survives_a_server_restart(
    server: Server, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    server.write_config(
        f"tls_cert_file = {pki}/server.pem\ntls_key_file = {pki}/server.key\n"
        f"tls_ca_file = {pki}/ca.pem\ntls_verify_client = yes\n",
        transport="TLS",
    )
    server.start()
    conf = tmp_path / "remote.conf"
    conf.write_text(
        f"remote_server = 127.0.0.1\nport = {server.port}\ntransport = tls\nmode = forward\n"
        f"queue_file = {tmp_path}/queue\nqueue_depth = 20000\nnetwork_retry_time = 1\n"
        f"network_failure_action = syslog\n"
        f"tls_ca_file = {pki}/ca.pem\ntls_cert_file = {pki}/client.pem\n"
        f"tls_key_file = {pki}/client.key\ntls_server_name = localhost\n"
    )
    conf.chmod(0o640)
    with open(tmp_path / "plugin.err", "wb") as errors:
        plugin = subprocess.Popen(
            [sys.executable, "-m", "auditpy.audisp_remote", "-c", str(conf), "--no-syslog"],
            stdin=subprocess.PIPE, stderr=errors,
        )
    assert plugin.stdin is not None
    try:
        for n in range(1, 2001):
            plugin.stdin.write(user_line("tlsfwd", n) + b"\n")
        plugin.stdin.flush()
        wait_for(lambda: sum("node=tlsfwd" in ln for ln in server.lines()) >= 2000, 20)
        assert server.stop() == 0
        for n in range(2001, 4001):  # queued on disk while the server is down
            plugin.stdin.write(user_line("tlsfwd", n) + b"\n")
        plugin.stdin.flush()
        plugin_err = tmp_path / "plugin.err"
        wait_for(lambda: remote_plugin_state(plugin.pid, plugin_err)["received"] == "4000"
                 and "cannot connect" in plugin_err.read_text(), 30,
                 "all 4000 records queued, and the server found gone", interval=0.2)
        server.start()
        wait_for(lambda: sum("node=tlsfwd" in ln for ln in server.lines()) >= 4000, 30,
                 context=lambda: plugin_err.read_text()[-2000:])
        plugin.stdin.close()
        assert plugin.wait(30) == 0
    finally:
        if plugin.poll() is None:
            plugin.kill()
            plugin.wait()
    seen = [int(m.group(1)) for ln in server.lines()
            if (m := re.search(r"text=marker-(\d+)'", ln)) and "node=tlsfwd" in ln]
    assert sorted(set(seen)) == list(range(1, 4001))  # nothing lost
    assert len(seen) - 4000 <= 128  # at-least-once: at most one in-flight window again
