"""The loss ledger's clock: what the daemon learns once a second (the dispatcher's and the
plugins' drops, the kernel's counters) turned into losses, which are said through a
callback.

Figures from elsewhere are counters that only grow, so each is kept as last seen and only
its growth is a loss. The daemon keeps the task that sleeps and the kernel requests (it
owns the request thread and knows when the record stream has settled); this class only
takes what they found, so it can be fed by tests without a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from auditpy.auditd.ledger import Cause, LossReporter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from auditpy.auditd.dispatch_link import DispatcherLink
    from auditpy.proto.netlink import AuditStatus


class LossTicker:
    """Losses noted as they are found, and said as `LossReporter` decides (the first few
    one by one, then summaries per interval) through `say`."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self.losses = LossReporter()
        self._dispatcher_dropped_seen = 0
        self._plugin_dropped_seen: dict[str, int] = {}
        #: the kernel's status when last asked, and when (the state report's figures)
        self._kernel_status: tuple[AuditStatus, float] | None = None
        #: the kernel's lost counter when first asked, and its backlog's high-water mark
        self._kernel_lost_at_start: int | None = None
        self._kernel_lost_seen = 0
        self.kernel_backlog_max = 0

    def note(self, cause: str, count: int) -> None:
        for text in self.losses.note(cause, count):
            self._say(text)

    def tick(self, now: float, link: DispatcherLink | None) -> None:
        """The dispatcher's and the plugins' drops since the last tick, then the summaries
        that are due."""
        if link is not None and link.records_dropped > self._dispatcher_dropped_seen:
            self.note(Cause.DISPATCHER.value,
                      link.records_dropped - self._dispatcher_dropped_seen)
            self._dispatcher_dropped_seen = link.records_dropped
        if link is not None:
            for name, figures in link.plugin_figures.items():
                dropped = figures.get("dropped", 0)
                seen = self._plugin_dropped_seen.get(name, 0)
                if dropped > seen:
                    self.note(f"{Cause.PLUGIN.value}:{name}", dropped - seen)
                    self._plugin_dropped_seen[name] = dropped
        for text in self.losses.tick(now):
            self._say(text)

    def kernel_figures(self, status: AuditStatus) -> None:
        """Its lost records since we started are a cause of loss; its backlog's highest
        value seen is kept (sampled, not exact)."""
        self._kernel_status = (status, time.time())
        self.kernel_backlog_max = max(self.kernel_backlog_max, status.backlog)
        if self._kernel_lost_at_start is None:
            self._kernel_lost_at_start = self._kernel_lost_seen = status.lost
        elif status.lost > self._kernel_lost_seen:
            self.note(Cause.KERNEL.value, status.lost - self._kernel_lost_seen)
            self._kernel_lost_seen = status.lost

    @property
    def kernel_status(self) -> AuditStatus | None:
        return self._kernel_status[0] if self._kernel_status else None

    @property
    def kernel_asked(self) -> tuple[AuditStatus, float] | None:
        """The kernel's status when last asked, and when (time.time())."""
        return self._kernel_status
