"""Rule orderings that cost time on every syscall, with the reason. Never changes a plan.

The kernel walks the exit list on every syscall exit of every audited task: for each rule it
tests the syscall bit, then evaluates the rule's conditions in order, and the first rule that
matches decides (always: a record, never: none). So rules cost by number and by position:

* `split`: rules that differ only in their syscalls (same list, action, conditions, keys),
  with nothing in between that could decide those syscalls first, are one rule with a longer
  `-S` list: the same events, one entry less to walk on every syscall.
* `watch`: a rule whose only conditions are `path=`/`dir=` (and perm, key) but that lists
  syscalls is a watch written by hand, usually once per ABI (arch=b32 and b64): `-w PATH -p
  PERMS` is one rule, and its permission classes cover every syscall of both ABIs that can
  touch the file (the lists miss some, e.g. openat2 or the 32-bit ABI).
* `never-late`: a never rule placed after a broader always rule on the same syscalls does
  not silence what it should: the always rule matches first and logs the event, and the never
  rule is evaluated for nothing. It belongs before that rule.
"""

from __future__ import annotations

from auditpy.rules import data as d
from auditpy.rules.ruleset import Location, Plan, PlannedRule, covers
from auditpy.structs import dataclass


@dataclass(frozen=True)
class Finding:
    kind: str
    where: Location
    message: str

    def __str__(self) -> str:
        return f"{self.where}: lint[{self.kind}]: {self.message}"


def _conditions(rule: d.Rule) -> tuple[d.Field, ...]:
    return rule.fields


def _may_overlap(a: d.Rule, b: d.Rule) -> bool:
    return a.filter == b.filter and any(x & y for x, y in zip(a.mask, b.mask, strict=True))


def lint(plan: Plan) -> list[Finding]:
    found: list[Finding] = []
    rules = [p for p in plan.rules if p.where.line > 0]
    found += _split(rules)
    found += _watches(rules)
    found += _never_late(rules)
    return sorted(found, key=lambda f: (f.where.path, f.where.line, f.kind))


def _split(rules: list[PlannedRule]) -> list[Finding]:
    out: list[Finding] = []
    for i, p in enumerate(rules):
        r = p.rule
        if r.filter != d.AUDIT_FILTER_EXIT or r.all_syscalls:
            continue
        for j in range(i - 1, -1, -1):
            q = rules[j].rule
            if (q.filter == r.filter and q.action == r.action and q.fields == r.fields
                    and not q.all_syscalls):
                between = [x.rule for x in rules[j + 1 : i]]
                if not any(_may_overlap(x, r) or _may_overlap(x, q) for x in between):
                    out.append(Finding(
                        "split", p.where,
                        f"same list, action, conditions and keys as {rules[j].where}; only "
                        "the syscalls differ: merge the -S lists into one rule (the kernel "
                        "walks every exit rule on every syscall exit)"))
                break
    return out


def _watches(rules: list[PlannedRule]) -> list[Finding]:
    out: list[Finding] = []
    allowed = {d.AUDIT_WATCH, d.AUDIT_DIR, d.AUDIT_PERM, d.AUDIT_FILTERKEY, d.AUDIT_ARCH}
    for p in rules:
        r = p.rule
        if r.filter != d.AUDIT_FILTER_EXIT or r.action != d.AUDIT_ALWAYS or r.all_syscalls:
            continue
        paths = r.field_values(d.AUDIT_WATCH) + r.field_values(d.AUDIT_DIR)
        if len(paths) != 1 or any(f.field not in allowed for f in r.fields):
            continue
        if any(f.op != d.AUDIT_EQUAL for f in r.fields if f.field != d.AUDIT_FILTERKEY):
            continue
        path = (paths[0].text or b"").decode("utf-8", "surrogateescape")
        perm = r.field_values(d.AUDIT_PERM)
        perms = "".join(ch for bit, ch in ((d.AUDIT_PERM_READ, "r"), (d.AUDIT_PERM_WRITE, "w"),
                                           (d.AUDIT_PERM_EXEC, "x"), (d.AUDIT_PERM_ATTR, "a"))
                        if not perm or perm[0].value & bit)
        keys = "".join(f" -k {k}" for k in r.keys)
        out.append(Finding(
            "watch", p.where,
            f"a watch written as a syscall rule: -w {path} -p {perms}{keys} is one rule for "
            "both ABIs, and its permission classes cover every syscall that can touch the "
            "path"))
    return out


def _never_late(rules: list[PlannedRule]) -> list[Finding]:
    out: list[Finding] = []
    for i, p in enumerate(rules):
        r = p.rule
        if r.action != d.AUDIT_NEVER or r.filter != d.AUDIT_FILTER_EXIT:
            continue
        for q in rules[:i]:
            if q.rule.action == d.AUDIT_ALWAYS and _may_overlap(q.rule, r) and _broader(q.rule, r):
                out.append(Finding(
                    "never-late", p.where,
                    f"placed after {q.where}, which matches first and logs the events this "
                    "rule should drop (first match wins): move it before that rule"))
                break
    return out


def _broader(always: d.Rule, never: d.Rule) -> bool:
    """Every condition of the always rule (keys aside) is one of the never rule's: whatever
    the never rule matches on shared syscalls, the always rule matches too."""
    probe = d.Rule(always.filter, always.action, tuple(a | n for a, n in
                                                         zip(always.mask, never.mask,
                                                             strict=True)), always.fields)
    return covers(probe, never)
