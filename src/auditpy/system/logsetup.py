"""Where a daemon's own messages go: stderr in the foreground, syslog (daemon facility)
otherwise, and stderr again when there is no syslog socket, so nothing is said into a void."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import syslog
from collections.abc import Callable

#: syslog(3) priorities as logging levels, for messages written with the C daemon's
#: priorities (the log file, the actions); the three most urgent become CRITICAL, which the
#: syslog handler sends as LOG_CRIT.
SYSLOG_LEVELS = {
    syslog.LOG_EMERG: logging.CRITICAL,
    syslog.LOG_ALERT: logging.CRITICAL,
    syslog.LOG_CRIT: logging.CRITICAL,
    syslog.LOG_ERR: logging.ERROR,
    syslog.LOG_WARNING: logging.WARNING,
    syslog.LOG_NOTICE: logging.INFO,
    syslog.LOG_INFO: logging.INFO,
    syslog.LOG_DEBUG: logging.DEBUG,
}


def syslog_notifier(logger: logging.Logger) -> Callable[[int, str], None]:
    """A `notify(priority, text)` callback that logs `text` to `logger` at the level of the
    syslog `priority`."""

    def notify(priority: int, message: str) -> None:
        logger.log(SYSLOG_LEVELS.get(priority, logging.INFO), "%s", message)

    return notify


def message_handler(program: str, to_stderr: bool, *, stderr_format: str | None = None) -> (
    logging.Handler
):
    """A handler for `program`'s messages; `stderr_format` overrides the stderr layout."""
    tagged = logging.Formatter(f"{program}[%(process)d]: %(message)s")
    if not to_stderr:
        try:
            syslog_handler = logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            syslog_handler.setFormatter(tagged)
            # Python 3.11 keeps a closed socket instead of raising when /dev/log is absent.
            sock = getattr(syslog_handler, "socket", None)
            if sock is not None and sock.fileno() >= 0:
                return syslog_handler
            syslog_handler.close()
        except OSError:
            pass
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(stderr_format) if stderr_format else tagged)
    return handler


class PluginLog:
    """A plugin program's messages: to stderr (the dispatcher keeps it as its own log) and to
    syslog, as the C plugins' are; a failing sink is ignored, since logging must never stop
    delivery."""

    def __init__(self, program: str, *, use_syslog: bool = True) -> None:
        self._program = program
        self._use_syslog = use_syslog
        if use_syslog:
            syslog.openlog(program, syslog.LOG_PID, syslog.LOG_DAEMON)

    def __call__(self, priority: int, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{self._program}: {message}\n")
            sys.stderr.flush()
        if self._use_syslog:
            with contextlib.suppress(OSError, ValueError):
                syslog.syslog(priority, message)
