#!/usr/bin/env python3
"""Fan-in through NATS JetStream: simulated hosts publish to a nats-server cluster, one or
two pyauditd collectors write the central log; beside it, in the same run, the single-server
path (audisp-remote's managed protocol to the C auditd, and to pyauditd).

Per round, for each scenario, everything starts fresh on loopback: a 3-node nats-server
cluster (JetStream, a stream of R replicas), the collectors (pyauditd, ``local_events =
no``, ``nats_collector``, sharing one durable pull consumer), then N hosts (default 20)
publish M records each as the publisher does (``Nats-Msg-Id`` per record, a window of 256
publishes awaiting their acknowledgement per host).  Measured end to end: from the first
publish until every record is in the collectors' logs.  CPU is read from /proc for the
collectors, the nats-server nodes (and the stream leader alone) and the hosts' driver.

The hosts are driven from one process, as bench/fanin.py drives its clients, so that on a
small machine they leave the CPU to what is measured.  The real publisher's cost per
record is measured on its own: pyaudisp-nats publishing a file of records to the cluster.

Run as root (the daemons insist), from the repository:

    python3 bench/nats_fanin.py [--hosts 20] [--events 5000] [--rounds 3] [--out bench/results]

Writes NATS_FANIN.md into --out.  Nothing outside temporary directories is touched, and the
kernel's audit state is not (no daemon registers).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import fanin  # noqa: E402
import nats_support  # noqa: E402

import bench  # noqa: E402
from auditpy.nats import jetstream as jsapi  # noqa: E402
from auditpy.nats.client import Client, NatsOptions  # noqa: E402
from auditpy.proto import jetstream as js  # noqa: E402
from auditpy.proto.nats import Msg, parse_server_url  # noqa: E402
from auditpy.system import evloop  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WINDOW = 256


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def record(round_no: int, host: int, seq: int) -> bytes:
    return (f"node=host{host} type=USER msg=audit(1700000000.123:{seq}): pid=1 uid=0 auid=0 "
            f"ses=1 msg='text=natsfanin-{round_no}-{host}-{seq}'").encode()


# --------------------------------------------------------------------------------------
# Hosts


async def _host(urls: list[str], host: int, events: int, round_no: int) -> int:
    """One host: its own connection, up to WINDOW publishes unacknowledged; returns the
    number of error replies."""
    client = Client(NatsOptions(tuple(parse_server_url(u) for u in urls), name=f"host{host}"))
    await client.connect()
    loop = evloop.running_loop()
    done: evloop.Future[None] = loop.create_future()
    inbox = client.new_inbox() + "."
    state = {"sent": 0, "acked": 0, "errors": 0}
    subject = f"audit.host{host}"
    boot = b"bench"
    node = f"host{host}".encode()

    def fill() -> None:
        parts = []
        while state["sent"] < events and state["sent"] - state["acked"] < WINDOW:
            state["sent"] += 1
            line = record(round_no, host, state["sent"])
            msg_id = js.record_msg_id(line, node, boot)
            header = f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n".encode()
            parts.append(b"HPUB %s %s%d %d %d\r\n%s%s\r\n" % (
                subject.encode(), inbox.encode(), state["sent"], len(header),
                len(header) + len(line), header, line))
        if parts:
            client.write(b"".join(parts))

    def on_ack(msg: Msg) -> None:
        state["acked"] += 1
        if not msg.payload.startswith(b'{"stream"'):
            state["errors"] += 1
        if state["acked"] >= events:
            if not done.done():
                done.set_result(None)
        else:
            fill()

    client.subscribe(inbox + "*", on_ack)
    await client.flush()
    fill()
    await done
    client.close()
    return state["errors"]


def drive(urls: list[str], first: int, count: int, events: int, round_no: int,
          ready: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[object]
          ) -> None:
    async def main() -> tuple[float, int]:
        ready.wait()
        started = time.monotonic()
        errors = await evloop.gather(*[_host(urls, first + i, events, round_no)
                                        for i in range(count)])
        return time.monotonic() - started, sum(errors)

    elapsed, errors = evloop.run(main())
    results.put((elapsed, errors, cpu_seconds(os.getpid())))


# --------------------------------------------------------------------------------------
# Collectors


def start_collector(root: Path, urls: list[str], peers: str) -> subprocess.Popen[bytes]:
    conf_dir = root / "etc"
    for sub in (conf_dir, conf_dir / "plugins.d", root / "log", root / "run"):
        sub.mkdir(parents=True, exist_ok=True)
    (root / "log").chmod(0o700)
    nats_conf = conf_dir / "nats-collector.conf"
    nats_conf.write_text(f"servers = {','.join(urls)}\nconsumer = central\n"
                         f"peer_logs = {peers}\n")
    nats_conf.chmod(0o600)
    settings = {
        "local_events": "no", "log_file": root / "log" / "audit.log", "log_format": "RAW",
        "flush": "INCREMENTAL_ASYNC", "freq": "50", "max_log_file": "0", "space_left": "2",
        "admin_space_left": "1", "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND",
        "priority_boost": "0", "plugin_dir": conf_dir / "plugins.d", "nats_collector": nats_conf,
    }
    path = conf_dir / "auditd.conf"
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    path.chmod(0o640)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    with open(root / "daemon.err", "ab") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c", str(conf_dir),
             "--run-dir", str(root / "run")], stderr=errors, stdout=subprocess.DEVNULL, env=env)
    if not nats_support.wait_until(
            lambda: "NATS collector connected" in (root / "daemon.err").read_text()
            or proc.poll() is not None, 30):
        raise RuntimeError(f"collector did not connect: {(root / 'daemon.err').read_text()}")
    return proc


# --------------------------------------------------------------------------------------
# One round


@dataclass
class Result:
    scenario: str
    round_no: int
    events: int
    seconds: float
    collector_cpu: float = 0.0
    nats_cpu: float = 0.0
    leader_cpu: float = 0.0
    driver_cpu: float = 0.0
    logged: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def per_event(self, cpu: float) -> float:
        return cpu / self.events * 1e6 if self.events else 0.0


def nats_round(replicas: int, collectors: int, round_no: int, hosts: int, events: int,
               drivers: int) -> Result:
    scenario = f"NATS R{replicas}, {collectors} collector{'s' if collectors > 1 else ''}"
    with tempfile.TemporaryDirectory(prefix="natsfanin-") as tmp:
        root = Path(tmp)
        with nats_support.cluster(root / "cluster") as c:
            nats_support.create_stream(c.urls, replicas=replicas)
            peers = str(root / "collector*" / "log" / "audit.log")
            procs = []
            try:
                for n in range(collectors):
                    procs.append(start_collector(root / f"collector{n}", c.urls, peers))
                counters = [bench.MarkerCounter(root / f"collector{n}" / "log" / "audit.log",
                                                f"natsfanin-{round_no}-".encode())
                            for n in range(collectors)]
                leader_name = nats_support.run(
                    lambda cl: jsapi.stream_info(cl, "AUDIT"), c.urls)["cluster"]["leader"]
                leader = next(n for n in c.nodes if n.name == leader_name)
                ctx = multiprocessing.get_context("fork")
                ready = ctx.Barrier(drivers + 1)
                results: multiprocessing.Queue[object] = ctx.Queue()
                shares = [hosts // drivers + (1 if i < hosts % drivers else 0)
                          for i in range(drivers)]
                workers, first = [], 0
                for share in shares:
                    w = ctx.Process(target=drive, args=(c.urls, first, share, events, round_no,
                                                        ready, results))
                    w.start()
                    workers.append(w)
                    first += share
                nodes = [n.proc.pid for n in c.nodes if n.proc is not None]
                cpu0 = ([cpu_seconds(p.pid) for p in procs], [cpu_seconds(p) for p in nodes])
                ready.wait(60)
                started = time.monotonic()
                total = hosts * events
                deadline = started + 600
                while sum(counter.poll() for counter in counters) < total:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                seconds = time.monotonic() - started
                outcomes = [results.get(timeout=600) for _ in workers]
                for w in workers:
                    w.join(10)
                collector_cpu = sum(cpu_seconds(p.pid) for p in procs) - sum(cpu0[0])
                nats_cpu = sum(cpu_seconds(p) for p in nodes) - sum(cpu0[1])
                leader_pid = leader.proc.pid if leader.proc is not None else 0
                leader_cpu = cpu_seconds(leader_pid) - cpu0[1][nodes.index(leader_pid)]
            finally:
                for p in procs:
                    fanin.stop_server(p)
            errors = sum(int(o[1]) for o in outcomes)  # type: ignore[index]
            if errors:
                raise RuntimeError(f"{scenario}: {errors} publishes were refused")
            logged = sum(counter.poll() for counter in counters)
            return Result(scenario, round_no, total, seconds, collector_cpu, nats_cpu,
                          leader_cpu, sum(float(o[2]) for o in outcomes), logged)  # type: ignore[index]


def publisher_cost(records: int) -> tuple[float, float]:
    """pyaudisp-nats publishing `records` from a file to an R3 stream: (seconds, CPU s)."""
    with tempfile.TemporaryDirectory(prefix="natspub-") as tmp:
        root = Path(tmp)
        with nats_support.cluster(root / "cluster") as c:
            nats_support.create_stream(c.urls, replicas=3)
            conf = root / "n.conf"
            conf.write_text(f"servers = {','.join(c.urls)}\nqueue_file = {root}/q\n"
                            "recover_from = none\n")
            conf.chmod(0o600)
            source = root / "in"
            source.write_bytes(b"".join(record(0, 0, i) + b"\n" for i in range(records)))
            env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
            with open(source, "rb") as stdin:
                started = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "auditpy.audisp_nats", "-c", str(conf), "--no-syslog"],
                    stdin=stdin, stderr=subprocess.DEVNULL, env=env)
                _pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                seconds = time.monotonic() - started
            if proc.returncode != 0:
                raise RuntimeError("pyaudisp-nats failed")
            return seconds, usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[Result], baseline: list[fanin.Round], publisher: tuple[float, float],
           args: argparse.Namespace, command: str) -> str:
    lines = [
        "# Fan-in through NATS JetStream, beside the single-server path",
        "",
        f"{args.hosts} simulated hosts on loopback, {args.events} records each per round; "
        "NATS: a 3-node nats-server cluster (JetStream, file storage), a stream of R "
        "replicas, hosts publishing with `Nats-Msg-Id` and 256 publishes in flight each, "
        "pyauditd collectors (`local_events = no`, RAW, flush INCREMENTAL_ASYNC) sharing one "
        "durable pull consumer; end to end = first publish to the last record in a "
        "collector's log. Single server: the same hosts as audisp-remote clients (one record "
        "in flight each, bench/fanin.py) to the C auditd and to pyauditd.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, nats-server {nats_version()}. "
        f"Command: `{command}`",
        "",
        "| round | path | events | seconds | events/s | collector/server CPU µs/event "
        "| nats-server CPU µs/event (leader) | hosts' driver CPU µs/event | in log |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.round_no} | {r.scenario} | {r.events} | {r.seconds:.2f} | {r.rate:,.0f} | "
            f"{r.per_event(r.collector_cpu):.1f} | {r.per_event(r.nats_cpu):.1f} "
            f"({r.per_event(r.leader_cpu):.1f}) | {r.per_event(r.driver_cpu):.1f} | "
            f"{r.logged} |")
    for b in baseline:
        lines.append(f"| {b.round_no} | audisp-remote -> {b.server} | {b.events} | "
                     f"{b.seconds:.2f} | {b.rate:,.0f} | {b.cpu_us:.1f} | - | - | {b.logged} |")
    lines += ["", "Medians:", "",
              "| path | events/s | collector/server CPU µs/event | nats-server CPU µs/event "
              "(all nodes) | stream leader CPU µs/event |",
              "|---|---|---|---|---|"]
    for scenario in dict.fromkeys(r.scenario for r in results):
        rows = [r for r in results if r.scenario == scenario]
        lines.append(
            f"| {scenario} | {median([r.rate for r in rows]):,.0f} | "
            f"{median([r.per_event(r.collector_cpu) for r in rows]):.1f} | "
            f"{median([r.per_event(r.nats_cpu) for r in rows]):.1f} | "
            f"{median([r.per_event(r.leader_cpu) for r in rows]):.1f} |")
    for server in dict.fromkeys(b.server for b in baseline):
        rows = [b for b in baseline if b.server == server]
        lines.append(f"| audisp-remote -> {server} | {median([b.rate for b in rows]):,.0f} | "
                     f"{median([b.cpu_us for b in rows]):.1f} | - | - |")
    seconds, cpu = publisher
    lines += [
        "",
        f"Publisher (pyaudisp-nats, one process, a file of {args.publisher_records} records "
        f"to an R3 stream on this machine): {args.publisher_records / seconds:,.0f} "
        f"records/s, {cpu / args.publisher_records * 1e6:.1f} µs CPU per record (queue "
        "fsyncs included).",
        "",
        "Notes: all processes share the machine's CPUs, so on a small machine the events/s "
        "of a NATS scenario is what the three nats-server nodes, the collectors and the "
        "hosts' driver reach together; the CPU per event of each part is what sizes a real "
        "deployment, where they run on different machines. \"in log\" counts the round's "
        "records in the collectors' logs (each exactly once: the tests check it).",
        "",
    ]
    return "\n".join(lines)


def nats_version() -> str:
    out = subprocess.run([nats_support.NATS_SERVER, "--version"], capture_output=True,
                         text=True)
    return out.stdout.strip().split()[-1] if out.stdout else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--events", type=int, default=5000, help="records per host per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", default="1,3")
    parser.add_argument("--collectors", default="1,2")
    parser.add_argument("--baseline", default="auditd,pyauditd",
                        help="single-server kinds to run beside (bench/fanin.py)")
    parser.add_argument("--publisher-records", type=int, default=50000)
    parser.add_argument("--drivers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("nats_fanin.py: run as root (the daemons refuse to start otherwise)",
              file=sys.stderr)
        return 2
    if not nats_support.available():
        print("nats_fanin.py: nats-server is not installed", file=sys.stderr)
        return 2
    # A SIGTERM must still run the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    command = "python3 bench/nats_fanin.py " + " ".join(argv if argv is not None
                                                       else sys.argv[1:])
    replicas = [int(r) for r in args.replicas.split(",") if r]
    collectors = [int(n) for n in args.collectors.split(",") if n]
    kinds = [k for k in args.baseline.split(",") if k]
    results: list[Result] = []
    baseline: list[fanin.Round] = []
    for round_no in range(1, args.rounds + 1):
        for r in replicas:
            for n in collectors:
                result = nats_round(r, n, round_no, args.hosts, args.events, args.drivers)
                results.append(result)
                print(f"round {round_no} {result.scenario:28s}: {result.rate:9,.0f} events/s  "
                      f"collectors {result.per_event(result.collector_cpu):5.1f} µs/event  "
                      f"nats {result.per_event(result.nats_cpu):5.1f} µs/event  "
                      f"logged {result.logged}/{result.events}", flush=True)
        for kind in kinds:
            b = fanin.run_round(kind, round_no, args.hosts, args.events, 1)
            baseline.append(b)
            print(f"round {round_no} audisp-remote -> {kind:9s}: {b.rate:9,.0f} events/s  "
                  f"server {b.cpu_us:5.1f} µs/event  logged {b.logged}/{b.events}", flush=True)
    publisher = publisher_cost(args.publisher_records)
    text = report(results, baseline, publisher, args, command.strip())
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        (args.out / "NATS_FANIN.md").write_text(text)
    print(f"wrote {args.out / 'NATS_FANIN.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
