"""Where pyaudisp-remote's messages go, and how often a repeated one may go there.

The plugin has no log file of its own: like the C audisp-remote it writes to syslog, and to
stderr, which the dispatcher keeps as its own log.  The rate limit is a separate, clock-driven
object so that the delivery core (which must not read the real clock) can use it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from auditpy.system.logsetup import PluginLog

PROG: Final = "pyaudisp-remote"

#: The signature every part of the plugin logs through: (syslog priority, message).
LogFunc = Callable[[int, str], None]


def Log(*, use_syslog: bool = True) -> PluginLog:
    """pyaudisp-remote's messages (see `PluginLog`)."""
    return PluginLog(PROG, use_syslog=use_syslog)


class RateLimit:
    """Repeated failures (a server down for hours) are logged once per `every` seconds and
    key, not once per try."""

    def __init__(self, clock: Callable[[], float], every: float = 60.0) -> None:
        self._clock = clock
        self._every = every
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        if now - self._last.get(key, now - self._every) >= self._every:
            self._last[key] = now
            return True
        return False
