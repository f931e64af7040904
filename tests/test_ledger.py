"""The loss ledger: serial gaps, loss reports that never go silent, the Prometheus text, the
dispatcher's figures, and the daemon's accounting (fake kernel, real metrics endpoint)."""

from __future__ import annotations

import random
import signal
import socket
import urllib.request
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy import structs
from auditpy.auditd.ledger import SAY_FIRST, LossReporter, SerialWatch, serial_of
from auditpy.proto.dispatch import figures_line, parse_figures
from auditpy.proto.prometheus import Family, exposition

from .test_daemon import Harness, eoe, syscall


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.integers(0, 400), st.sets(st.integers(0, 399)),
       st.integers(0, 2**31), st.integers(0, 30))
def test_serial_gaps_count_exactly_the_missing_events(
    start: int, count: int, dropped: set[int], seed: int, jitter: int
) -> None:
    """Events arrive a little out of order (numbered at their first record, queued at their
    last); the ones that never arrive are counted once, the late ones never."""
    serials = [start + i for i in range(count) if i not in dropped]
    rng = random.Random(seed)
    # shuffle within a window smaller than the horizon
    shuffled = [s + rng.uniform(-jitter, jitter) for s in serials]
    arrived = [s for _key, s in sorted(zip(shuffled, serials, strict=True))]
    watch = SerialWatch(horizon=64)
    for chunk in range(0, len(arrived), 7):
        watch.feed(arrived[chunk:chunk + 7])
    final = start + count + 1000
    watch.feed([final])
    if not arrived:
        assert watch.gaps == 0
        return
    # Missing: every serial after the first one read that never came. Those still within
    # the horizon of the newest are pending (they may yet arrive), the rest counted.
    seen = set(arrived)
    missing = sum(1 for s in range(arrived[0], final) if s not in seen)
    assert watch.gaps + watch.pending == missing
    assert watch.pending <= 64


def test_serial_of() -> None:
    assert serial_of(b"audit(1700000000.123:4567): x=1") == 4567
    assert serial_of(b"garbage") is None
    assert serial_of(b"audit(1700000000.123:abc): x") is None


def test_losses_are_said_first_one_by_one_then_per_interval_forever() -> None:
    reporter = LossReporter(interval=60)
    said = [reporter.note("log_disk_full", 2) for _ in range(SAY_FIRST + 3)]
    assert [len(s) for s in said] == [1] * SAY_FIRST + [0, 0, 0]
    assert "total=2" in said[0][0] and "summarised" in said[SAY_FIRST - 1][0]
    now = 1000.0
    for hour in range(50):  # never a limit after which nothing more is said
        reporter.note("log_disk_full", 5)
        summary = reporter.tick(now + 60 * (hour + 1))
        assert len(summary) == 1 and "records=5" in summary[0] if hour else True
    assert reporter.tick(now + 60 * 51) == []  # no loss in that interval: nothing to say
    assert reporter.total("log_disk_full") == 2 * (SAY_FIRST + 3) + 5 * 50


def test_exposition_escapes_and_types() -> None:
    text = exposition([
        Family("auditpy_plugin_records_dropped_total", "counter", "Dropped\nrecords")
        .add(3, plugin='we"ird\\name'),
        Family("auditpy_kernel_backlog", "gauge", "Backlog").add(0),
    ])
    assert text.splitlines() == [
        "# HELP auditpy_plugin_records_dropped_total Dropped\\nrecords",
        "# TYPE auditpy_plugin_records_dropped_total counter",
        'auditpy_plugin_records_dropped_total{plugin="we\\"ird\\\\name"} 3',
        "# HELP auditpy_kernel_backlog Backlog",
        "# TYPE auditpy_kernel_backlog gauge",
        "auditpy_kernel_backlog 0",
    ]


