"""Kernel events into a NATS JetStream stream (3-node nats-server cluster on loopback, a
stream with 3 replicas): exactly once and in order per node, from a registered pyauditd
through pyaudispd's builtin_nats or the pyaudisp-nats program, also when the publisher is
killed with SIGKILL and when a cluster node is, and from Debian's C auditd running the
pyaudisp-nats program as its plugin."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..audispd_support import children_of, cmdline
from ..nats_support import Cluster, available, cluster, create_stream, stream_messages
from ..nats_support import run as nats_run
from .conftest import DaemonDir, RunningDaemon, auditctl, get_status, start_pyauditd, wait_for

pytestmark = pytest.mark.skipif(not available(), reason="needs nats-server")

SRC = str(Path(__file__).resolve().parent.parent.parent / "src")
KEY = "pytest-nats"
EVENTS = 10000
_STAMP = re.compile(rb"msg=audit\((\d+\.\d+):(\d+)\)")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path / "cluster") as c:
        create_stream(c.urls)
        yield c


def publisher_conf(path: Path, nats: Cluster, daemon_dir: DaemonDir) -> Path:
    path.write_text(
        f"servers = {','.join(nats.urls)}\nqueue_file = {path.parent}/nats.queue\n"
        f"recover_from = {daemon_dir.log}\nack_timeout = 2\n"
    )
    os.chmod(path, 0o600)
    return path


def wrapper(path: Path, argv: list[str], errors: Path) -> Path:
    """A plugin program for pyaudispd or the C auditd (which gives plugins no environment):
    this checkout's auditpy, stderr to a file."""
    path.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={SRC} exec {sys.executable} -m auditpy.audisp_nats {' '.join(argv)} "
        f"--no-syslog 2>>{errors}\n"
    )
    os.chmod(path, 0o755)
    return path


def plugin_file(daemon_dir: DaemonDir, path: str | Path, args: str) -> None:
    conf = daemon_dir.conf_dir / "plugins.d" / "nats.conf"
    conf.write_text(f"active = yes\ndirection = out\npath = {path}\ntype = always\n"
                    + (f"args = {args}\n" if args else "") + "format = string\n")
    os.chmod(conf, 0o640)


def stored(nats_urls: list[str]) -> int:
    from auditpy.nats import jetstream as jsapi

    async def count(client):  # type: ignore[no-untyped-def]
        info = await jsapi.stream_info(client, "AUDIT")
        return int(info["state"]["messages"])

    try:
        return int(nats_run(count, nats_urls, 10))
    except Exception:  # no stream leader for a moment after a node died
        return -1


def assert_events_once_in_order(urls: list[str], node: str, events: int, log: Path) -> None:
    """Every event of the rule once (its SYSCALL record), no record twice, everything on
    the node's subject, and the stream's records in the order of the daemon's log (they
    are a subsequence of it: the daemon logs a few records it never dispatches)."""
    messages = stream_messages(urls)
    subjects = collections.Counter(subject for _, subject, _, _ in messages)
    assert set(subjects) == {f"audit.{node}"}, subjects
    payloads = [payload for _, _, _, payload in messages]
    assert all(p.startswith(f"node={node} type=".encode()) for p in payloads)
    repeated = [p for p, n in collections.Counter(payloads).items() if n > 1]
    assert not repeated, f"{len(repeated)} records stored twice, e.g. {repeated[:2]}"
    syscalls = [p for p in payloads if b" type=SYSCALL " in p and f'key="{KEY}"'.encode() in p]
    serials = [int(_STAMP.search(p).group(2)) for p in syscalls]  # type: ignore[union-attr]
    assert len(serials) == len(set(serials)) == events, (len(serials), len(set(serials)))
    assert serials == sorted(serials), "the load generator's events out of order"
    logged = iter(log.read_bytes().split(b"\n"))
    missing = [p for p in payloads if not any(p == line for line in logged)]
    assert not missing, f"not in the log's order (or not in the log): {missing[:2]}"


def generate(load_generator: Path, events: int) -> None:
    rule = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F", f"exe={load_generator}",
            "-k", KEY]
    auditctl("-a", *rule)
    try:
        subprocess.run([str(load_generator), str(events)], check=True)
    finally:
        auditctl("-d", *rule)


def child_running(parent: int, module: str) -> int | None:
    """The child of `parent` that runs `python -m MODULE`, if there is one."""
    for pid in children_of(parent):
        if f"-m {module}" in " ".join(cmdline(pid)):
            return pid
    return None


def dispatcher_pid(daemon: RunningDaemon) -> int | None:
    return child_running(daemon.pid, "auditpy.audispd")


def plugin_pid(parent: int) -> int | None:
    return child_running(parent, "auditpy.audisp_nats")


