"""Where a daemon's own messages go: stderr in the foreground, syslog (daemon facility)
otherwise, and stderr again when there is no syslog socket, so nothing is said into a void."""

from __future__ import annotations

import logging
import logging.handlers
import sys


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
