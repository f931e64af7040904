"""Disk space policy: which space/full/error action fires, and when it may fire again.

Pure bookkeeping, no I/O: the daemon feeds it statvfs samples (from `AuditLog`) and write
errors, and runs the returned triggers with `actions.run_action`.  Keeping the "once"
rules here makes them testable with fake numbers and keeps them out of the write path.

Rules (C auditd 3.0.x, docs/auditd.conf.5 and the reference notes section 3.6):

* fewer than 5 available blocks -> disk_full_action (and the thresholds are not looked at);
* free < space_left MiB -> space_left_action, once; free < admin_space_left -> the admin
  action, once; each is evaluated independently, space_left first;
* "once" is re-armed by `reset()` (SIGUSR2 resume), by `configure()` (a reload that touched
  space settings) and, for the `syslog` action only, when space recovers above the
  threshold; the `rotate` action repeats on every sample below the threshold;
* disk full (from a sample or from ENOSPC) fires once until space recovers or `reset()`;
  `rotate` repeats here too;
* disk_error_action fires on every error, except `syslog`, which is silent after 5
  consecutive errors until a write succeeds (`write_ok()`).
"""

from __future__ import annotations

import enum

from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

MIB = 1024 * 1024
#: The C daemon never lets the log consume the last few blocks of the file system.
DISK_FULL_BLOCKS = 5
#: Consecutive disk error messages sent to syslog before going quiet.
DISK_ERROR_SYSLOG_LIMIT = 5

SPACE_ACTIONS = frozenset(
    {"IGNORE", "SYSLOG", "ROTATE", "EMAIL", "EXEC", "SUSPEND", "SINGLE", "HALT"}
)


if TYPE_CHECKING:
    class StatvfsLike(Protocol):
        """What the policy reads from os.statvfs_result (tests pass small fakes)."""

        @property
        def f_bsize(self) -> int: ...

        @property
        def f_frsize(self) -> int: ...

        @property
        def f_blocks(self) -> int: ...

        @property
        def f_bavail(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SpaceSettings:
    """The auditd.conf keys the policy needs; percent flags mean the number is 1..99 % of
    the file system size rather than MiB."""

    space_left: int = 0
    space_left_percent: bool = False
    space_left_action: str = "IGNORE"
    admin_space_left: int = 0
    admin_space_left_percent: bool = False
    admin_space_left_action: str = "IGNORE"
    disk_full_action: str = "IGNORE"
    disk_error_action: str = "SYSLOG"

    def __post_init__(self) -> None:
        for name in (
            "space_left_action",
            "admin_space_left_action",
            "disk_full_action",
            "disk_error_action",
        ):
            if getattr(self, name) not in SPACE_ACTIONS:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}")
        for name, pct in (
            ("space_left", self.space_left_percent),
            ("admin_space_left", self.admin_space_left_percent),
        ):
            value = getattr(self, name)
            if value < 0 or (pct and value > 100):
                raise ValueError(f"{name} out of range: {value}")


class SpaceEvent(enum.Enum):
    SPACE_LEFT = "space_left"
    ADMIN_SPACE_LEFT = "admin_space_left"
    DISK_FULL = "disk_full"
    DISK_ERROR = "disk_error"


@dataclass(frozen=True, slots=True)
class Trigger:
    """An action to run now; `event.value` is also the `actions.ActionKind` value."""

    event: SpaceEvent
    action: str


def block_size(st: StatvfsLike) -> int:
    """f_bavail and f_blocks count fragments (f_frsize); f_bsize is only a hint."""
    return st.f_frsize or st.f_bsize


def total_mib(st: StatvfsLike) -> float:
    return st.f_blocks * block_size(st) / MIB


def free_mib(st: StatvfsLike) -> float:
    """Space available to unprivileged writers, as the C daemon measures it (f_bavail)."""
    return st.f_bavail * block_size(st) / MIB


def percent_to_mib(percent: int, st: StatvfsLike) -> float:
    return total_mib(st) * percent / 100


