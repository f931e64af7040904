#!/usr/bin/env python3
"""Fan-in benchmark: many remote clients logging to one server, pyauditd against the C auditd.

N simulated audisp-remote clients (default 20) connect over loopback and send records in the
managed format as fast as they can, each waiting for the ACK of one record before sending the
next -- what audisp-remote does.  The server is pyauditd, the C auditd, with the same
auditd.conf (``local_events = no``: neither registers with the kernel; a pure network log
server), the limit (bench/limit_server.c: a C server that ACKs every frame and writes
nothing) and the Python floors (bench/pyfloor_server.py: the same in Python, without and
with the log write), several rounds rotating which goes first.  Reported per server:
events/s (wall clock, all clients) and the server's CPU seconds, split into user and system
time, with pyauditd's ratios to the C auditd, the limit and the Python floor that writes,
and a check that every record reached the log exactly once.

The clients are driven from one process with non-blocking sockets (several on a big
machine), so that on a small machine they leave the CPU to the server rather than compete
with it through twenty Python processes.

Run as root (the daemons insist), from the repository:

    python3 bench/fanin.py [--clients 20] [--events 5000] [--rounds 3] [--out bench/results]

Writes FANIN.md into --out.  Nothing outside a temporary directory is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from auditpy.proto.remote import HEADER, MAGIC, TYPE_ACK, TYPE_MESSAGE

HERE = Path(__file__).resolve().parent
C_AUDITD = "/sbin/auditd"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The limit: bench/limit_server.c, a C server that ACKs every frame and writes nothing. The
#: Python floors: bench/pyfloor_server.py, the same in Python, and the same writing the
#: records to a log (one write per wakeup) before it answers, as pyauditd does.
SERVERS = ("pyauditd", "auditd", "limit", "pyfloor", "pyfloor-log")
#: The daemons' freq (flush = INCREMENTAL_ASYNC), and how often pyfloor-log fdatasyncs.
FREQ = 50
#: Servers that write no log: they print "frames N" at exit.
NO_LOG = ("limit", "pyfloor")


@dataclass
class Round:
    server: str
    round_no: int
    events: int
    seconds: float
    cpu: float
    logged: int
    version: str
    #: of cpu, the seconds spent in the kernel (system calls, loopback TCP)
    system: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.events * 1e6 if self.events else 0.0

    @property
    def user_us(self) -> float:
        return (self.cpu - self.system) / self.events * 1e6 if self.events else 0.0

    @property
    def system_us(self) -> float:
        return self.system / self.events * 1e6 if self.events else 0.0


# --------------------------------------------------------------------------------------
# Clients


def record(round_no: int, client: int, seq: int) -> bytes:
    return (
        f"node=fanin{client} type=USER msg=audit(1700000000.123:{seq}): pid=1 uid=0 auid=0 "
        f"ses=1 msg='text=fanin-{round_no}-{client}-{seq}'"
    ).encode()


def drive(
    port: int,
    first: int,
    count: int,
    events: int,
    round_no: int,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[object],
) -> None:
    """Run clients first..first+count-1 from one process: each has one record in flight."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    ready.wait()
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    state: dict[int, list[object]] = {}
    pack = HEADER.pack
    for n, sock in enumerate(socks):
        client = first + n
        sock.setblocking(False)
        payload = record(round_no, client, 1)
        sock.send(pack(MAGIC, 0, 0, TYPE_MESSAGE, len(payload), 1) + payload)
        state[sock.fileno()] = [sock, client, 1, bytearray()]
        selector.register(sock, selectors.EVENT_READ)
    running = count
    errors = 0
    while running:
        for key, _ in selector.select():
            entry = state[key.fd]
            sock, client, seq, buf = entry  # type: ignore[misc]
            data = sock.recv(4096)
            if not data:
                errors += 1
                selector.unregister(sock)
                running -= 1
                continue
            buf += data
            if len(buf) < 16:
                continue
            _m, _h, _v, kind, length, got = HEADER.unpack_from(buf)
            if len(buf) < 16 + length:
                continue
            del buf[: 16 + length]
            if kind != TYPE_ACK or got != seq:
                errors += 1
            if seq >= events:
                selector.unregister(sock)
                running -= 1
                continue
            seq += 1
            entry[2] = seq
            payload = record(round_no, client, seq)
            sock.send(pack(MAGIC, 0, 0, TYPE_MESSAGE, len(payload), seq) + payload)
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    results.put((elapsed, errors))


