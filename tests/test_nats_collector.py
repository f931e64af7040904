"""pyauditd as a JetStream collector: records of a shared durable pull consumer land in the
collectors' logs exactly once, also when a collector is killed mid-stream or removed, and a
redelivered record that a dead collector had written is not written again.

Every pyauditd here runs with ``local_events = no`` and ``-s nochange``: none talks to the
kernel's audit state."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditpy.config.auditd_conf import load_auditd_conf
from auditpy.config.errors import ConfigError
from auditpy.nats import jetstream as jsapi
from auditpy.proto import jetstream as js

from .nats_support import Cluster, available, cluster, create_stream, publish, run, wait_until

pytestmark = pytest.mark.skipif(not available(), reason="needs nats-server")


def record(i: int, node: str = "h1") -> bytes:
    return (f"node={node} type=USER msg=audit(1700001{i // 1000:03d}.{i % 1000:03d}:{i + 1}): "
            f"pid=1 uid=0 auid=0 ses=1 msg='op=collect n={i}'").encode()


_SERIAL = re.compile(r"^node=(\S+) type=USER msg=audit\(\d+\.\d+:(\d+)\): .*op=collect")


class Collector:
    """One pyauditd in a directory of its own, collecting from the consumer."""

    def __init__(self, root: Path, urls: list[str], *, consumer: str = "central",
                 peer_logs: str | None = None, ack_wait: float = 3.0, batch: int = 256) -> None:
        self.root = root
        self.conf_dir = root / "etc"
        self.log_dir = root / "log"
        self.run_dir = root / "run"
        for d in (self.conf_dir, self.conf_dir / "plugins.d", self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log_dir.chmod(0o700)
        nats_conf = self.conf_dir / "nats-collector.conf"
        nats_conf.write_text(
            f"servers = {','.join(urls)}\nconsumer = {consumer}\nack_wait = {ack_wait}\n"
            f"batch = {batch}\n" + (f"peer_logs = {peer_logs}\n" if peer_logs else ""))
        nats_conf.chmod(0o600)
        settings = {
            "local_events": "no", "log_file": str(self.log), "log_format": "RAW",
            "flush": "INCREMENTAL_ASYNC", "freq": "50", "space_left": "2",
            "admin_space_left": "1", "disk_full_action": "SUSPEND",
            "disk_error_action": "SUSPEND", "priority_boost": "0",
            "plugin_dir": str(self.conf_dir / "plugins.d"), "nats_collector": str(nats_conf),
        }
        path = self.conf_dir / "auditd.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        path.chmod(0o640)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / "audit.log"

    def start(self, wait: bool = True) -> Collector:
        assert "local_events = no\n" in (self.conf_dir / "auditd.conf").read_text()
        with open(self.root / "daemon.err", "ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
                 str(self.conf_dir), "--run-dir", str(self.run_dir)],
                stderr=errors, stdout=subprocess.DEVNULL)
        if wait:
            assert wait_until(lambda: "NATS collector connected" in self.stderr()
                              or self.proc is None or self.proc.poll() is not None, 20), \
                self.stderr()
        return self

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

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stderr(self) -> str:
        path = self.root / "daemon.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self) -> list[tuple[str, int]]:
        """(node, serial) of every complete collected line (a torn last line of a killed
        daemon is not a record)."""
        if not self.log.exists():
            return []
        lines = self.log.read_bytes().decode("utf-8", "replace").split("\n")[:-1]
        return [(m.group(1), int(m.group(2)) - 1) for ln in lines if (m := _SERIAL.match(ln))]

    def state(self) -> dict[str, str]:
        path = self.run_dir / "auditd.state"
        path.unlink(missing_ok=True)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        assert wait_until(path.exists, 10)
        return dict(line.split(" = ", 1) for line in path.read_text().splitlines()
                    if " = " in line)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path / "cluster") as c:
        create_stream(c.urls)
        yield c


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    started: list[Collector] = []
    yield started
    for c in started:
        c.stop()


def consumer_state(urls: list[str], consumer: str = "central") -> dict[str, Any]:
    return dict(run(lambda c: jsapi.consumer_info(c, "AUDIT", consumer), urls))


def assert_once(found: list[tuple[str, int]], expected: dict[str, range]) -> None:
    counts = collections.Counter(found)
    duplicates = [k for k, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} records written twice, e.g. {duplicates[:5]}"
    wanted = {(node, i) for node, r in expected.items() for i in r}
    missing = wanted - set(counts)
    assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:5]}"
    assert set(counts) == wanted


def test_one_collector_writes_every_record_once(
    nats: Cluster, tmp_path: Path, collectors: list[Collector]
) -> None:
    publish(nats.urls, [record(i, f"h{i % 4}") for i in range(4000)])
    c = Collector(tmp_path / "c1", nats.urls).start()
    collectors.append(c)
    assert wait_until(lambda: len(c.records()) >= 4000, 60), c.stderr()
    publish(nats.urls, [record(i, "late") for i in range(500)])  # while it runs
    assert wait_until(lambda: len(c.records()) >= 4500, 60), c.stderr()
    state = c.state()
    assert state["NATS records written"] == "4500"
    assert c.stop() == 0, c.stderr()
    assert_once(c.records(), {**{f"h{n}": range(n, 4000, 4) for n in range(4)},
                              "late": range(500)})
    # per node in stream order; DAEMON_END after the last collected record
    lines = c.log.read_text().splitlines()
    assert "type=DAEMON_END" in lines[-1]
    h1 = [i for node, i in c.records() if node == "h1"]
    assert h1 == sorted(h1)
    info = consumer_state(nats.urls)
    assert info["num_ack_pending"] == 0 and info["num_pending"] == 0


def test_two_collectors_one_killed_mid_stream(
    nats: Cluster, tmp_path: Path, collectors: list[Collector]
) -> None:
    """Both collectors share the first records; then one is frozen (its outstanding pull
    requests are still filled by the server, so it holds records it never acknowledges)
    and killed; the survivor gets those again and goes on alone."""
    total = 30000
    peers = str(tmp_path / "c*" / "log" / "audit.log")
    a = Collector(tmp_path / "c1", nats.urls, peer_logs=peers).start()
    b = Collector(tmp_path / "c2", nats.urls, peer_logs=peers).start()
    collectors += [a, b]
    publish(nats.urls, [record(i) for i in range(5000)])
    assert wait_until(lambda: len(a.records()) > 0 and len(b.records()) > 0, 30)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    publish(nats.urls, [record(i) for i in range(5000, 20000)])
    # after ack_wait the frozen one's records go to the survivor
    assert wait_until(lambda: int(b.state()["NATS redeliveries"]) > 0, 30, 0.2), b.stderr()
    a.kill()
    publish(nats.urls, [record(i) for i in range(20000, total)])
    assert wait_until(lambda: len(a.records()) + len(b.records()) >= total, 90), b.stderr()
    assert wait_until(lambda: consumer_state(nats.urls)["num_ack_pending"] == 0, 30)
    assert_once(a.records() + b.records(), {"h1": range(total)})
    state = b.state()
    assert int(state["NATS records written"]) + len(a.records()) == total


def test_a_redelivered_record_already_in_a_peer_log_is_not_written_again(
    nats: Cluster, tmp_path: Path, collectors: list[Collector]
) -> None:
    """A collector that wrote a batch and died before acknowledging it, played by the test:
    the survivor gets the batch again and finds it in the dead one's log."""
    publish(nats.urls, [record(i) for i in range(300)])
    dead_log = tmp_path / "dead" / "log" / "audit.log"
    dead_log.parent.mkdir(parents=True)

    async def take(client: Any) -> list[bytes]:
        await jsapi.ensure_consumer(client, "AUDIT", js.pull_consumer_config(
            "central", ack_wait_s=2.0))
        return [m.payload for m in await jsapi.fetch(client, "AUDIT", "central", 100, 2.0)]

    taken = run(take, nats.urls)
    assert len(taken) == 100
    # written whole, and a torn line of the next one (a write cut short by SIGKILL)
    dead_log.write_bytes(b"".join(p + b"\n" for p in taken[:99]) + taken[99][:30])
    c = Collector(tmp_path / "c1", nats.urls, peer_logs=str(dead_log)).start()
    collectors.append(c)
    assert wait_until(lambda: consumer_state(nats.urls)["num_ack_pending"] == 0
                      and len(c.records()) >= 201, 60), c.stderr()
    state = c.state()
    assert state["NATS redeliveries already written (not again)"] == "99"
    survivors = [i for _, i in c.records()]
    assert sorted(survivors) == list(range(99, 300))  # the torn one was written whole


