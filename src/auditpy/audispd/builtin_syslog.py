"""The ``builtin_syslog`` plugin: every record as one syslog message, inside pyaudispd.

2.x audispd ran this builtin in-process; 3.0 moved it to ``/sbin/audisp-syslog`` (which
also works as an ordinary external plugin here).  The builtin behaves like the 2.7.8+ one:
arguments are a ``LOG_*`` priority and facility (defaults LOG_INFO, LOG_USER), the first
0x1D (the ENRICHED separator) becomes a space, EOE records are not sent, and each record is
one syslog() call under the ident "audispd".  syslog() can block when the log daemon is
stuck; that is accepted, as in C, because the alternative is losing records silently.
"""

from __future__ import annotations

import logging
import syslog

from auditpy.audispd.runner import PluginRunner, Record, RunnerContext, State
from auditpy.config.plugins import PluginConfig, parse_syslog_args
from auditpy.proto.records import AUDIT_EOE

log = logging.getLogger("auditpy.audispd")

IDENT = "audispd"


def syslog_text(record: Record) -> str:
    """What one record becomes in syslog (no newline, the first 0x1D a space)."""
    line = record.line().rstrip(b"\n").replace(b"\x1d", b" ", 1)
    line = line.split(b"\0", 1)[0]  # syslog("%s") stops at a NUL
    return line.decode("utf-8", "backslashreplace")


class SyslogPlugin(PluginRunner):
    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        super().__init__(config, ctx)
        self.priority = syslog.LOG_INFO
        self.facility = syslog.LOG_USER

    def describe(self) -> str:
        return " ".join(["builtin syslog", *self.config.args])

    def start(self) -> None:
        if self.ctx.shutting_down:
            return
        try:
            args = parse_syslog_args(self.config.args)
        except ValueError as exc:  # checked at load already; kept for direct use
            log.error("plugin %s not started: %s", self.name, exc)
            self.state = State.FAILED
            return
        self.priority, self.facility = args.priority, args.facility
        syslog.openlog(IDENT, 0, self.facility)
        self.state = State.RUNNING
        log.info("plugin %s started: %s", self.name, self.describe())

    def offer(self, record: Record) -> bool:
        if self.state is not State.RUNNING:
            self.dropped += 1  # a builtin has no queue to hold records until it runs
            return True
        if record.msg_type == AUDIT_EOE:
            return True
        syslog.syslog(self.priority | self.facility, syslog_text(record))
        self.delivered += 1
        return True

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = 0.0, keep: bool = False
    ) -> list[Record]:
        self.state = State.STOPPED
        log.info("plugin %s stopped; %d records delivered", self.name, self.delivered)
        return []
