"""A real Prometheus (Debian's package) scrapes pyauditd during a kernel test, and its HTTP
API returns the ledger's series with the values the log shows."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import textwrap
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DaemonDir, RunningDaemon, auditctl, start_pyauditd, wait_for

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(port prometheus answers on, port it scrapes)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    api, target = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: pyauditd
            static_configs:
              - targets: ["127.0.0.1:{target}"]
    """))
    with open(tmp_path / "prometheus.err", "wb") as errors:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{api}"],
            stdout=subprocess.DEVNULL, stderr=errors,
        )
    try:
        yield api, target
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(api: int, expression: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{api}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            data = json.load(reply)
    except OSError:
        return {}
    return {
        json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
        for item in data.get("data", {}).get("result", [])
    }


def test_prometheus_scrapes_the_ledger(
    kernel_state: object, daemon_dir: DaemonDir, prometheus: tuple[int, int]
) -> None:
    api, target = prometheus
    daemon_dir.write_config(metrics_listen=f"127.0.0.1:{target}")
    daemon: RunningDaemon = start_pyauditd(daemon_dir)
    try:
        for i in range(30):
            auditctl("-m", f"pytest-metrics-{i}")
        daemon.wait_for_line("pytest-metrics-29")

        def kernel_lines() -> int:
            return sum(not ln.startswith("type=DAEMON_") for ln in daemon_dir.lines())

        def scraped() -> float | None:
            found = query(api, 'auditpy_records_written_total{source="kernel"}')
            return next(iter(found.values()), None)

        assert wait_for(lambda: scraped() == kernel_lines(), 60), (
            f"prometheus says {scraped()}, the log has {kernel_lines()} kernel records")
        assert kernel_lines() >= 30
        lost = query(api, "auditpy_records_lost_total")
        causes = {json.loads(k)["cause"] for k in lost}
        assert {"kernel", "log_suspended", "log_disk_full", "dispatcher"} <= causes
        assert all(v == 0 for v in lost.values()), lost
        assert query(api, "auditpy_kernel_backlog"), "the kernel's figures are missing"
    finally:
        daemon.stop()