def test_a_collector_removed_mid_stream_hands_over(
    nats: Cluster, tmp_path: Path, collectors: list[Collector]
) -> None:
    a = Collector(tmp_path / "c1", nats.urls, ack_wait=30).start()
    b = Collector(tmp_path / "c2", nats.urls, ack_wait=30).start()
    collectors += [a, b]
    total = 10000
    for start in range(0, total, 1000):
        publish(nats.urls, [record(i) for i in range(start, start + 1000)])
        if start == 4000:
            assert a.stop() == 0, a.stderr()
    # a stopped collector left nothing unacknowledged (no wait for ack_wait)
    assert wait_until(lambda: len(a.records()) + len(b.records()) >= total, 60), b.stderr()
    assert_once(a.records() + b.records(), {"h1": range(total)})
    assert "DAEMON_END" in a.log.read_text().splitlines()[-1]


def test_nats_collector_in_auditd_conf_is_checked(tmp_path: Path) -> None:
    nats_conf = tmp_path / "n.conf"
    nats_conf.write_text("servers = nats://127.0.0.1:4222\nbatch = 0\nwindow = 3\n")
    nats_conf.chmod(0o600)
    conf = tmp_path / "auditd.conf"
    conf.write_text(f"log_file = {tmp_path}/log/audit.log\nnats_collector = {nats_conf}\n"
                    "space_left = 2\nadmin_space_left = 1\n")
    conf.chmod(0o640)
    (tmp_path / "log").mkdir()
    with pytest.raises(ConfigError) as caught:
        load_auditd_conf(str(conf))
    text = str(caught.value)
    assert f"{nats_conf}:2: batch: 0 is out of range" in text
    assert f"{conf}:2: nats_collector:" in text
    nats_conf.write_text("servers = nats://127.0.0.1:4222\nwindow = 3\n")
    config, warnings = load_auditd_conf(str(conf))
    assert config.nats_collector == str(nats_conf)
    assert any(f"{nats_conf}:2: window is ignored by the collector" in str(w) for w in warnings)
    result = subprocess.run(
        [sys.executable, "-m", "auditpy.auditd", "--check", "-c", str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr


def test_collector_start_fails_cleanly_without_a_server(tmp_path: Path) -> None:
    """No server: the daemon runs and keeps trying (the log server stays up)."""
    c = Collector(tmp_path / "c1", ["nats://127.0.0.1:1"])
    c.start(wait=False)
    try:
        assert wait_until(lambda: "NATS collector: cannot connect" in c.stderr(), 20)
        assert c.proc is not None and c.proc.poll() is None
    finally:
        assert c.stop() == 0



def test_nats_fanin_benchmark_runs(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parent.parent / "bench" / "nats_fanin.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--hosts", "3", "--events", "200", "--rounds", "1",
         "--replicas", "3", "--collectors", "2", "--baseline", "auditd",
         "--publisher-records", "500", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    report = (tmp_path / "NATS_FANIN.md").read_text()
    assert "| 1 | NATS R3, 2 collectors | 600 |" in report
    assert re.search(r"\| 1 \| NATS R3, 2 collectors \| 600 \|.*\| 600 \|\n", report), report
    assert "| 1 | audisp-remote -> auditd | 600 |" in report
    assert "Publisher (pyaudisp-nats" in report
