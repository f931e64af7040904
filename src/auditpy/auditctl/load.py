"""Applying a checked rule set to the kernel, all or nothing.

Order: the buffer settings (-b, -r, --backlog_wait_time) first, so that a burst while rules
change is buffered; then the rules; then, only once every rule is in, the settings that
cannot be taken back or make the kernel panic: -f, --loginuid-immutable, and -e last (with
`-e 2` nothing can be changed until reboot, so it must never lock in half a rule set).

If the kernel refuses a rule, everything this load changed is undone: the rules it added are
deleted, the rules it deleted are added back in their order, the settings put back; the
result is compared with the rule list read before, byte for byte.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

from auditpy.auditctl.link import Link
from auditpy.proto.netlink import (
    AUDIT_FEATURE_LOGINUID_IMMUTABLE,
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_ENABLED,
    STATUS_FAILURE,
    STATUS_RATE_LIMIT,
    AuditFeatures,
    AuditStatus,
)
from auditpy.rules import data as d
from auditpy.rules.listing import format_rule
from auditpy.rules.parse import Environment
from auditpy.rules.ruleset import Plan, Problem, build_plan, version_key
from auditpy.structs import dataclass, field

__all__ = ["build_plan"]

DEFAULT_RULES_DIR = "/etc/audit/rules.d"

_EARLY = {
    "backlog": (STATUS_BACKLOG_LIMIT, "backlog_limit"),
    "rate": (STATUS_RATE_LIMIT, "rate_limit"),
    "backlog_wait_time": (STATUS_BACKLOG_WAIT_TIME, "backlog_wait_time"),
}


class LoadError(Exception):
    """The load did not happen (or was undone); the message says why."""


def read_rules_dir(directory: str) -> list[tuple[str, str]]:
    """`*.rules` files of `directory` in augenrules' order (`ls -v`)."""
    if not os.path.isdir(directory):
        raise LoadError(f"No rules directory - {directory}")
    names = sorted((n for n in os.listdir(directory) if n.endswith(".rules")), key=version_key)
    out: list[tuple[str, str]] = []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            out.append((path, f.read()))
    return out


def read_rules_file(path: str) -> list[tuple[str, str]]:
    if not os.path.exists(path):
        raise LoadError(f"audit rules file {path} doesn't exist")
    if not os.path.isfile(path):
        raise LoadError(f"Error - {path} is not a regular file")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [(path, f.read())]


def environment_for(link: Link | None) -> Environment:
    env = Environment()
    if link is not None:
        env.features = link.get_status().feature_bitmap
    return env


@dataclass
class Applied:
    """What a load did, for the report."""

    added: int = 0
    deleted: int = 0
    settings: list[str] = field(default_factory=list)
    restored: bool = False


def _loaded(link: Link) -> tuple[list[bytes], list[d.Rule]]:
    raw = link.list_rules()
    return raw, [d.unpack_rule(r) for r in raw]


def apply_plan(link: Link, plan: Plan, *, log: Callable[[str], None] = lambda s: None
               ) -> Applied:
    """Make the kernel hold `plan.rules` and the plan's settings, or change nothing."""
    status = link.get_status()
    if status.enabled == 2:
        raise LoadError("The audit system is in immutable mode, no rule changes allowed")
    before_raw, before = _loaded(link)
    done = Applied()
    early_old = AuditStatus()
    early_new = AuditStatus()
    for name, (bit, attr) in _EARLY.items():
        if name in plan.settings:
            early_old.mask |= bit
            setattr(early_old, attr, getattr(status, attr))
            early_new.mask |= bit
            setattr(early_new, attr, plan.settings[name][0])
    if early_new.mask:
        link.set_status(early_new)
        done.settings += [f"{n} {plan.settings[n][0]}" for n in _EARLY if n in plan.settings]

    target = [p.rule for p in plan.rules]
    current = [d.canonical(r) for r in before]
    added: list[bytes] = []
    deleted: list[bytes] = []
    try:
        if _kept_prefix(current, target) is not None:
            seen: dict[int, int] = {}
            for r in current:
                seen[r.filter] = seen.get(r.filter, 0) + 1
            todo = []
            for p in plan.rules:
                if seen.get(p.rule.filter, 0):
                    seen[p.rule.filter] -= 1
                else:
                    todo.append(p)
        else:
            for raw in before_raw:
                link.delete_rule(raw)
                deleted.append(raw)
            todo = plan.rules
        for p in todo:
            packed = d.pack_rule(p.rule)
            try:
                link.add_rule(packed)
            except OSError as exc:
                reason = "Rule exists" if exc.errno == 17 else os.strerror(exc.errno or 0)
                raise LoadError(f"{p.where}: the kernel refused the rule ({reason}): "
                                f"{p.text}") from None
            added.append(packed)
    except BaseException:
        _undo(link, added, deleted, early_old, before_raw)
        done.restored = True
        raise
    done.added, done.deleted = len(added), len(deleted)

    # Only now the settings that must not hold half a rule set.
    if "failure" in plan.settings:
        value = plan.settings["failure"][0]
        link.set_status(AuditStatus(mask=STATUS_FAILURE, failure=value))
        done.settings.append(f"failure {value}")
    if plan.loginuid_immutable is not None:
        bit = 1 << AUDIT_FEATURE_LOGINUID_IMMUTABLE
        link.set_features(AuditFeatures(mask=bit, features=bit, lock=bit))
        done.settings.append("loginuid_immutable 1 locked")
    if plan.enable is not None:
        link.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=plan.enable[0]))
        done.settings.append(f"enabled {plan.enable[0]}")
    return done


