"""The JetStream publisher (pyaudisp-nats and pyaudispd's builtin_nats) against a 3-node
nats-server cluster on loopback: every record lands exactly once and in order per node,
also when the publisher is killed (the records it never saw are recovered from the audit
log), when a cluster node dies, and when a re-send comes after the duplicate window."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from auditpy.config.nats_conf import NatsConf
from auditpy.nats import jetstream as jsapi
from auditpy.nats.publisher import Publisher
from auditpy.proto import jetstream as js
from auditpy.proto.nats import parse_server_url
from auditpy.system import evloop
from auditpy.system.spool import DiskQueue

from .audispd_support import Audispd
from .nats_support import (
    Cluster,
    available,
    cluster,
    create_stream,
    run,
    stream_messages,
    wait_until,
)

pytestmark = pytest.mark.skipif(not available(), reason="needs nats-server")

SRC = str(Path(__file__).resolve().parent.parent / "src")


def record(i: int, node: str = "h1") -> bytes:
    return (f"node={node} type=USER msg=audit(1700000{i // 1000:03d}.{i % 1000:03d}:{i + 1}): "
            f"pid=1 uid=0 auid=0 ses=1 msg='op=test n={i}'").encode()


def serial(payload: bytes) -> int:
    match = re.search(rb":(\d+)\): ", payload)
    assert match, payload
    return int(match.group(1)) - 1


def assert_exactly_once_in_order(urls: list[str], expected: dict[str, range]) -> None:
    """Per node subject: the serials stored are exactly `expected`, each once, ascending."""
    messages = stream_messages(urls)
    by_subject: dict[str, list[int]] = collections.defaultdict(list)
    for _seq, subject, _msg_id, payload in messages:
        by_subject[subject].append(serial(payload))
    for node, wanted in expected.items():
        got = by_subject.pop(f"audit.{node}", [])
        counts = collections.Counter(got)
        duplicates = sorted(s for s, n in counts.items() if n > 1)
        missing = sorted(set(wanted) - set(got))
        assert not duplicates, f"{node}: {len(duplicates)} duplicated, e.g. {duplicates[:5]}"
        assert not missing, f"{node}: {len(missing)} missing, e.g. {missing[:5]}"
        assert got == sorted(got), f"{node}: out of order"
        assert len(got) == len(wanted)
    assert not by_subject, f"unexpected subjects {list(by_subject)}"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path / "cluster") as c:
        create_stream(c.urls)
        yield c


def write_conf(path: Path, urls: list[str], **settings: object) -> Path:
    values: dict[str, object] = {"servers": ",".join(urls), "queue_file": path.parent / "q",
                                 "recover_from": "none", "ack_timeout": 2}
    values.update(settings)
    path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    os.chmod(path, 0o600)
    return path


class Plugin:
    """pyaudisp-nats as a process, stdin a pipe (or a file), stderr a file."""

    def __init__(self, conf: Path, err: Path, stdin: IO[bytes] | None = None) -> None:
        self.err = err
        with open(err, "ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditpy.audisp_nats", "-c", str(conf), "--no-syslog"],
                stdin=stdin if stdin is not None else subprocess.PIPE, stderr=errors,
                env=dict(os.environ, PYTHONPATH=SRC),
            )

    def feed(self, lines: list[bytes]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"".join(line + b"\n" for line in lines))
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"the plugin exited early: {self.stderr()}") from None

    def close(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@pytest.fixture
def plugins() -> Iterator[list[Plugin]]:
    started: list[Plugin] = []
    yield started
    for plugin in started:
        plugin.kill()


def stored_count(urls: list[str]) -> int:
    async def count(client: Any) -> int:
        info = await jsapi.stream_info(client, "AUDIT")
        state = info["state"]
        assert isinstance(state, dict)
        return int(state["messages"])

    try:
        return int(run(count, urls, 10))
    except Exception:  # no stream leader for a moment after a node died
        return -1


def test_records_from_a_file_land_once_and_in_order(
    nats: Cluster, tmp_path: Path, plugins: list[Plugin]
) -> None:
    source = tmp_path / "in"
    lines = [record(i, "h1" if i % 3 else "h2.example.com") for i in range(3000)]
    lines.insert(10, b"node=h1 type=EOE msg=audit(1700000000.005:6): ")
    lines.insert(20, b"type=USER msg=audit(1700000999.000:5000000): no node field")
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    with open(source, "rb") as stdin:
        plugin = Plugin(write_conf(tmp_path / "n.conf", nats.urls, node="local"),
                        tmp_path / "p.err", stdin)
    plugins.append(plugin)
    assert plugin.proc.wait(60) == 0, plugin.stderr()
    assert "every record was delivered" in plugin.stderr()
    messages = stream_messages(nats.urls)
    assert len(messages) == 3001  # EOE is not published
    by_subject = collections.Counter(subject for _, subject, _, _ in messages)
    assert by_subject == {"audit.h1": 2000, "audit.h2_example_com": 1000, "audit.local": 1}
    local = next(m for m in messages if m[1] == "audit.local")
    assert local[3] == b"node=local type=USER msg=audit(1700000999.000:5000000): no node field"
    assert all(m[2].startswith(m[3].split(b" ")[0][5:].decode() + ":") for m in messages)
    h1 = [serial(p) for _, s, _, p in messages if s == "audit.h1"]
    assert h1 == [i for i in range(3000) if i % 3]


def test_killed_publisher_loses_nothing_and_duplicates_nothing(
    nats: Cluster, tmp_path: Path, plugins: list[Plugin]
) -> None:
    """As under pyaudispd: each record is logged first, then written to the plugin's input.
    The first plugin is killed while records are in its pipe and in flight; the second
    gets the records from the kill on again (pyaudispd's queue) plus new ones, and finds
    the ones that died in the pipe in the log."""
    log = tmp_path / "audit.log"
    conf = write_conf(tmp_path / "n.conf", nats.urls, recover_from=log)
    first = Plugin(conf, tmp_path / "p1.err")
    plugins.append(first)
    total, killed_at, resent_from = 12000, 6000, 8000
    with open(log, "ab") as out:
        for start in range(0, killed_at, 500):
            chunk = [record(i) for i in range(start, start + 500)]
            out.write(b"".join(line + b"\n" for line in chunk))
            out.flush()
            first.feed(chunk)
            if start == 3000:
                assert wait_until(lambda: stored_count(nats.urls) > 0, 30), first.stderr()
        first.kill()  # records in its pipe, in memory and in flight
        # logged while no plugin ran; then a new one is fed (the dispatcher's queue)
        for i in range(killed_at, total):
            out.write(record(i) + b"\n")
    second = Plugin(conf, tmp_path / "p2.err")
    plugins.append(second)
    second.feed([record(i) for i in range(resent_from, total)])
    assert second.close() == 0, second.stderr()
    assert re.search(r"\d+ records logged while the publisher was not running were recovered",
                     second.stderr()), second.stderr()
    assert_exactly_once_in_order(nats.urls, {"h1": range(total)})


def leader(urls: list[str]) -> str:
    async def ask(client: Any) -> str:
        info = await jsapi.stream_info(client, "AUDIT")
        cluster_info = info["cluster"]
        assert isinstance(cluster_info, dict)
        return str(cluster_info["leader"])

    return str(run(ask, urls))


@pytest.mark.parametrize("victim", ["stream leader", "publisher's server"])
def test_a_cluster_node_dies_mid_stream(
    nats: Cluster, tmp_path: Path, plugins: list[Plugin], victim: str
) -> None:
    if victim == "stream leader":
        name = leader(nats.urls)
        node = next(n for n in nats.nodes if n.name == name)
        others = [n.url for n in nats.nodes if n is not node]
        servers = others[:1]  # connected to a survivor: its route to the leader breaks
    else:
        node = nats.nodes[0]
        others = [n.url for n in nats.nodes[1:]]
        servers = [node.url]  # connected to the victim; learns the others from it
    plugin = Plugin(write_conf(tmp_path / "n.conf", servers), tmp_path / "p.err")
    plugins.append(plugin)
    total = 12000
    for start in range(0, total, 500):
        plugin.feed([record(i) for i in range(start, start + 500)])
        if start == 4000:
            assert wait_until(lambda: stored_count(others) > 0, 30), plugin.stderr()
            node.kill()
    # a new stream leader may take several seconds to be elected: wait for the delivery
    # rather than for the plugin's bounded drain at the end of its input
    assert wait_until(lambda: stored_count(others) >= total, 120, 0.5), plugin.stderr()
    assert plugin.close() == 0, plugin.stderr()
    assert_exactly_once_in_order(others, {"h1": range(total)})


def test_a_resend_after_the_duplicate_window_is_recognised(
    tmp_path: Path, plugins: list[Plugin]
) -> None:
    """The queue holds records the stream stored longer ago than its duplicate window
    (a crash after the store, before the acknowledgement, and a long outage): the head
    check finds them stored and does not send them again."""
    with cluster(tmp_path / "cluster") as c:
        create_stream(c.urls, duplicate_window_s=1.0)
        source = tmp_path / "in"
        source.write_bytes(b"".join(record(i) + b"\n" for i in range(100)))
        conf = write_conf(tmp_path / "n.conf", c.urls)
        with open(source, "rb") as stdin:
            first = Plugin(conf, tmp_path / "p1.err", stdin)
        plugins.append(first)
        assert first.proc.wait(60) == 0, first.stderr()
        stored = stream_messages(c.urls)
        # the state a crash before the last 40 acknowledgements would leave
        queue = DiskQueue(str(tmp_path / "q"), lambda p, m: None, max_record=1 << 21)
        queue.append_many([msg_id.encode() + b"\nh1\n" + payload
                           for _, _, msg_id, payload in stored[60:]])
        queue.sync()
        queue.close()

        async def window_passed(client: Any) -> bool:
            probe = [(js.MSG_ID, "probe")]
            first = await client.request("audit.probe", b"", 5, headers=probe)
            assert not js.parse_pub_ack(first.payload).duplicate
            while True:
                again = await client.request("audit.probe", b"", 5, headers=probe)
                if not js.parse_pub_ack(again.payload).duplicate:
                    return True
                await evloop.sleep(0.1)

        assert run(window_passed, c.urls, 30)
        with open(os.devnull, "rb") as stdin:
            second = Plugin(conf, tmp_path / "p2.err", stdin)
        plugins.append(second)
        assert second.proc.wait(60) == 0, second.stderr()
        assert "40 queued records were already in AUDIT" in second.stderr(), second.stderr()
        h1 = [serial(p) for _, s, _, p in stream_messages(c.urls) if s == "audit.h1"]
        assert h1 == list(range(100))


def test_a_full_queue_drops_and_counts_without_waiting(
    tmp_path: Path, plugins: list[Plugin]
) -> None:
    conf = write_conf(tmp_path / "n.conf", ["nats://127.0.0.1:1"], queue_depth=100)
    plugin = Plugin(conf, tmp_path / "p.err")
    plugins.append(plugin)
    plugin.feed([record(i) for i in range(300)])
    # SIGUSR1 kills a process that has not installed its handler yet
    assert wait_until(lambda: "started:" in plugin.stderr(), 20), plugin.stderr()

    def counted() -> bool:
        plugin.proc.send_signal(signal.SIGUSR1)
        return "records_received=100 " in plugin.stderr() and (
            "records_dropped_(queue_full)=200 " in plugin.stderr())

    assert wait_until(counted, 20, 0.2), plugin.stderr()
    assert "queue is full (100 records): 200 records dropped" in plugin.stderr()
    plugin.proc.send_signal(signal.SIGTERM)
    assert plugin.proc.wait(10) == 0
    assert "100 records kept in" in plugin.stderr()


def test_builtin_nats_in_pyaudispd(nats: Cluster, tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "n.conf", nats.urls, node="disp")
    (tmp_path / "disp").mkdir()
    d = Audispd(tmp_path / "disp", settings={"q_depth": 4000})
    d.plugin("nats", path="builtin_nats", args=[str(conf)])
    d.start()
    try:
        d.wait_log(r"plugin nats.conf started: builtin nats")
        for i in range(2000):
            d.send(record(i, "h7"))
        d.send(b"audit(1700000100.000:9): op=raw", msg_type=1005, version=0)
        assert wait_until(lambda: stored_count(nats.urls) >= 2001, 30), d.log()
        # The stream stores a message before the plugin reads its acknowledgement.
        assert wait_until(
            lambda: d.state()["plugin nats.conf"]["records stored in the stream"] == "2001",
            30, 0.2), d.state()
        state = d.state()["plugin nats.conf"]
        assert state["records dropped (queue full)"] == "0"
    finally:
        assert d.stop() == 0, d.log()
    messages = stream_messages(nats.urls)
    assert [serial(p) for _, s, _, p in messages if s == "audit.h7"] == list(range(2000))
    raw = [p for _, s, _, p in messages if s == "audit.disp"]
    assert raw == [b"node=disp type=USER msg=audit(1700000100.000:9): op=raw"]


def test_named_items_are_the_seam_for_whole_events(nats: Cluster) -> None:
    """What an event assembler would do: name each event itself and hand it over whole."""
    conf = NatsConf(servers=tuple(parse_server_url(u) for u in nats.urls), queue_file=None,
                    recover_from=None)
    messages: list[str] = []

    async def main() -> None:
        publisher = Publisher(conf, lambda _p, m: messages.append(m), boot=b"b00t")
        publisher.open()
        task = evloop.create_task(publisher.run())
        event = js.event_msg_id(b"h9", b"b00t", b"1700000000.001:5").encode()
        publisher.submit_named([(event, b"h9", b'{"records":3}'),
                                (event, b"h9", b'{"records":3}')])
        assert await publisher.drain(20), messages
        await publisher.stop()
        task.cancel()
        publisher.close()

    evloop.run(main())
    stored = stream_messages(nats.urls)
    assert [(s, i, p) for _, s, i, p in stored] == [
        ("audit.h9", "h9:b00t:1700000000.001:5", b'{"records":3}')]


def test_create_stream_from_the_publisher_configuration(tmp_path: Path) -> None:
    with cluster(tmp_path / "cluster") as c:
        conf = write_conf(tmp_path / "n.conf", c.urls, subject="logs.{node}.audit",
                          stream="LOGS")
        argv = [sys.executable, "-m", "auditpy.audisp_nats", "-c", str(conf), "--no-syslog",
                "--create-stream", "3", "--duplicate-window", "60"]
        env = dict(os.environ, PYTHONPATH=SRC)
        for _ in range(2):  # the second time it exists already
            result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 0, result.stderr
            assert ("stream LOGS: subjects ['logs.*.audit'], 3 replicas, duplicate window "
                    "60 s") in result.stderr
        bad = subprocess.run([*argv[:-3], "9"], capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "1..5 replicas" in bad.stderr
