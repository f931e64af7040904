"""What each process loads: no asyncio (the own loop, system.evloop), no ssl without TLS,
builtins only when configured, and the syslog handler that replaces logging.handlers.

No figure is checked (memory depends on the interpreter and the machine; bench/bench.py
reports it): what is checked is which libraries and modules are there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditpy.system.logsetup import DevLogHandler

from .conftest import free_port, listening, wait_for

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_no_program_loads_asyncio() -> None:
    """Every program runs on auditpy's own loop (system.evloop): none of their modules, the
    network ones included, brings in asyncio or concurrent.futures; nor argparse (their
    options are parsed by system.cmdline)."""
    result = _run("""
        import sys
        import auditpy.auditd.cli, auditpy.auditd.daemon, auditpy.auditd.listener
        import auditpy.auditd.metrics, auditpy.auditd.collector, auditpy.audispd.main
        import auditpy.audispd.dispatcher, auditpy.audispd.builtin_nats
        import auditpy.audisp_remote.plugin, auditpy.audisp_nats.plugin
        import auditpy.audisp_json.plugin
        loaded = [m for m in ("asyncio", "concurrent.futures", "argparse") if m in sys.modules]
        assert not loaded, loaded
    """, "-S", PYTHONPATH=str(SRC))
    assert result.returncode == 0, result.stderr


def _libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {Path(line.split()[-1]).name for line in f if "/" in line}


@pytest.mark.skipif(os.geteuid() != 0, reason="pyauditd runs as root")
def test_daemon_and_dispatcher_load_no_ssl_without_tls(tmp_path: Path) -> None:
    """pyauditd (listening on plain TCP) and its pyaudispd (a plugin program): neither maps
    libssl, and the dispatcher loads none of the builtins it was not asked for."""
    conf = tmp_path / "etc"
    (conf / "plugins.d").mkdir(parents=True)
    (tmp_path / "log").mkdir(mode=0o700)
    (tmp_path / "run").mkdir()
    port = free_port()
    (conf / "auditd.conf").write_text(
        f"local_events = no\nlog_file = {tmp_path}/log/audit.log\n"
        f"plugin_dir = {conf}/plugins.d\nspace_left = 2\nadmin_space_left = 1\n"
        f"tcp_listen_port = {port}\n")
    (conf / "plugins.d" / "cat.conf").write_text(
        "active = yes\ndirection = out\npath = /bin/cat\ntype = always\nformat = string\n")
    for path in (conf / "auditd.conf", conf / "plugins.d" / "cat.conf"):
        path.chmod(0o640)
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditpy.auditd", "-n", "-s", "nochange", "-c", str(conf),
         "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        wait_for(lambda: listening(port), 30, "the listener")

        def dispatcher() -> int | None:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                kids = [int(pid) for pid in f.read().split()]
            return next((k for k in kids if b"audispd" in Path(f"/proc/{k}/cmdline")
                         .read_bytes()), None)

        child = wait_for(dispatcher, 30, "the dispatcher")
        wait_for(lambda: any("cat" in Path(f"/proc/{k}/comm").read_text() for k in
                             Path(f"/proc/{child}/task/{child}/children").read_text().split()),
                 30, "the plugin")
        log = tmp_path / "log" / "audit.log"
        with socket.create_connection(("127.0.0.1", port)):  # the plain TCP path runs
            wait_for(lambda: b"type=DAEMON_ACCEPT" in log.read_bytes(), 30, "the accept")
        for pid in (proc.pid, child):
            libraries = _libraries(pid)
            assert not [lib for lib in libraries if lib.startswith(("libssl", "_ssl"))], pid
            assert not [lib for lib in libraries if lib.startswith("_asyncio")], pid
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_the_dispatcher_imports_builtins_only_when_configured() -> None:
    result = _run("""
        import sys
        from auditpy.audispd.dispatcher import make_runner
        assert not [m for m in sys.modules if m.startswith(
            ("auditpy.audispd.builtin_", "auditpy.nats", "auditpy.jsonout", "auditpy.events"))]
    """, PYTHONPATH=str(SRC))
    assert result.returncode == 0, result.stderr


def test_the_daemon_imports_what_a_configuration_needs_only_when_configured() -> None:
    """pyauditd's modules, as its start imports them, and pyaudispd's: no network listener,
    collector, metrics server or address parser (ipaddress) before a configuration asks for
    one, no random (hashlib) for the serials, no argparse (system.cmdline parses), and no
    typing, dataclasses or inspect, neither
    with the listener, metrics, ENRICHED or builtin_json configured (types are for the type
    checker, records come from auditpy.structs). Without site: this
    machine's .pth files import some of these themselves."""
    result = _run("""
        import sys
        before = set(sys.modules)
        import auditpy.auditd.cli, auditpy.auditd.daemon, auditpy.config.plugins
        from auditpy.config.auditd_conf import metrics_address
        import auditpy.audispd.main, auditpy.audispd.dispatcher
        loaded = [m for m in ("ssl", "ipaddress", "random", "hashlib", "auditpy.auditd.listener",
                              "auditpy.auditd.collector", "auditpy.auditd.metrics",
                              "auditpy.nats", "typing", "dataclasses", "inspect", "asyncio",
                              "argparse", "gettext")
                  if m in sys.modules and m not in before]
        assert not loaded, loaded
        assert metrics_address("[::1]:9101").host == "::1" and "ipaddress" in sys.modules
        import auditpy.auditd.listener, auditpy.auditd.metrics  # plain TCP, metrics
        import auditpy.proto.enrich  # log_format = ENRICHED
        import auditpy.audispd.builtin_json  # whole events as JSON in the dispatcher
        heavy = [m for m in ("typing", "dataclasses", "inspect") if m in sys.modules]
        assert not heavy, heavy
    """, "-S", PYTHONPATH=str(SRC))
    assert result.returncode == 0, result.stderr