# --------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, port: int, clients: int) -> Path:
    conf_dir = root / "etc"
    for sub in (conf_dir, conf_dir / "plugins.d", root / "log", root / "run"):
        sub.mkdir(parents=True, exist_ok=True)
    (root / "log").chmod(0o700)
    text = "".join(f"{k} = {v}\n" for k, v in {
        "local_events": "no",
        "log_file": root / "log" / "audit.log",
        "log_format": "RAW",
        "flush": "INCREMENTAL_ASYNC",
        "freq": str(FREQ),
        "max_log_file": "0",
        "space_left": "2",
        "admin_space_left": "1",
        "disk_full_action": "SUSPEND",
        "disk_error_action": "SUSPEND",
        "priority_boost": "0",
        "plugin_dir": conf_dir / "plugins.d",
        "tcp_listen_port": port,
        "tcp_listen_queue": max(5, clients + 5),
        "tcp_max_per_addr": min(1024, clients + 1),
        "use_libwrap": "no",
    }.items())
    path = conf_dir / "auditd.conf"
    path.write_text(text)
    path.chmod(0o640)
    os.chown(path, 0, 0)
    return conf_dir


def build_limit_server(build: Path) -> Path:
    binary = build / "limit_server"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "limit_server.c")],
                   check=True)
    return binary


