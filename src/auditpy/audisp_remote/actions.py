"""The ``*_action`` policy of audisp-remote.conf(5): what each action means, as data.

`ActionPolicy.decide` is pure: given the setting that fired, its configured `Action` and the
message, it says what to log, what to run, whether to suspend or stop, and whether the record
concerned may leave the queue (the C plugin's return value).  The delivery core turns the
outcome into decisions; nothing here runs a program or writes a log line, so every action
kind is tested without a process and the policy cannot drift between call sites.

``warn_once`` and ``warn_once_continue`` remember which settings already warned; a delivered
record, SIGHUP and SIGUSR2 forget it (`forget_warnings`), as in the C plugin.
"""

from __future__ import annotations

import syslog

from auditpy.config.remote_conf import Action
from auditpy.structs import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action asks for.

    `dequeue`: the record concerned may leave the queue.  `log`: (priority, message).
    `run`: (program, argument) for ``exec``.  `runlevel`: "1" or "0" for init (``single``,
    ``halt``).  `suspend`: stop sending until SIGUSR2 or SIGHUP.  `stop`: exit with status 1.
    """

    dequeue: bool
    log: tuple[int, str] | None = None
    run: tuple[str, str] | None = None
    runlevel: str | None = None
    suspend: bool = False
    stop: bool = False


class ActionPolicy:
    def __init__(self) -> None:
        self._warned: set[str] = set()

    @property
    def warned(self) -> frozenset[str]:
        return frozenset(self._warned)

    def forget_warnings(self) -> None:
        """A record was delivered (or the operator intervened): warn again next time."""
        self._warned.clear()

    def decide(self, setting: str, action: Action, message: str) -> Outcome:
        kind = action.kind
        if kind == "ignore":
            return Outcome(True)
        if kind == "syslog":
            return Outcome(True, log=(syslog.LOG_WARNING, message))
        if kind == "exec":
            exe = action.exe or ""
            return Outcome(True, log=(syslog.LOG_WARNING, f"{message}; running {exe}"),
                           run=(exe, message))
        if kind in ("warn_once", "warn_once_continue"):
            dequeue = kind == "warn_once_continue"
            if setting in self._warned:
                return Outcome(dequeue)
            self._warned.add(setting)
            return Outcome(dequeue, log=(syslog.LOG_WARNING, f"{message} (further warnings "
                                         "suppressed until a record is delivered)"))
        if kind == "reconnect":
            return Outcome(False, log=(syslog.LOG_NOTICE, f"{message}; will reconnect"))
        if kind == "suspend":
            return Outcome(False, log=(syslog.LOG_ALERT, f"{message}; suspending remote "
                                       "logging (SIGUSR2 or SIGHUP resumes)"), suspend=True)
        if kind in ("single", "halt"):
            level = "1" if kind == "single" else "0"
            return Outcome(False, log=(syslog.LOG_ALERT, f"{message}; asking init for "
                                       f"runlevel {level}"), runlevel=level, suspend=True)
        if kind == "stop":
            return Outcome(False, log=(syslog.LOG_ERR, f"{message}; exiting ({setting} = stop)"),
                           stop=True)
        raise ValueError(f"{setting}: unknown action {kind!r}")
