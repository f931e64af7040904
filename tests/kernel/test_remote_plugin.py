"""Debian's audisp-remote, unmodified, as a plugin of pyaudispd: events sent through the
kernel reach a C auditd listening on loopback (local_events = no, so it does not register)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditpy.proto.netlink import AuditStatus

from ..conftest import free_port, listening, needs, wait_for
from .conftest import DaemonDir, RunningDaemon, auditctl, start_pyauditd

AUDISP_REMOTE = "/sbin/audisp-remote"
REMOTE_CONF = "/etc/audit/audisp-remote.conf"

pytestmark = [
    needs(AUDISP_REMOTE, "unshare", "mount"),
    pytest.mark.skipif(not os.path.exists(REMOTE_CONF),
                       reason=f"needs {REMOTE_CONF} (Debian package audispd-plugins)"),
]


@pytest.mark.parametrize("server_kind", [pytest.param("c", marks=needs("/sbin/auditd")), "py"])
def test_audisp_remote_plugin_delivers_every_event_to_a_log_server(
    kernel_state: AuditStatus, tmp_path: Path, daemon_dir: DaemonDir, load_generator: Path,
    server_kind: str,
) -> None:
    """pyauditd (registered) -> pyaudispd -> Debian's audisp-remote -> a log server that does
    not register (local_events = no): the C auditd, or pyauditd itself."""
    port = free_port()
    server = DaemonDir(tmp_path / "server")
    server.root.mkdir()
    for sub in (server.conf_dir, server.conf_dir / "plugins.d", server.log.parent,
                server.run_dir):
        sub.mkdir()
    server.write_config(extra=f"local_events = no\ntcp_listen_port = {port}\n"
                        "tcp_max_per_addr = 4\nuse_libwrap = no\n")
    argv = (["/sbin/auditd", "-n", "-c", str(server.conf_dir)] if server_kind == "c" else
            [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c",
             str(server.conf_dir), "--run-dir", str(server.run_dir)])
    with open(server.root / "daemon.err", "wb") as errors:
        c_server = subprocess.Popen(argv, stderr=errors)
    server_run = RunningDaemon(server, c_server)
    try:
        wait_for(lambda: listening(port), 10, f"the log server on port {port}",
                 context=server_run.stderr)
        remote_conf = tmp_path / "audisp-remote.conf"
        remote_conf.write_text(
            f"remote_server = 127.0.0.1\nport = {port}\ntransport = tcp\nmode = immediate\n"
            "queue_depth = 10240\nformat = managed\nnetwork_retry_time = 1\n"
            "max_tries_per_record = 3\nmax_time_per_record = 5\nheartbeat_timeout = 0\n"
            "network_failure_action = syslog\ndisk_low_action = ignore\n"
            "disk_full_action = warn_once\ndisk_error_action = warn_once\n"
            "remote_ending_action = reconnect\ngeneric_error_action = syslog\n"
            "generic_warning_action = syslog\nqueue_error_action = stop\n"
            "overflow_action = syslog\nstartup_failure_action = warn_once_continue\n"
        )
        os.chmod(remote_conf, 0o640)
        plugin = daemon_dir.conf_dir / "plugins.d" / "au-remote.conf"
        plugin.write_text(f"active = yes\ndirection = out\npath = {AUDISP_REMOTE}\n"
                          "type = always\nformat = string\n")
        os.chmod(plugin, 0o640)
        # a burst of 30,000 records: the queue must hold what audisp-remote has not sent yet
        daemon_dir.write_config(name_format="USER", name="pytest-client", q_depth="99999")
        # audisp-remote reads only /etc/audit/audisp-remote.conf: give it ours in a mount
        # namespace of the daemon's own, leaving the host's file alone.
        wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f'mount --bind "{remote_conf}" {REMOTE_CONF} && exec "$0" "$@"']
        daemon = start_pyauditd(daemon_dir, wrapper=wrapper)
        try:
            for i in range(50):
                auditctl("-m", f"pytest-remote-{i}")
            rule = ["always,exit", "-F", "arch=b64", "-S", "getppid", "-F",
                    f"exe={load_generator}", "-k", "pytest-remote"]
            auditctl("-a", *rule)
            try:
                subprocess.run([str(load_generator), "10000"], check=True)
            finally:
                auditctl("-d", *rule)

            def arrived(marker: str) -> list[str]:
                return [ln for ln in server.lines() if marker in ln]

            events = 'key="pytest-remote"'
            wait_for(lambda: len(arrived(events)) >= 10000 + 2, 60, "every event at the server",
                     context=lambda: server_run.stderr()[-2000:])
            syscalls = [ln for ln in arrived(events) if " type=SYSCALL " in ln]
            stamps = {ln.split("msg=audit(", 1)[1].split(")", 1)[0] for ln in syscalls}
            assert len(syscalls) == len(stamps) == 10000
            users = arrived("pytest-remote-")
            assert len(users) == 50
            assert all(ln.startswith("node=pytest-client type=") for ln in users + syscalls)
        finally:
            assert daemon.stop() == 0
    finally:
        server_run.stop()
