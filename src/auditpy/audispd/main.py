"""pyaudispd's command line and start-up (`python3 -m auditpy.audispd`, ``pyaudispd``).

Messages go to stderr with -f or when stderr is a terminal, otherwise to syslog (/dev/log,
falling back to stderr), under the logger "auditpy.audispd". Options hidden from --help
exist for tests: --init-path (never run the real init), --stable-after, --backoff-initial,
--backoff-max, --stop-timeout, --shutdown-timeout and --report-interval (seconds).

The first instructions of `main` make the process what a dispatcher must be before anything
can go wrong: pyauditd starts it with every catchable signal blocked (so a signal sent
while it starts waits instead of killing it), and the mask becomes exactly the signals the
dispatcher handles, which stay blocked for good and are read from a signalfd; every
descriptor it inherited is made close-on-exec, so no plugin inherits one; and its
oom_score_adj goes back to 0, since pyauditd's -1000 would make it and every plugin
unkillable by the OOM killer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from auditpy.audispd.dispatcher import (
    HANDLED_SIGNALS,
    REPORT_INTERVAL,
    SHUTDOWN_TIMEOUT,
    Dispatcher,
    Options,
)
from auditpy.audispd.runner import BACKOFF_INITIAL, BACKOFF_MAX, STABLE_AFTER, STOP_TIMEOUT
from auditpy.system import evloop
from auditpy.system.children import INIT_PATH
from auditpy.system.cmdline import HIDDEN, OptionParser, argument_parser
from auditpy.system.logsetup import message_handler
from auditpy.system.service import hold_signals, seal_inherited_fds, set_oom_score_adj

log = logging.getLogger("auditpy.audispd")


def _parser() -> OptionParser:
    parser = argument_parser("pyaudispd", "audit event dispatcher: feeds records to plugins")
    parser.add_argument("-c", "--config-dir", default="/etc/audit", help="auditd.conf directory")
    parser.add_argument("--base-dir", default="/", help="anchor for relative paths")
    parser.add_argument("--run-dir", default="/var/run", help="where audispd.state goes")
    parser.add_argument("-f", "--foreground", action="store_true", help="messages to stderr")
    parser.add_argument("-d", "--debug", action="store_true", help="debug messages")
    hidden = HIDDEN
    # Test hooks: never run the real init, and shorten timers.
    parser.add_argument("--init-path", default=INIT_PATH, help=hidden)
    parser.add_argument("--stable-after", type=float, default=STABLE_AFTER, help=hidden)
    parser.add_argument("--backoff-initial", type=float, default=BACKOFF_INITIAL, help=hidden)
    parser.add_argument("--backoff-max", type=float, default=BACKOFF_MAX, help=hidden)
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, help=hidden)
    parser.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT, help=hidden)
    parser.add_argument("--report-interval", type=float, default=REPORT_INTERVAL, help=hidden)
    return parser


def _setup_logging(foreground: bool, debug: bool) -> None:
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    log.addHandler(message_handler(
        "pyaudispd", foreground or sys.stderr.isatty(),
        stderr_format="pyaudispd: %(levelname)s: %(message)s",
    ))


async def _amain(options: Options) -> int:
    dispatcher = Dispatcher(evloop.running_loop(), options)
    return await dispatcher.run()


def main(argv: Sequence[str] | None = None) -> int:
    hold_signals(HANDLED_SIGNALS, only=True)
    seal_inherited_fds()
    oom_reset = set_oom_score_adj(0)
    args = _parser().parse_args(argv)
    _setup_logging(args.foreground, args.debug)
    if not oom_reset:
        log.warning("cannot set oom_score_adj to 0: plugins inherit the parent's")
    options = Options(
        config_dir=os.path.join(args.base_dir, args.config_dir),
        base_dir=args.base_dir,
        run_dir=os.path.join(args.base_dir, args.run_dir),
        init_path=args.init_path,
        stable_after=args.stable_after,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        stop_timeout=args.stop_timeout,
        shutdown_timeout=args.shutdown_timeout,
        report_interval=args.report_interval,
    )
    try:
        return evloop.run(_amain(options))
    except Exception:
        log.exception("pyaudispd failed")
        return 1
