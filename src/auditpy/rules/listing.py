"""A rule as `auditctl -l` prints it (auditctl 3.0.9's print_rule), byte for byte.

Compliance scanners compare this text, so the quirks stay: watches are recognised by shape
(only path/dir, perm and key fields and every syscall), the arch comes first, numbers are
signed decimal except inode (unsigned) and a0-a3 (hex), keys print one `-F key=` (or `-k`)
per key.
"""

from __future__ import annotations

from auditpy.proto.interp_tables import MACHINE_NAMES
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.proto.syscalls import syscall_names
from auditpy.rules import data as d
from auditpy.rules.parse import detect_machine
from auditpy.rules.tables import (
    ACTION_NAMES,
    ERRNO_NAMES,
    FIELD_NAMES,
    FILTER_NAMES,
    FS_TYPES,
    MACHINE_ELF,
    OPERATOR_SYMBOLS,
)
from auditpy.rules.uring import URING_OP_NAMES

_MACHINE_BY_ELF = {elf: machine for machine, elf in MACHINE_ELF.items()}
_FS_NAMES = {magic: name for name, magic in FS_TYPES.items()}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _op(op: int) -> str:
    # printf("%s", NULL) in glibc prints "(null)".
    return OPERATOR_SYMBOLS.get(op & d.AUDIT_OPERATORS, "(null)")


def is_watch(rule: d.Rule) -> bool:
    """auditctl's test: a perm field, nothing but path/dir/perm/key, and all syscalls (on
    lists that take syscalls)."""
    perm = False
    for f in rule.fields:
        if f.field == d.AUDIT_PERM:
            perm = True
        if f.field not in (d.AUDIT_PERM, d.AUDIT_FILTERKEY, d.AUDIT_DIR, d.AUDIT_WATCH):
            return False
    takes_syscalls = rule.filter not in (
        d.AUDIT_FILTER_USER, d.AUDIT_FILTER_TASK, d.AUDIT_FILTER_EXCLUDE, d.AUDIT_FILTER_FS
    )
    return perm and (rule.all_syscalls or not takes_syscalls)


def _text(f: d.Field) -> str:
    return (f.text or b"").decode("utf-8", "surrogateescape")


def format_rule(rule: d.Rule, *, interpret: bool = False, machine: int | None = None) -> str:
    """One line of `auditctl -l` (without the newline). `machine` is the libaudit machine
    used to name syscalls of rules without an arch (default: this kernel's)."""
    if machine is None:
        machine = detect_machine()
    out: list[str] = []
    watch = is_watch(rule)
    elf = 0
    if not watch:
        out.append(f"-a {ACTION_NAMES.get(rule.action, '(null)')},{_list_name(rule.filter)}")
        for f in rule.fields:
            if f.field == d.AUDIT_ARCH:
                elf = f.value
                mach = _MACHINE_BY_ELF.get(elf, -1)
                if mach < 0:
                    out.append(f" -F arch{_op(f.op)}0x{f.value:X}")
                elif interpret:
                    out.append(f" -F arch{_op(f.op)}{MACHINE_NAMES.get(mach, '(null)')}")
                else:
                    bits = "b64" if elf & d.ARCH_64BIT else "b32"
                    out.append(f" -F arch{_op(f.op)}{bits}")
        out.append(_syscalls(rule, _MACHINE_BY_ELF.get(elf, -1) if elf else machine))
    for f in rule.fields:
        fid = f.field & ~d.AUDIT_OPERATORS
        if fid == d.AUDIT_ARCH:
            continue
        name = FIELD_NAMES.get(fid)
        op = _op(f.op)
        if name is None:
            out.append(f" f{f.field}{op}{_signed(f.value)}")
        elif fid == d.AUDIT_MSGTYPE:
            known = MSG_TYPE_NAMES.get(_signed(f.value))
            out.append(f" -F {name}{op}{known if known else _signed(f.value)}")
        elif fid == d.AUDIT_WATCH:
            out.append(f"-w {_text(f)}" if watch else f" -F path={_text(f)}")
        elif fid == d.AUDIT_DIR:
            out.append(f"-w {_text(f)}" if watch else f" -F dir={_text(f)}")
        elif fid == d.AUDIT_EXE:
            out.append(f" -F exe={_text(f)}")
        elif fid == d.AUDIT_FILTERKEY:
            for key in _text(f).split(d.AUDIT_KEY_SEPARATOR):
                if key:
                    out.append(f" -k {key}" if watch else f" -F key={key}")
        elif d.is_string_field(fid):
            out.append(f" -F {name}{op}{_text(f)}")
        elif fid == d.AUDIT_PERM:
            perms = "".join(ch for bit, ch in ((d.AUDIT_PERM_READ, "r"), (d.AUDIT_PERM_WRITE, "w"),
                                               (d.AUDIT_PERM_EXEC, "x"), (d.AUDIT_PERM_ATTR, "a"))
                            if f.value & bit)
            out.append(f" -p {perms}" if watch else f" -F perm={perms}")
        elif fid == d.AUDIT_INODE:
            out.append(f" -F {name}{op}{f.value}")
        elif fid == d.AUDIT_FIELD_COMPARE:
            pair = d.COMPARISONS.get(f.value)
            if pair:
                out.append(f" -C {pair[0]}{op}{pair[1]}")
        elif d.AUDIT_ARG0 <= fid <= d.AUDIT_ARG3:
            out.append(f" -F {name}{op}0x{f.value:X}")
        elif fid == d.AUDIT_EXIT:
            value = _signed(f.value)
            err = ERRNO_NAMES.get(abs(value))
            out.append(f" -F {name}{op}-{err}" if value < 0 and err else f" -F {name}{op}{value}")
        elif fid == d.AUDIT_FSTYPE:
            fs = _FS_NAMES.get(f.value)
            out.append(f" -F {name}{op}{fs if fs else _signed(f.value)}")
        else:
            out.append(f" -F {name}{op}{_signed(f.value)}")
    return "".join(out)



def _list_name(number: int) -> str:
    if number == d.AUDIT_FILTER_URING_EXIT:
        return "io_uring"  # audit 3.1's name; libaudit 3.0.9 prints (null)
    return FILTER_NAMES.get(number, "(null)")


def _syscalls(rule: d.Rule, machine: int) -> str:
    if rule.filter in (d.AUDIT_FILTER_USER, d.AUDIT_FILTER_TASK, d.AUDIT_FILTER_EXCLUDE,
                      d.AUDIT_FILTER_FS):
        return ""
    if rule.all_syscalls:
        return " -S all"
    if rule.filter == d.AUDIT_FILTER_URING_EXIT:
        names = URING_OP_NAMES
    else:
        names = syscall_names(machine) if machine >= 0 else {}
    listed = [names.get(nr, str(nr)) for nr in rule.syscalls()]
    return f" -S {','.join(listed)}" if listed else ""


def format_rules(rules: list[d.Rule], *, key: str = "", interpret: bool = False,
                 machine: int | None = None) -> str:
    """The whole `auditctl -l` (or `-l -k KEY`) output, newline-terminated."""
    shown = [r for r in rules if not key or any(key in _text(f)
                                                for f in r.field_values(d.AUDIT_FILTERKEY))]
    if not rules:
        return "No rules\n"
    return "".join(format_rule(r, interpret=interpret, machine=machine) + "\n" for r in shown)
