"""SpacePolicy with fake statvfs numbers: thresholds, once semantics, re-arming."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from auditpy.auditd.diskspace import (
    MIB,
    SpaceEvent,
    SpacePolicy,
    SpaceSettings,
    Trigger,
    free_mib,
    percent_to_mib,
)

BLOCK = 4096
PER_MIB = MIB // BLOCK


class FakeStatvfs(NamedTuple):
    f_bsize: int
    f_frsize: int
    f_blocks: int
    f_bavail: int


def fs(total_mib: float, free: float, *, frsize: int = BLOCK) -> FakeStatvfs:
    return FakeStatvfs(
        f_bsize=frsize,
        f_frsize=frsize,
        f_blocks=int(total_mib * MIB // frsize),
        f_bavail=int(free * MIB // frsize),
    )


def policy(**kw: object) -> SpacePolicy:
    base: dict[str, object] = {
        "space_left": 75,
        "space_left_action": "SYSLOG",
        "admin_space_left": 50,
        "admin_space_left_action": "SUSPEND",
        "disk_full_action": "SUSPEND",
        "disk_error_action": "SUSPEND",
    }
    base.update(kw)
    return SpacePolicy(SpaceSettings(**base))  # type: ignore[arg-type]


def events(triggers: list[Trigger]) -> list[tuple[str, str]]:
    return [(t.event.value, t.action) for t in triggers]


def test_units() -> None:
    st = fs(2048, 100)
    assert free_mib(st) == 100
    assert percent_to_mib(25, st) == 512
    odd = FakeStatvfs(f_bsize=65536, f_frsize=1024, f_blocks=10 * 1024, f_bavail=3 * 1024)
    assert free_mib(odd) == 3  # f_frsize is the unit of f_bavail, not f_bsize


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SpaceSettings(space_left_action="EXPLODE")
    with pytest.raises(ValueError):
        SpaceSettings(space_left=150, space_left_percent=True)


def test_nothing_above_thresholds() -> None:
    p = policy()
    assert p.evaluate(1000, 1000 * PER_MIB) == []
    assert not p.space_warning and not p.admin_space_warning


def test_space_left_fires_once_then_admin() -> None:
    p = policy(space_left_action="EMAIL")
    assert events(p.evaluate(70, 70 * PER_MIB)) == [("space_left", "EMAIL")]
    assert p.evaluate(69, 69 * PER_MIB) == []
    assert p.space_warning
    assert events(p.evaluate(40, 40 * PER_MIB)) == [("admin_space_left", "SUSPEND")]
    assert p.evaluate(30, 30 * PER_MIB) == []
    # recovery does not re-arm EMAIL / SUSPEND ...
    assert p.evaluate(500, 500 * PER_MIB) == []
    assert p.evaluate(40, 40 * PER_MIB) == []
    # ... but SIGUSR2 does
    p.reset()
    assert events(p.evaluate(40, 40 * PER_MIB)) == [
        ("space_left", "EMAIL"),
        ("admin_space_left", "SUSPEND"),
    ]


def test_syslog_rearms_when_space_recovers() -> None:
    p = policy()
    assert events(p.evaluate(70, 70 * PER_MIB)) == [("space_left", "SYSLOG")]
    assert p.evaluate(70, 70 * PER_MIB) == []
    assert p.evaluate(80, 80 * PER_MIB) == []
    assert not p.space_warning
    assert events(p.evaluate(70, 70 * PER_MIB)) == [("space_left", "SYSLOG")]


def test_rotate_repeats() -> None:
    p = policy(space_left_action="ROTATE")
    for _ in range(3):
        assert events(p.evaluate(70, 70 * PER_MIB)) == [("space_left", "ROTATE")]


def test_ignore_latches_without_trigger() -> None:
    p = policy(space_left_action="IGNORE")
    assert p.evaluate(70, 70 * PER_MIB) == []
    assert p.space_warning


def test_disk_full_from_sample_skips_thresholds_and_fires_once() -> None:
    p = policy()
    assert events(p.evaluate(0.01, 4)) == [("disk_full", "SUSPEND")]
    assert p.evaluate(0.01, 4) == []
    assert p.disk_full() == []  # ENOSPC from a write is the same condition
    assert not p.space_warning  # C evaluates the thresholds only when not full
    # space came back, then a write hits ENOSPC again: news again
    assert events(p.evaluate(70, 70 * PER_MIB)) == [("space_left", "SYSLOG")]
    assert events(p.disk_full()) == [("disk_full", "SUSPEND")]


def test_disk_full_ignore_still_triggers_and_rotate_repeats() -> None:
    assert events(policy(disk_full_action="IGNORE").disk_full()) == [("disk_full", "IGNORE")]
    p = policy(disk_full_action="ROTATE")
    assert len(p.disk_full() + p.disk_full() + p.evaluate(0, 0)) == 3


def test_exactly_five_blocks_is_not_full() -> None:
    p = policy(space_left=0, admin_space_left=0)
    assert p.evaluate(5 * BLOCK / MIB, 5) == []
    assert events(p.evaluate(4 * BLOCK / MIB, 4)) == [("disk_full", "SUSPEND")]


def test_disk_error_syslog_limit() -> None:
    p = policy(disk_error_action="SYSLOG")
    fired = sum(len(p.disk_error()) for _ in range(10))
    assert fired == 5
    p.write_ok()
    assert events(p.disk_error()) == [("disk_error", "SYSLOG")]
    p2 = policy(disk_error_action="SUSPEND")
    assert sum(len(p2.disk_error()) for _ in range(10)) == 10
    assert policy(disk_error_action="IGNORE").disk_error() == []


def test_percent_thresholds_resolve_from_statvfs() -> None:
    p = policy(
        space_left=25,
        space_left_percent=True,
        admin_space_left=10,
        admin_space_left_percent=True,
    )
    assert not p.resolved
    assert p.evaluate(1, 1 * PER_MIB) == []  # unresolved percentages never fire
    # 2 GiB file system: 25% = 512 MiB, 10% = 204.8 MiB
    assert events(p.evaluate_statvfs(fs(2048, 500))) == [("space_left", "SYSLOG")]
    assert p.resolved
    assert p.space_left_mib == 512 and p.admin_space_left_mib == pytest.approx(204.8)
    assert events(p.evaluate_statvfs(fs(2048, 200))) == [("admin_space_left", "SUSPEND")]


def test_configure_rearms_and_recomputes() -> None:
    p = policy()
    p.evaluate(40, 40 * PER_MIB)
    assert p.space_warning and p.admin_space_warning
    new = SpaceSettings(
        space_left=10,
        space_left_percent=True,
        space_left_action="SYSLOG",
        admin_space_left=30,
        admin_space_left_action="HALT",
        disk_full_action="SUSPEND",
    )
    p.configure(new, fs(1000, 40))
    assert not p.space_warning and not p.admin_space_warning
    assert p.space_left_mib == 100
    assert events(p.evaluate(20, 20 * PER_MIB)) == [
        ("space_left", "SYSLOG"),
        ("admin_space_left", "HALT"),
    ]


def test_event_values_match_action_kinds() -> None:
    from auditpy.auditd.actions import ActionKind

    for ev in SpaceEvent:
        assert ActionKind(ev.value).value == ev.value