@given(st.dictionaries(st.text(min_size=1, max_size=20),
                       st.fixed_dictionaries({k: st.integers(0, 2**40) for k in (
                           "offered", "delivered", "dropped", "queued", "restarts")}),
                       max_size=5),
       st.integers(0, 10))
def test_figures_round_trip_split_anywhere(plugins: dict[str, dict[str, int]], cut: int
                                           ) -> None:
    data = figures_line(plugins) + b"not json\n" + figures_line(plugins)
    buffer = bytearray()
    reports = []
    for piece in (data[:cut], data[cut:]):
        buffer += piece
        reports += parse_figures(buffer)
    assert reports == [plugins, plugins] and not buffer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(harness: Harness, port: int) -> dict[str, float]:
    done: dict[str, str] = {}

    def fetch() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            done["text"] = reply.read().decode()

    import threading

    thread = threading.Thread(target=fetch)
    thread.start()
    harness.run_until(lambda: "text" in done)
    thread.join()
    values = {}
    for line in done["text"].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_the_ledger_balances_and_losses_reach_the_log(tmp_path: Path) -> None:
    """Records written + not written (by cause) + EOE = records received; a disk error is a
    loss with its cause, in the metrics and as a DAEMON_ERR record once the log works."""
    port = free_port()
    h = Harness(tmp_path, metrics_listen=f"127.0.0.1:{port}")
    h.daemon.start()
    try:
        h.kernel.push(*(r for i in range(10) for r in (syscall(i), eoe(i))))
        h.run_until(lambda: h.daemon.counters.received == 20)
        log_file = h.daemon.log_file
        assert log_file is not None
        log_file.suspend()  # as SUSPEND does: records are read and not written
        h.kernel.push(*(r for i in range(10, 13) for r in (syscall(i), eoe(i))))
        h.run_until(lambda: h.daemon.counters.received == 26)
        h.signal(signal.SIGUSR2)  # resume
        h.run_until(lambda: any("type=DAEMON_RESUME" in ln for ln in h.lines()))
        m = scrape(h, port)
        assert m["auditpy_records_received_total"] == 26
        assert m['auditpy_records_written_total{source="kernel"}'] == 10
        assert m['auditpy_records_lost_total{cause="log_suspended"}'] == 3
        assert m["auditpy_eoe_records_total"] == 13
        assert (m['auditpy_records_written_total{source="kernel"}']
                + m['auditpy_records_lost_total{cause="log_suspended"}']
                + m["auditpy_eoe_records_total"]) == m["auditpy_records_received_total"]
        # The loss was said in syslog at once, and in the log as soon as it could be.
        h.run_until(lambda: h.daemon.kernel_status is not None)  # its first figures
        h.kernel.status = structs.replace(h.kernel.status, lost=h.kernel.status.lost + 7)
        h.run_until(lambda: any("cause=kernel records=7" in ln for ln in h.lines()), 15)
        h.signal(signal.SIGCONT)
        state = tmp_path / "run" / "auditd.state"
        h.run_until(state.exists)
        assert 'auditpy_records_lost_total{cause="kernel"} 7' in state.read_text()
    finally:
        h.stop()


def test_serial_gaps_are_losses_in_multicast_mode(tmp_path: Path) -> None:
    h = Harness(tmp_path, kernel_link="multicast")
    h.daemon.start()
    try:
        kept = [i for i in range(3000) if i % 100 != 7]
        h.kernel.push(*(r for i in kept for r in (syscall(i), eoe(i))))
        h.run_until(lambda: h.daemon.counters.received == 2 * len(kept))
        # 30 events never came (7, 107, ... 2907); those within GAP_HORIZON (1024) of the
        # newest serial may still arrive late, the other 20 are lost.
        assert h.daemon.counters.serial_gaps == 20
        assert h.daemon.serials_seen.pending == 10
        assert h.daemon.losses.total("serial_gap") == 20
        h.run_until(lambda: any("cause=serial_gap" in ln for ln in h.lines()))
    finally:
        h.stop()
