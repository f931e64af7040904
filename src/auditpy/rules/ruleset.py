"""A rules.d directory as one rule set: every file parsed, checked as a whole, planned.

augenrules concatenates `rules.d/*.rules` (version sort), moves the last `-D`, `-b` and `-f`
to the top and the last `-e` to the end, and hands the result to `auditctl -R`, which stops
at the first bad line with half the rules loaded. `build_plan()` reads the same files in the
same order and with the same moves, but reports every problem (file:line) before anything is
applied, and computes the exact rule list the kernel should end up with, so that a loader
can apply it all or restore what was there.
"""

from __future__ import annotations

import re

from auditpy.proto.syscalls import MACHINES, syscall_names
from auditpy.rules import data as d
from auditpy.rules.listing import format_rule
from auditpy.rules.parse import Command, Environment, RuleError, parse_args, split_rule_line
from auditpy.rules.tables import MACHINE_ELF
from auditpy.structs import dataclass, field

_MACHINE_BY_ELF = {elf: machine for machine, elf in MACHINE_ELF.items()}


@dataclass(frozen=True)
class Location:
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Problem:
    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class PlannedRule:
    rule: d.Rule
    where: Location
    text: str


@dataclass
class Plan:
    """What a rules directory asks for, checked.

    `rules` is the complete rule list the kernel should hold afterwards, in the kernel's
    listing order (by filter list, then position). `settings` are -b/-f/-r/
    --backlog_wait_time values (last one wins, as with augenrules), `enable` the final -e.
    """

    delete_all: bool = False
    rules: list[PlannedRule] = field(default_factory=list)
    settings: dict[str, tuple[int, Location]] = field(default_factory=dict)
    enable: tuple[int, Location] | None = None
    loginuid_immutable: Location | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    #: -c or -i in a file: bad lines are reported and left out instead of stopping it all.
    continue_on_error: bool = False
    ignore_errors: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors or self.continue_on_error or self.ignore_errors