def test_parsers_never_load_shutil_and_its_compression_libraries() -> None:
    """argparse's own help formatter imports shutil (zlib, bz2, lzma) for the terminal's
    width; both daemons' parsers parse, and the shared one wraps help at $COLUMNS as
    argparse does, without."""
    result = _run("""
        import sys
        from auditpy.auditd.cli import parse_args
        from auditpy.audispd.main import _parser
        from auditpy.system.cmdline import argument_parser
        assert parse_args(["-f", "-c", "/x"]).config_dir == "/x"
        assert _parser().parse_args(["-f"]).foreground
        def help_text(parser):
            parser.add_argument("--long-option", help="words " * 30)
            return parser.format_help()
        ours = help_text(argument_parser("prog", "a description " * 8))
        loaded = [m for m in ("shutil", "zlib", "bz2", "lzma") if m in sys.modules]
        assert not loaded, loaded
        import argparse
        assert ours == help_text(argparse.ArgumentParser("prog", None, "a description " * 8))
        assert len(ours.splitlines()) > 10 and max(map(len, ours.splitlines())) < 40, ours
    """, "-S", PYTHONPATH=str(SRC), COLUMNS="40")
    assert result.returncode == 0, result.stderr


def test_devlog_handler_sends_as_syslog_handler_did(tmp_path: Path) -> None:
    import logging
    import syslog

    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    handler = DevLogHandler(path)
    handler.setFormatter(logging.Formatter("prog[1]: %(message)s"))
    logger = logging.getLogger("test_devlog")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error("one é")
        assert server.recv(1024) == (
            f"<{syslog.LOG_DAEMON | syslog.LOG_ERR}>prog[1]: one é\0".encode())
        # the syslog daemon restarts: a new socket at the same path
        server.close()
        os.unlink(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        logger.warning("two")
        assert server.recv(1024) == f"<{syslog.LOG_DAEMON | syslog.LOG_WARNING}>prog[1]: two\0" \
            .encode()
    finally:
        logger.removeHandler(handler)
        handler.close()
        server.close()
    with pytest.raises(OSError):
        DevLogHandler(str(tmp_path / "absent"))