class SpacePolicy:
    """Latches for the once-only actions, plus the resolved thresholds in MiB."""

    def __init__(self, settings: SpaceSettings, st: StatvfsLike | None = None) -> None:
        self._settings = settings
        self._space_left_mib: float | None = None
        self._admin_space_left_mib: float | None = None
        self._space_warning = False
        self._admin_warning = False
        self._full = False
        self._disk_errors = 0
        self.configure(settings, st)

    # ---------------------------------------------------------------- configuration

    @property
    def settings(self) -> SpaceSettings:
        return self._settings

    def configure(self, settings: SpaceSettings, st: StatvfsLike | None = None) -> None:
        """Start or reload: new thresholds, every latch re-armed, as the C daemon does when
        a reload changes any space setting.  Percentages stay unresolved until a statvfs
        sample is available (passed here or to `evaluate_statvfs`)."""
        self._settings = settings
        self._space_left_mib = None if settings.space_left_percent else settings.space_left
        self._admin_space_left_mib = (
            None if settings.admin_space_left_percent else settings.admin_space_left
        )
        self.reset()
        if st is not None:
            self.resolve(st)

    def resolve(self, st: StatvfsLike) -> None:
        """Turn percentages into MiB from the file system size (f_blocks * f_frsize)."""
        s = self._settings
        if s.space_left_percent:
            self._space_left_mib = percent_to_mib(s.space_left, st)
        if s.admin_space_left_percent:
            self._admin_space_left_mib = percent_to_mib(s.admin_space_left, st)

    @property
    def resolved(self) -> bool:
        return self._space_left_mib is not None and self._admin_space_left_mib is not None

    @property
    def space_left_mib(self) -> float:
        """0 (never fires) until a percentage is resolved."""
        return self._space_left_mib or 0.0

    @property
    def admin_space_left_mib(self) -> float:
        return self._admin_space_left_mib or 0.0

    def reset(self) -> None:
        """SIGUSR2 resume: everything may fire again."""
        self._space_warning = False
        self._admin_warning = False
        self._full = False
        self._disk_errors = 0

    # ----------------------------------------------------------------- state

    @property
    def space_warning(self) -> bool:
        """Below space_left (and its action ran); remote senders get DISKLOW acks then."""
        return self._space_warning

    @property
    def admin_space_warning(self) -> bool:
        return self._admin_warning

    @property
    def disk_full_reported(self) -> bool:
        return self._full

    @property
    def disk_errors(self) -> int:
        return self._disk_errors

    # ----------------------------------------------------------------- evaluation

    def evaluate_statvfs(self, st: StatvfsLike) -> list[Trigger]:
        if not self.resolved:
            self.resolve(st)
        return self.evaluate(free_mib(st), st.f_bavail)

    def evaluate(self, free_mib: float, bavail_blocks: int) -> list[Trigger]:
        """Actions to run for one free-space sample, in the order to run them."""
        s = self._settings
        if bavail_blocks < DISK_FULL_BLOCKS:
            return self.disk_full()
        self._full = False  # space came back: a later ENOSPC is news again

        out: list[Trigger] = []
        self._space_warning = self._threshold(
            free_mib < self.space_left_mib,
            self._space_warning,
            SpaceEvent.SPACE_LEFT,
            s.space_left_action,
            out,
        )
        self._admin_warning = self._threshold(
            free_mib < self.admin_space_left_mib,
            self._admin_warning,
            SpaceEvent.ADMIN_SPACE_LEFT,
            s.admin_space_left_action,
            out,
        )
        return out

    @staticmethod
    def _threshold(
        below: bool, warned: bool, event: SpaceEvent, action: str, out: list[Trigger]
    ) -> bool:
        """Returns the new latch value."""
        if below:
            if (not warned or action == "ROTATE") and action != "IGNORE":
                out.append(Trigger(event, action))
            return True
        if warned and action == "SYSLOG":
            return False
        return warned

    def disk_full(self) -> list[Trigger]:
        """ENOSPC from a write, fsync or rename, or a sample under 5 blocks.

        IGNORE still yields a trigger: the C daemon syslogs "no space left" even then.
        """
        action = self._settings.disk_full_action
        if self._full and action != "ROTATE":
            return []
        self._full = True
        return [Trigger(SpaceEvent.DISK_FULL, action)]

    def disk_error(self) -> list[Trigger]:
        """A write/flush/rotate error other than ENOSPC."""
        action = self._settings.disk_error_action
        if action == "IGNORE":
            return []
        if action == "SYSLOG":
            if self._disk_errors >= DISK_ERROR_SYSLOG_LIMIT:
                return []
            self._disk_errors += 1
        return [Trigger(SpaceEvent.DISK_ERROR, action)]

    def write_ok(self) -> None:
        """A write succeeded: the next disk error may be syslogged again.  Cheap enough to
        call after every batch, or only while `disk_errors` is non-zero."""
        self._disk_errors = 0