def version_key(name: str) -> list[tuple[int, int | str]]:
    """`ls -v` order (augenrules): digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", name) if part]


_SETTINGS = {"backlog": "-b", "failure": "-f", "rate": "-r",
             "backlog_wait_time": "--backlog_wait_time"}


def build_plan(
    files: list[tuple[str, str]],
    env: Environment | None = None,
    loaded: list[d.Rule] | None = None,
    *,
    augenrules: bool = True,
) -> Plan:
    """Check `files` ((path, text) in load order) as one rule set.

    `loaded` is the kernel's current rule list: without a bare `-D` the files add to it (as
    augenrules does), so a rule already loaded is a duplicate. None means unknown (a check
    without the kernel): the plan then starts from an empty list.

    `augenrules`: a bare `-D` anywhere empties the list before the first rule (augenrules
    moves it to the top); otherwise (`-R FILE`) lines take effect in order, as in auditctl.
    """
    env = env or Environment()
    plan = Plan(files=[path for path, _ in files])
    located: list[tuple[Location, Command]] = []
    for path, text in files:
        for number, line in enumerate(text.split("\n"), 1):
            if len(line) >= 6143:
                plan.errors.append(Problem(Location(path, number),
                                           "line longer than auditctl reads (6143 bytes)"))
                continue
            tokens = split_rule_line(line)
            if tokens is None:
                continue
            where = Location(path, number)
            try:
                parsed = parse_args(["auditctl", *tokens], env, lineno=number)
            except RuleError as exc:
                plan.errors.append(Problem(where, str(exc)))
                continue
            plan.warnings += [Problem(where, w) for w in parsed.warnings]
            located += [(where, c) for c in parsed.commands]

    lists: dict[int, list[PlannedRule]] = {}
    if loaded is not None:
        unknown = Location("(kernel)", 0)
        if not any(c.op == "delete_all" and not c.text for _, c in located):
            for rule in loaded:
                lists.setdefault(rule.filter, []).append(
                    PlannedRule(rule, unknown, format_rule(rule, machine=env.machine)))
    for where, cmd in located:
        op = cmd.op
        if op == "delete_all":
            if cmd.text:
                for filt, planned in lists.items():
                    lists[filt] = [p for p in planned
                                   if not any(cmd.text in k for k in _key_texts(p.rule))]
            else:
                plan.delete_all = True
                if not augenrules:
                    lists.clear()
        elif op in _SETTINGS:
            plan.settings[op] = (cmd.value, where)
        elif op == "enable":
            plan.enable = (cmd.value, where)
        elif op == "loginuid_immutable":
            plan.loginuid_immutable = where
        elif op == "continue_errors":
            plan.continue_on_error = True
        elif op == "ignore_errors":
            plan.ignore_errors = True
        elif op in ("add", "delete") and cmd.rule is not None:
            _apply_rule(plan, lists, where, cmd, env)
        elif op == "deprecated":
            plan.warnings.append(Problem(where, cmd.text))
        else:
            plan.errors.append(Problem(where, f"{_op_text(op)} cannot be used in a rules file"))
    plan.rules = [p for filt in sorted(lists) for p in lists[filt]]
    _check_syscalls(plan, env)
    _check_unreachable(plan)
    order = {path: i for i, path in enumerate(plan.files)}
    plan.errors.sort(key=lambda p: (order.get(p.where.path, -1), p.where.line))
    return plan


def _op_text(op: str) -> str:
    return {"list": "-l", "status": "-s", "message": "-m", "signal": "--signal",
            "version": "-v", "help": "-h", "trim": "-t", "make_equivalent": "-q",
            "reset_lost": "--reset-lost",
            "reset_backlog_wait_time_actual": "--reset_backlog_wait_time_actual"}.get(op, op)


def _key_texts(rule: d.Rule) -> list[str]:
    return [(f.text or b"").decode("utf-8", "surrogateescape")
            for f in rule.field_values(d.AUDIT_FILTERKEY)]


def _apply_rule(plan: Plan, lists: dict[int, list[PlannedRule]], where: Location,
                cmd: Command, env: Environment) -> None:
    assert cmd.rule is not None
    rule = d.canonical(cmd.rule)
    planned = lists.setdefault(rule.filter, [])
    if cmd.op == "delete":
        for i, p in enumerate(planned):
            if p.rule == rule:
                del planned[i]
                return
        plan.errors.append(Problem(where, "no such rule to delete (the kernel would refuse: "
                                          "No such file or directory)"))
        return
    for p in planned:
        if p.rule == rule:
            first = "is already loaded" if p.where.line == 0 else f"is at {p.where}"
            plan.errors.append(Problem(where, f"duplicate rule: the same rule {first} "
                                              "(the kernel would refuse it: Rule exists)"))
            return
    entry = PlannedRule(rule, where, format_rule(rule, machine=env.machine))
    if cmd.prepend:
        planned.insert(0, entry)
    else:
        planned.append(entry)


def rule_machine(rule: d.Rule, env: Environment) -> int:
    """The libaudit machine whose syscall numbers the rule's mask uses."""
    arch = rule.arch
    if arch is None:
        return env.machine
    return _MACHINE_BY_ELF.get(arch, -1)


def _check_syscalls(plan: Plan, env: Environment) -> None:
    for p in plan.rules:
        rule = p.rule
        if rule.filter != d.AUDIT_FILTER_EXIT or rule.all_syscalls:
            continue
        machine = rule_machine(rule, env)
        if machine not in MACHINES:
            continue
        names = syscall_names(machine)
        missing = [nr for nr in rule.syscalls() if nr not in names]
        if missing:
            arch = "b64" if (rule.arch or 0) & d.ARCH_64BIT or rule.arch is None else "b32"
            listed = ",".join(str(nr) for nr in missing)
            plan.errors.append(Problem(p.where, f"syscall {listed} does not exist for "
                                                f"arch={arch}: the rule can never match it"))


def covers(first: d.Rule, later: d.Rule) -> bool:
    """True when every event `later` matches is matched by `first` too: same list, the
    first's syscalls include the later's, and each of the first's conditions (keys aside)
    is also one of the later's."""
    if first.filter != later.filter:
        return False
    if any(a & b != b for a, b in zip(first.mask, later.mask, strict=True)):
        return False
    conditions = [f for f in later.fields if f.field != d.AUDIT_FILTERKEY]
    return all(f in conditions for f in first.fields if f.field != d.AUDIT_FILTERKEY)


def _check_unreachable(plan: Plan) -> None:
    """A rule after an `exit,never` rule that covers it can never match (first match wins)."""
    nevers: list[PlannedRule] = []
    for p in plan.rules:
        if p.rule.filter != d.AUDIT_FILTER_EXIT:
            continue
        for n in nevers:
            if covers(n.rule, p.rule):
                plan.errors.append(Problem(
                    p.where, f"this rule can never match: the never rule at {n.where} "
                             f"({n.text}) takes every event it would match first"))
                break
        if p.rule.action == d.AUDIT_NEVER:
            nevers.append(p)
