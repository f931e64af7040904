"""The `pyaudisp-remote` command: hold the signals, read the options and the configuration,
run the plugin.

Its first instruction blocks the signals the plugin handles (`signals.HANDLED_SIGNALS`), and
only then is anything slow imported: a SIGHUP, USR1, USR2 or TERM sent while the plugin is
still starting waits for its loop, which reads it from a signalfd, instead of killing it with
the default action (issue #15).  They stay blocked until the process ends.  This module
imports nothing heavy at its top for the same reason.

Exit status: 0 after EOF on stdin once everything was delivered (or, in forward mode, kept
on disk for the next start), and after SIGTERM or SIGINT; 1 for a configuration error, the
``stop`` action, a queue file that cannot be used, unreadable input, or immediate-mode
records abandoned at exit; 2 for a usage error.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from auditpy.audisp_remote.signals import HANDLED_SIGNALS


def main(argv: Sequence[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    from auditpy.system.service import hold_signals

    hold_signals(HANDLED_SIGNALS)

    import syslog

    from auditpy.audisp_remote.log import PROG, Log
    from auditpy.audisp_remote.plugin import RemotePlugin
    from auditpy.config.errors import ConfigError
    from auditpy.config.remote_conf import DEFAULT_CONFIG, load_remote_conf
    from auditpy.system import evloop
    from auditpy.system.cmdline import argument_parser
    from auditpy.system.service import seal_inherited_fds

    parser = argument_parser(
        PROG, "Audit dispatcher plugin sending records to a remote auditd.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and exit")
    parser.add_argument("--no-syslog", action="store_true",
                        help="log to stderr only")
    args = parser.parse_args(argv)
    log = Log(use_syslog=not args.no_syslog)
    try:
        parsed = load_remote_conf(args.config)
    except ConfigError as exc:
        for problem in exc.errors:
            log(syslog.LOG_ERR, str(problem))
        return 1
    for problem in parsed.warnings:
        log(syslog.LOG_WARNING, str(problem))
    if args.check:
        return 0
    # Nothing this process inherited (beyond 0-2) may leak into the helpers it starts.
    seal_inherited_fds()
    plugin = RemotePlugin(args.config, parsed, log)
    return evloop.run(plugin.run())