def leader(urls: list[str]) -> str:
    from auditpy.nats import jetstream as jsapi

    async def ask(client):  # type: ignore[no-untyped-def]
        info = await jsapi.stream_info(client, "AUDIT")
        return str(info["cluster"]["leader"])

    return str(nats_run(ask, urls))


@pytest.mark.parametrize(
    ("publisher", "kill"),
    [
        ("builtin", None),
        ("builtin", "publisher"),
        ("program", "publisher"),
        ("builtin", "node"),
    ],
)
def test_kernel_events_land_in_the_stream_exactly_once(
    kernel_state: AuditStatus, tmp_path: Path, daemon_dir: DaemonDir, load_generator: Path,
    nats: Cluster, publisher: str, kill: str | None,
) -> None:
    conf = publisher_conf(tmp_path / "nats.conf", nats, daemon_dir)
    errors = tmp_path / "plugin.err"
    if publisher == "builtin":
        plugin_file(daemon_dir, "builtin_nats", str(conf))
    else:
        program = wrapper(tmp_path / "pyaudisp-nats", ["-c", str(conf)], errors)
        plugin_file(daemon_dir, program, "")
    daemon_dir.write_config(name_format="USER", name="pytest-nats-node", q_depth="99999")
    daemon = start_pyauditd(daemon_dir)
    survivors = nats.urls
    try:
        assert wait_for(lambda: dispatcher_pid(daemon) is not None, 10)
        half = EVENTS // 2
        generate(load_generator, half)
        if kill is not None:
            assert wait_for(lambda: stored(nats.urls) > 500, 30), daemon.stderr()
            if kill == "node":
                victim = next(n for n in nats.nodes if n.name == leader(nats.urls))
                victim.kill()
                survivors = [n.url for n in nats.nodes if n is not victim]
            elif publisher == "builtin":
                pid = dispatcher_pid(daemon)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # the builtin's records in memory die with it
            else:
                pid = plugin_pid(dispatcher_pid(daemon) or -1)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
        generate(load_generator, EVENTS - half)

        def complete() -> bool:
            messages = [p for _, _, _, p in stream_messages(survivors)]
            return sum(b" type=SYSCALL " in p and KEY.encode() in p for p in messages) >= EVENTS

        assert wait_for(complete, 120, 1.0), daemon.stderr()[-3000:] + (
            errors.read_text() if errors.exists() else "")
    finally:
        assert daemon.stop() == 0
        assert wait_for(lambda: get_status().pid != daemon.pid, 5)
    assert_events_once_in_order(survivors, "pytest-nats-node", EVENTS, daemon_dir.log)
    if kill == "publisher":
        text = daemon.stderr() + (errors.read_text() if errors.exists() else "")
        assert "recovered from" in text, text[-3000:]


def test_the_c_auditd_runs_pyaudisp_nats(
    kernel_state: AuditStatus, tmp_path: Path, daemon_dir: DaemonDir, load_generator: Path,
    nats: Cluster,
) -> None:
    conf = publisher_conf(tmp_path / "nats.conf", nats, daemon_dir)
    errors = tmp_path / "plugin.err"
    program = wrapper(tmp_path / "pyaudisp-nats", ["-c", str(conf)], errors)
    plugin_file(daemon_dir, program, "")
    daemon_dir.write_config(name_format="USER", name="pytest-c-node", q_depth="99999",
                            flush="INCREMENTAL", freq="100")
    with open(daemon_dir.root / "daemon.err", "ab") as err:
        proc = subprocess.Popen(["/sbin/auditd", "-n", "-s", "nochange", "-c",
                                 str(daemon_dir.conf_dir)], stderr=err)
    daemon = RunningDaemon(daemon_dir, proc)
    plugin: int | None = None
    try:
        assert wait_for(lambda: get_status().pid == proc.pid or proc.poll() is not None, 10)
        assert proc.poll() is None, daemon.stderr()
        assert wait_for(lambda: plugin_pid(proc.pid) is not None, 10), daemon.stderr()
        plugin = plugin_pid(proc.pid)
        generate(load_generator, EVENTS)

        def complete() -> bool:
            messages = [p for _, _, _, p in stream_messages(nats.urls)]
            return sum(b" type=SYSCALL " in p and KEY.encode() in p for p in messages) >= EVENTS

        assert wait_for(complete, 120, 1.0), errors.read_text() if errors.exists() else ""
    finally:
        daemon.stop()
        assert wait_for(lambda: get_status().pid != proc.pid, 5)
        if plugin is not None and not wait_for(lambda: plugin_pid(proc.pid) is None
                                               and not os.path.exists(f"/proc/{plugin}"), 15):
            os.kill(plugin, signal.SIGKILL)  # C auditd plugins may outlive it
    assert_events_once_in_order(nats.urls, "pytest-c-node", EVENTS, daemon_dir.log)