def _kept_prefix(current: list[d.Rule], target: list[d.Rule]) -> int | None:
    """How many target rules are already loaded when the load only appends: the kernel
    lists rules by filter list, so that holds when, list by list, the loaded rules are the
    start of the target's. None: the lists differ and the load replaces everything."""
    lists = {r.filter for r in current}
    for f in lists:
        have = [r for r in current if r.filter == f]
        want = [r for r in target if r.filter == f]
        if want[: len(have)] != have:
            return None
    return len(current)


def _undo(link: Link, added: list[bytes], deleted: list[bytes], settings: AuditStatus,
          before_raw: list[bytes]) -> None:
    problems: list[str] = []
    for raw in reversed(added):
        try:
            link.delete_rule(raw)
        except OSError as exc:
            problems.append(f"could not delete an added rule: {exc}")
    current = link.list_rules()
    for raw in before_raw:
        if raw in current:
            continue
        try:
            link.add_rule(_as_add_request(raw))
        except OSError as exc:
            problems.append(f"could not put back {format_rule(d.unpack_rule(raw))}: {exc}")
    if settings.mask:
        link.set_status(settings)
    after = link.list_rules()
    if [d.unpack_rule(r) for r in after] != [d.unpack_rule(r) for r in before_raw]:
        problems.append("the rule list differs from the one read before the load")
    if problems:
        raise LoadError("restoring the previous rules failed: " + "; ".join(problems))


def _as_add_request(listed: bytes) -> bytes:
    """A listed rule as an add request: the same bytes (the kernel lists rules in the form
    it takes them), minus nothing."""
    return listed


def check_report(plan: Plan) -> list[str]:
    """What --check prints after the problems: what a load would do, in order."""
    lines = []
    files = len(plan.files)
    lines.append(f"{files} file{'s' if files != 1 else ''}, {len(plan.rules)} rules"
                 + (" (after deleting every loaded rule)" if plan.delete_all else ""))
    for name in ("backlog", "rate", "backlog_wait_time"):
        if name in plan.settings:
            value, where = plan.settings[name]
            lines.append(f"before the rules: {name} {value} ({where})")
    if "failure" in plan.settings:
        value, where = plan.settings["failure"]
        note = " (panic when audit fails)" if value == 2 else ""
        lines.append(f"after every rule is in: failure {value}{note} ({where})")
    if plan.loginuid_immutable is not None:
        lines.append(f"after every rule is in: loginuid_immutable, locked until reboot "
                     f"({plan.loginuid_immutable})")
    if plan.enable is not None:
        value, where = plan.enable
        note = " (immutable: no rule or setting can change until reboot)" if value == 2 else ""
        lines.append(f"last: enabled {value}{note} ({where})")
    return lines


def diff_lines(plan: Plan, loaded: list[d.Rule], status: AuditStatus,
               machine: int | None = None) -> list[str]:
    """The loaded rules against the files', in `auditctl -l` text, as a unified diff."""
    have = [format_rule(r, machine=machine) for r in loaded]
    want = [p.text for p in plan.rules]
    out = [line.rstrip("\n") for line in difflib.unified_diff(
        have, want, "loaded", "files", lineterm="")]
    for name, attr in (("backlog", "backlog_limit"), ("rate", "rate_limit"),
                       ("backlog_wait_time", "backlog_wait_time"), ("failure", "failure")):
        if name in plan.settings and plan.settings[name][0] != getattr(status, attr):
            out.append(f"{attr}: loaded {getattr(status, attr)}, files "
                       f"{plan.settings[name][0]} ({plan.settings[name][1]})")
    if plan.enable is not None and plan.enable[0] != status.enabled:
        out.append(f"enabled: loaded {status.enabled}, files {plan.enable[0]} "
                   f"({plan.enable[1]})")
    return out


def plan_for(files: list[tuple[str, str]], env: Environment, loaded: list[d.Rule] | None
             ) -> Plan:
    return build_plan(files, env, loaded)


def problems_text(problems: list[Problem], prefix: str = "") -> list[str]:
    return [f"{prefix}{p}" for p in problems]
