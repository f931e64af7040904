"""Where a daemon's own messages go: stderr in the foreground, syslog (daemon facility)
otherwise, and stderr again when there is no syslog socket, so nothing is said into a void."""

from __future__ import annotations

import contextlib
import logging
import socket
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
            syslog_handler = DevLogHandler()
        except OSError:
            pass
        else:
            syslog_handler.setFormatter(tagged)
            return syslog_handler
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(stderr_format) if stderr_format else tagged)
    return handler


#: logging levels as syslog priorities (what logging.handlers.SysLogHandler sends).
_PRIORITIES = {
    logging.DEBUG: syslog.LOG_DEBUG,
    logging.INFO: syslog.LOG_INFO,
    logging.WARNING: syslog.LOG_WARNING,
    logging.ERROR: syslog.LOG_ERR,
    logging.CRITICAL: syslog.LOG_CRIT,
}


class DevLogHandler(logging.Handler):
    """Messages as datagrams to /dev/log, daemon facility, as logging.handlers.SysLogHandler
    sends them (``<PRI>text`` and a NUL; the syslog daemon stamps the time), without that
    module and the pickle and queue modules it loads: 0.8 MiB of each daemon's memory.
    Raises OSError when there is no syslog socket to connect to."""

    def __init__(self, address: str = "/dev/log", facility: int = syslog.LOG_DAEMON) -> None:
        super().__init__()
        self.address = address
        self.facility = facility
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = max(lvl for lvl in (*_PRIORITIES, 0) if lvl <= record.levelno) \
                if record.levelno not in _PRIORITIES else record.levelno
            priority = _PRIORITIES.get(level, syslog.LOG_WARNING)
            data = f"<{self.facility | priority}>{self.format(record)}\0".encode(
                "utf-8", "backslashreplace")
            try:
                self.sock.send(data)
            except OSError:  # the syslog daemon restarted: once more on a new socket
                self.sock.close()
                self.sock = self._connect()
                self.sock.send(data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        super().close()


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