def start_server(kind: str, root: Path, conf_dir: Path, port: int,
                 limit_server: Path | None = None) -> subprocess.Popen[bytes]:
    if kind == "pyauditd":
        argv = [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
                str(conf_dir), "--run-dir", str(root / "run")]
    elif kind == "limit":
        assert limit_server is not None
        argv = [str(limit_server), str(port)]
    elif kind in ("pyfloor", "pyfloor-log"):
        argv = [sys.executable, str(HERE / "pyfloor_server.py"), str(port)]
        if kind == "pyfloor-log":
            argv += ["--log", str(root / "log" / "audit.log"), "--sync-every", str(FREQ)]
    else:
        argv = [C_AUDITD, "-n", "-c", str(conf_dir)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    # the limit server says at exit how many frames it received
    with open(root / "server.err", "ab") as errors, \
            open(root / "server.out" if kind in NO_LOG else os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, stderr=errors, stdout=out, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {(root / 'server.err').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(f"{kind} did not start listening on {port}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's (user, system) CPU seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def server_version(kind: str) -> str:
    if kind == "pyauditd":
        from auditpy import AUDIT_VERSION

        return AUDIT_VERSION
    if kind == "limit":
        return "bench/limit_server.c"
    if kind.startswith("pyfloor"):
        return f"bench/pyfloor_server.py (Python {platform.python_version()})"
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "auditd"],
                         capture_output=True, text=True)
    return f"auditd {out.stdout.strip() or '?'}"


def run_round(kind: str, round_no: int, clients: int, events: int, drivers: int,
              limit_server: Path | None = None) -> Round:
    with tempfile.TemporaryDirectory(prefix=f"fanin-{kind}-") as tmp:
        root = Path(tmp)
        port = free_port()
        conf_dir = write_config(root, port, clients)
        proc = start_server(kind, root, conf_dir, port, limit_server)
        try:
            ctx = multiprocessing.get_context("fork")
            ready = ctx.Barrier(drivers + 1)
            results: multiprocessing.Queue[object] = ctx.Queue()
            shares = [clients // drivers + (1 if i < clients % drivers else 0)
                      for i in range(drivers)]
            procs = []
            first = 0
            for share in shares:
                p = ctx.Process(target=drive,
                                args=(port, first, share, events, round_no, ready, results))
                p.start()
                procs.append(p)
                first += share
            ready.wait(60)
            cpu_before = cpu_seconds(proc.pid)
            outcomes = [results.get(timeout=600) for _ in procs]
            cpu_after = cpu_seconds(proc.pid)
            for p in procs:
                p.join(10)
        finally:
            stop_server(proc)
        seconds = max(float(o[0]) for o in outcomes)  # type: ignore[index]
        errors = sum(int(o[1]) for o in outcomes)  # type: ignore[index]
        if errors:
            raise RuntimeError(f"{kind}: {errors} replies were not the expected ACK")
        if kind in NO_LOG:  # it writes nothing: what it received
            out = (root / "server.out").read_text().split()
            logged = int(out[1]) if len(out) == 2 and out[0] == "frames" else 0
        else:
            log_text = (root / "log" / "audit.log").read_bytes()
            logged = log_text.count(f"text=fanin-{round_no}-".encode())
    user, system = (after - before for after, before in zip(cpu_after, cpu_before,
                                                              strict=True))
    return Round(kind, round_no, clients * events, seconds, user + system, logged,
                 server_version(kind), system)


# --------------------------------------------------------------------------------------
# Report


def report(rounds: list[Round], args: argparse.Namespace, command: str) -> str:
    def med(kind: str, attr: str) -> float:
        values = [getattr(r, attr) for r in rounds if r.server == kind]
        return statistics.median(values) if values else float("nan")

    kinds = [k for k in SERVERS if any(r.server == k for r in rounds)]
    lines = [
        "# Fan-in: remote clients to one log server",
        "",
        f"{args.clients} clients on loopback, {args.events} records each per round, every "
        "record waits for its ACK (like audisp-remote); the server has `local_events = no`, "
        "log_format RAW, flush INCREMENTAL_ASYNC (freq 50). Same auditd.conf for both daemons.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}. Command: `{command}`",
        "",
        "| round | server | events | seconds | events/s | server CPU s | CPU µs/event "
        "| user µs/event | system µs/event | in log |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.round_no} | {r.server} | {r.events} | {r.seconds:.2f} | {r.rate:,.0f} | "
            f"{r.cpu:.2f} | {r.cpu_us:.1f} | {r.user_us:.1f} | {r.system_us:.1f} "
            f"| {r.logged} |"
        )
    ratios = [(f"pyauditd / {'C' if k == 'auditd' else k}", k)
              for k in ("auditd", "limit", "pyfloor-log") if k in kinds and "pyauditd" in kinds]
    lines += ["", "Medians:", "",
              "| | " + " | ".join(kinds) + "".join(f" | {label}" for label, _k in ratios) + " |",
              "|---|" + "---|" * (len(kinds) + len(ratios))]
    for label, attr, fmt in (("events/s", "rate", "{:,.0f}"),
                             ("server CPU seconds", "cpu", "{:.2f}"),
                             ("server CPU µs per event", "cpu_us", "{:.1f}"),
                             ("of which user (the process's own code)", "user_us", "{:.1f}"),
                             ("of which system (system calls, loopback TCP)", "system_us",
                              "{:.1f}")):
        cells = [fmt.format(med(k, attr)) for k in kinds]
        for _label, other in ratios:
            value = med(other, attr)
            cells.append(f"{med('pyauditd', attr) / value:.2f}" if value else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    versions = sorted({f"{r.server}: {r.version}" for r in rounds})
    lines += [
        "", "Versions: " + ", ".join(versions) + ".", "",
        "Notes: the clients are driven from one process with non-blocking sockets (one record "
        "in flight per client), so on a small machine they compete little with the server; "
        "\"in log\" counts the round's records found in the server's log after it stopped "
        "(for the limit, the frames it received). The limit is bench/limit_server.c: one C "
        "thread with epoll that ACKs every frame and writes nothing. pyfloor is "
        "bench/pyfloor_server.py, the same in Python (one recv per ready client, its ACKs in "
        "one send once every ready client is read); pyfloor-log also writes the records "
        "to a log with one write per wakeup before it answers, and a second thread "
        f"fsyncs the log every {FREQ} records as the daemons' flush setting asks, at most "
        "one every 10 ms as pyauditd does (the C daemon starts one every time). "
        "pyauditd answers a record once the batch it arrived in has been written with "
        "write(2) (records from all clients that arrive in one loop iteration share one "
        "write); the C daemon answers after fprintf() into its stdio buffer.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--events", type=int, default=5000, help="records per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drivers", type=int, default=0,
                        help="client processes (default: 1 on a machine with <= 4 CPUs)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fanin.py: run as root (the daemons refuse to start otherwise)", file=sys.stderr)
        return 2
    kinds = [k for k in args.servers.split(",") if k]
    if "auditd" in kinds and not shutil.which(C_AUDITD):
        print(f"fanin.py: {C_AUDITD} not found; benchmarking pyauditd only", file=sys.stderr)
        kinds.remove("auditd")
    cpus = os.cpu_count() or 1
    drivers = args.drivers or (1 if cpus <= 4 else min(args.clients, cpus // 2))
    drivers = max(1, min(drivers, args.clients))
    command = "python3 bench/fanin.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rounds: list[Round] = []
    build = Path(tempfile.mkdtemp(prefix="fanin-build-"))
    limit_server = build_limit_server(build) if "limit" in kinds else None
    for round_no in range(1, args.rounds + 1):
        turn = (round_no - 1) % len(kinds)  # each server goes first, second, ... in turn
        for kind in kinds[turn:] + kinds[:turn]:
            result = run_round(kind, round_no, args.clients, args.events, drivers,
                               limit_server)
            rounds.append(result)
            print(f"round {round_no} {kind:8s}: {result.rate:10,.0f} events/s  "
                  f"CPU {result.cpu:6.2f} s  ({result.cpu_us:.1f} µs/event)  "
                  f"logged {result.logged}/{result.events}", flush=True)
            if result.logged != result.events:
                print(f"  WARNING: {kind} logged {result.logged} of {result.events}",
                      file=sys.stderr)
    shutil.rmtree(build, ignore_errors=True)
    text = report(rounds, args, command.strip())
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        (args.out / "FANIN.md").write_text(text)
    print(f"wrote {args.out / 'FANIN.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
