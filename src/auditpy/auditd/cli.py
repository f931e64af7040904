"""The `pyauditd` command: options, start-up checks, daemonizing, the pid file.

Exit codes are those of auditd(8): 1 start-up failure, 2 usage, 4 not privileged, 6 bad
configuration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace

from auditpy import __version__
from auditpy.auditd.signals import HANDLED_SIGNALS
from auditpy.config.auditd_conf import load_auditd_conf
from auditpy.config.errors import ConfigError
from auditpy.system.cmdline import argument_parser, stdout_gone
from auditpy.system.logsetup import message_handler

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PRIVILEGE = 4
EXIT_CONFIG = 6

log = logging.getLogger("auditpy")


def parse_args(argv: Sequence[str] | None) -> SimpleNamespace:
    parser = argument_parser("pyauditd", "The Linux audit daemon, in Python.")
    parser.add_argument("-f", dest="foreground", action="store_true",
                        help="stay in the foreground, messages to stderr")
    parser.add_argument("-n", dest="no_fork", action="store_true", help="do not fork")
    parser.add_argument("-l", dest="allow_symlink", action="store_true",
                        help="allow the configuration file to be a symlink")
    parser.add_argument("-c", dest="config_dir", default="/etc/audit", metavar="CONFIG_DIR",
                        help="read CONFIG_DIR/auditd.conf (default /etc/audit)")
    parser.add_argument("-s", dest="enable", choices=("enable", "disable", "nochange"),
                        default="enable", help="what to do with the kernel's enabled flag")
    parser.add_argument("--run-dir", default="/run", metavar="DIR",
                        help="where auditd.pid and auditd.state go (default /run)")
    parser.add_argument("--state", action="store_true",
                        help="ask the running daemon for its state report and ledger, print it")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print what is wrong, exit 0 or 1")
    parser.add_argument("--version", action="version", version=f"pyauditd {__version__}")
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        raise SystemExit(EXIT_USAGE if exc.code else 0) from None


def setup_logging(to_stderr: bool) -> None:
    root = logging.getLogger("auditpy")
    root.handlers[:] = [message_handler("pyauditd", to_stderr)]
    root.setLevel(logging.INFO)


def check(config_dir: str, allow_symlink: bool) -> int:
    path = os.path.join(config_dir, "auditd.conf")
    try:
        _config, warnings = load_auditd_conf(
            path, allow_symlink=allow_symlink, base_dir=os.getcwd()
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: configuration is valid")
    return 0


def state(run_dir: str, timeout: float = 10.0) -> int:
    """Ask the running daemon (SIGCONT, as `auditctl --signal CONT` does) for a fresh state
    report and print it: never a stale file."""
    pid_file = os.path.join(run_dir, "auditd.pid")
    state_file = os.path.join(run_dir, "auditd.state")
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        print(f"no running pyauditd: cannot read {pid_file}: {exc}", file=sys.stderr)
        return 1
    try:
        before = os.stat(state_file).st_mtime_ns
    except OSError:
        before = 0
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError as exc:
        print(f"cannot signal pyauditd (pid {pid}): {exc.strerror}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.stat(state_file).st_mtime_ns != before:
                with open(state_file) as f:
                    report = f.read()
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(f"pyauditd (pid {pid}) wrote no state report within {timeout:g} s",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    try:
        sys.stdout.write(report)
        sys.stdout.flush()
    except BrokenPipeError:  # `pyauditd --state | head`
        return stdout_gone()
    return 0


def daemonize() -> int:
    """Fork; the parent waits until the child reports that start-up succeeded (or why not),
    so that an init system sees a failure as the exit status of the command it ran."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as status_pipe:
            status = status_pipe.read(1)
        return status[0] if status else EXIT_FAILURE
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return -write_end - 1  # the child gets the pipe to report on, encoded as a negative


def write_pid_file(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: a SIGHUP (or any signal the daemon handles) sent while it is starting
    # waits for the daemon's loop instead of killing it.
    args = parse_args(argv)
    if args.check:
        return check(args.config_dir, args.allow_symlink)
    if args.state:
        return state(os.path.abspath(args.run_dir))
    # Before anything slow: a signal the daemon handles, sent while it is starting, waits
    # for the daemon's loop instead of killing it. Never undone: the process ends with it.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    from auditpy.system.service import hold_signals, seal_inherited_fds

    hold_signals(HANDLED_SIGNALS)
    seal_inherited_fds()
    # Not the daemon's loop yet: it is imported once the daemon is registered (startup).
    from auditpy.auditd.logfile import LogFileError
    from auditpy.auditd.startup import Options, load_config, register_early

    options = Options(
        config_dir=os.path.abspath(args.config_dir), foreground=args.foreground,
        no_fork=args.no_fork, enable=args.enable, run_dir=os.path.abspath(args.run_dir),
        allow_symlink=args.allow_symlink, base_dir=os.getcwd(),
    )
    setup_logging(to_stderr=args.foreground or args.no_fork)
    if os.geteuid() != 0:
        log.error("You must be root to run the audit daemon")
        return EXIT_PRIVILEGE
    try:
        config, warnings = load_config(options)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    for warning in warnings:
        log.warning("%s", warning)

    report_fd = None
    if not (args.foreground or args.no_fork):
        outcome = daemonize()
        if outcome >= 0:
            return outcome
        report_fd = -outcome - 1
        setup_logging(to_stderr=False)

    def report(code: int) -> None:
        nonlocal report_fd
        if report_fd is not None:
            os.write(report_fd, bytes([code]))
            os.close(report_fd)
            report_fd = None

    write_pid_file(options.pid_file)
    registered = register_early(config, options.enable)
    from auditpy.auditd.daemon import Daemon

    daemon = Daemon(options, config, registered=registered)
    try:
        try:
            daemon.start()
        except (OSError, TimeoutError, ValueError, LogFileError) as exc:
            log.error("Cannot start the audit daemon: %s", exc)
            daemon.shutdown()
            report(EXIT_FAILURE)
            return EXIT_FAILURE
        report(0)
        return daemon.run()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(options.pid_file)

