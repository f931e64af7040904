"""auditpy.rules: auditctl's rule language, the kernel's rule bytes, `auditctl -l` text,
rule-set checks and lint, without the kernel (tests/kernel/test_auditctl.py compares with
the real auditctl and kernel)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.proto.syscalls import syscall_names
from auditpy.rules import data as d
from auditpy.rules.lint import lint
from auditpy.rules.listing import format_rule, format_rules
from auditpy.rules.parse import Environment, RuleError, c_strtoul, parse_args, split_rule_line
from auditpy.rules.ruleset import build_plan

ENV = Environment(machine=1, user_id=lambda n: {"root": 0, "nobody": 65534}.get(n),
                  group_id=lambda n: {"root": 0}.get(n), is_dir=lambda p: p.endswith("dir"))


def rule_of(line: str) -> d.Rule:
    tokens = split_rule_line(line)
    assert tokens is not None
    cmds = [c for c in parse_args(["auditctl", *tokens], ENV).commands if c.rule]
    assert len(cmds) == 1
    assert cmds[0].rule is not None
    return cmds[0].rule


def fmt(line: str) -> str:
    return format_rule(d.canonical(rule_of(line)), machine=1)


# -- encoding -------------------------------------------------------------------------------

fields_st = st.lists(
    st.one_of(
        st.builds(d.Field, st.sampled_from([0, 1, 9, 103, 104, 200]),
                  st.sampled_from([d.AUDIT_EQUAL, d.AUDIT_NOT_EQUAL, d.AUDIT_LESS_THAN]),
                  st.integers(0, 0xFFFFFFFF)),
        st.binary(min_size=0, max_size=40).map(
            lambda b: d.Field(d.AUDIT_FILTERKEY, d.AUDIT_EQUAL, len(b), b)),
    ),
    max_size=d.AUDIT_MAX_FIELDS,
)


@given(st.sampled_from([0, 1, 4, 5, 6]), st.sampled_from([0, 2]),
       st.lists(st.integers(0, 0xFFFFFFFF), min_size=64, max_size=64), fields_st)
def test_pack_unpack_round_trip(filt: int, action: int, mask: list[int],
                                fields: list[d.Field]) -> None:
    rule = d.Rule(filt, action, tuple(mask), tuple(fields))
    packed = d.pack_rule(rule)
    assert len(packed) == d.RULE_DATA_SIZE + sum(len(f.text or b"") for f in fields)
    assert d.unpack_rule(packed) == rule
    # -A sets the prepend bit in the request; the rule itself stays the same
    assert d.unpack_rule(d.pack_rule(rule, prepend=True)) == rule


def test_unpack_refuses_truncated_data() -> None:
    packed = d.pack_rule(rule_of("-a always,exit -S open -F key=abc"))
    with pytest.raises(d.RuleDataError):
        d.unpack_rule(packed[:-1])
    with pytest.raises(d.RuleDataError):
        d.unpack_rule(packed[:100])


# -- values as auditctl reads them --------------------------------------------------------

def test_c_number_parsing() -> None:
    assert c_strtoul("0x10") == 16
    assert c_strtoul("010") == 8  # base 0: a leading zero is octal
    assert c_strtoul("12abc") == 12  # C stops at the first non-digit
    assert c_strtoul("-1") == 0xFFFFFFFF
    assert c_strtoul("99999999999999999999999") == 0xFFFFFFFF


def test_values_by_name() -> None:
    rule = rule_of("-a always,exit -F arch=b64 -S open -F exit=-EPERM -F uid=root "
                   "-F auid!=unset -F success=0 -F filetype=dir -F perm=wa -k k1 -k k2")
    values = {f.field: f for f in rule.fields}
    assert values[d.AUDIT_ARCH].value == 0xC000003E
    assert values[d.AUDIT_EXIT].value == (-1) & 0xFFFFFFFF
    assert values[d.AUDIT_UID].value == 0
    assert values[d.AUDIT_LOGINUID].value == 0xFFFFFFFF
    assert values[d.AUDIT_FILETYPE].value == 0o040000
    assert values[d.AUDIT_PERM].value == d.AUDIT_PERM_WRITE | d.AUDIT_PERM_ATTR
    assert values[d.AUDIT_FILTERKEY].text == b"k1\x01k2"
    assert rule.fields[-1].field == d.AUDIT_FILTERKEY  # keys always go last
    assert rule.syscalls() == [2]


def test_b32_names_use_the_i386_table() -> None:
    rule = rule_of("-a always,exit -F arch=b32 -S open,execve")
    assert rule.syscalls() == [5, 11]
    assert fmt("-a always,exit -F arch=b32 -S open,execve") == \
        "-a always,exit -F arch=b32 -S open,execve"


@pytest.mark.parametrize(("line", "message"), [
    ("-a always,exit -F foo=1", "-F unknown field: foo"),
    ("-a always,exit -S open -F arch=b64", "arch must be before -S"),
    ("-a always,exit -F arch=b64 -S nosuch", "Syscall name unknown: nosuch"),
    ("-a always,exit -F uid=nosuchuser", "Unknown user: nosuchuser"),
    ("-a always,exit -F exit=-ENOTHING", "-F unknown errno - exit"),
    ("-a always,user -F perm=r", "perm can only be used with exit filter list"),
    ("-a always,exit -F inode<3", "inode only takes = or != operators"),
    ("-a always,exit -F pid", "-F missing operation for pid"),
    ("-a always,exit -F pid=", "-F missing value after operation for pid"),
    ("-a always,exit -F pid=abc", "-F value should be number for pid"),
    ("-a always,exit -k key", "key option needs a watch or syscall given prior to it"),
    ("-a always,exit -F key=x", "Key field needs a watch, syscall or exe path given prior to it"),
    ("-a task,always -S open", "Error: syscall auditing being added to task list"),
    ("-a always,bogus", "Append rule - bad keyword always,bogus"),
    ("-F pid=1", "List must be given before field"),
    ("-w relative/path", "The path must start with '/'"),
    ("-a always,exit -S open -C uid=gid", "-C incompatible comparison uid"),
    ("-e 3", "Enable must be 0, 1, or 2 was 3"),
    ("-a always,io_uring -S execve", "io_uring operation name unknown: execve"),
    ("-a always,io_uring -S openat -F perm=w",
     "perm can only be used with exit filter list"),
    ("-a always,exit -S open -F key=" + "k" * 257, "key option exceeds size limit"),
    ("-a always,exit -S open -F path=/" + "p" * 4096, "String value too long"),
])
def test_errors_read_like_auditctl(line: str, message: str) -> None:
    tokens = split_rule_line(line)
    assert tokens is not None
    with pytest.raises(RuleError) as exc:
        parse_args(["auditctl", *tokens], ENV)
    assert str(exc.value) == message


def test_string_limit_is_4096_bytes() -> None:
    path = "/" + "p" * 4095
    rule = rule_of(f"-a always,exit -S open -F path={path}")
    assert rule.fields[0].value == 4096


def test_line_splitting() -> None:
    assert split_rule_line("  ") is None
    assert split_rule_line("# -a always,exit") is None
    assert split_rule_line("-w /a\\ b  -k x") == ["-w", "/a b", "-k", "x"]


# -- formatting -----------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "listed"), [
    ("-w /etc/passwd -p wa -k identity", "-w /etc/passwd -p wa -k identity"),
    ("-w /etc/sudoers.dir/ -p wa", "-w /etc/sudoers.dir -p wa"),
    ("-a exit,always -F path=/bin/su -F perm=x -F auid>=1000 -F key=priv",
     "-a always,exit -S all -F path=/bin/su -F perm=x -F auid>=1000 -F key=priv"),
    ("-a always,exit -F arch=b64 -S execve -F a0&0x10 -F exit=-13 -F inode=4294967295",
     "-a always,exit -F arch=b64 -S execve -F a0&0x10 -F exit=-EACCES -F inode=4294967295"),
    ("-a always,exclude -F msgtype=CRYPTO_KEY_USER",
     "-a always,exclude -F msgtype=CRYPTO_KEY_USER"),
    ("-a never,filesystem -F fstype=debugfs", "-a never,filesystem -F fstype=debugfs"),
    ("-a always,exit -S all -C auid!=obj_uid -F auid!=unset",
     "-a always,exit -S all -C auid!=obj_uid -F auid!=-1"),
    ("-a never,task", "-a never,task"),
    ("-a always,io_uring -S openat,connect -F uid=0 -k ur",
     "-a always,io_uring -S connect,openat -F uid=0 -F key=ur"),
    ("-a never,io_uring -S all", "-a never,io_uring -S all"),
    ("-a always,io_uring -S 18 -F pid=1", "-a always,io_uring -S openat -F pid=1"),
])
def test_format_like_auditctl_l(line: str, listed: str) -> None:
    assert fmt(line) == listed


def test_list_with_key_filter() -> None:
    rules = [rule_of("-a always,exit -S open -k alpha"), rule_of("-w /etc/x -k beta")]
    assert format_rules(rules, key="bet", machine=1) == "-w /etc/x -p rwxa -k beta\n"
    assert format_rules(rules, key="none", machine=1) == ""
    assert format_rules([], key="none", machine=1) == "No rules\n"


# -- round trips through the text -----------------------------------------------------------

NUMERIC = ["pid", "uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "auid",
           "pers", "ppid", "devmajor", "devminor", "exit", "success", "obj_uid", "obj_gid",
           "a0", "a1", "a2", "a3", "saddr_fam"]
OPS = ["=", "!=", "<", ">", "<=", ">=", "&", "&="]


@st.composite
def rule_lines(draw: st.DrawFn) -> str:
    """Random exit-list rules as auditctl takes them."""
    arch = draw(st.sampled_from(["", "b64", "b32"]))
    table = syscall_names(0 if arch == "b32" else 1)
    parts = [f"-a {draw(st.sampled_from(['always', 'never']))},exit"]
    if arch:
        parts.append(f"-F arch={arch}")
    calls = draw(st.lists(st.sampled_from(sorted(table.values())), min_size=1, max_size=6,
                          unique=True))
    parts.append("-S " + ",".join(calls))
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(NUMERIC))
        op = draw(st.sampled_from(OPS))
        if name == "saddr_fam":
            value = str(draw(st.integers(0, 45)))
        elif name == "exit" and draw(st.booleans()):
            value = "-" + draw(st.sampled_from(["EPERM", "ENOENT", "EACCES", "EINVAL"]))
        else:
            value = str(draw(st.integers(0, 2**31 - 1)))
        parts.append(f"-F {name}{op}{value}")
    if draw(st.booleans()):
        parts.append(f"-F path=/{draw(st.text(string.ascii_letters, min_size=1, max_size=20))}")
        if draw(st.booleans()):
            parts.append(f"-F perm={draw(st.sampled_from(['r', 'w', 'x', 'a', 'wa', 'rwxa']))}")
    if draw(st.booleans()):
        parts.append(f"-C {draw(st.sampled_from(['auid!=obj_uid', 'uid=euid', 'gid!=sgid']))}")
    for key in draw(st.lists(st.text(string.ascii_letters + "-_", min_size=1, max_size=12),
                             max_size=3)):
        parts.append(f"-k {key}")
    return " ".join(parts)


@settings(max_examples=300)
@given(rule_lines())
def test_parse_format_parse_round_trip(line: str) -> None:
    """What `auditctl -l` prints for a rule reads back as the same rule."""
    rule = d.canonical(rule_of(line))
    listed = format_rule(rule, machine=1)
    assert d.canonical(rule_of(listed)) == rule
    assert d.unpack_rule(d.pack_rule(rule)) == rule


# -- rule sets ------------------------------------------------------------------------------

def test_every_error_is_reported_with_file_and_line() -> None:
    plan = build_plan([
        ("a.rules", "-D\n-a always,exit -F foo=1\n\n-a always,exit -S open -k x\n"),
        ("b.rules", "# comment\n-a always,exit -S open -k x\n-w relative\n"),
    ], ENV)
    assert [str(p) for p in plan.errors] == [
        "a.rules:2: -F unknown field: foo",
        "b.rules:2: duplicate rule: the same rule is at a.rules:4 (the kernel would refuse "
        "it: Rule exists)",
        "b.rules:3: The path must start with '/'",
    ]
    assert not plan.ok


def test_duplicates_are_found_by_binary_form() -> None:
    # written differently, the same bytes: -S lists are sets, `exit,always` = `always,exit`
    plan = build_plan([("a.rules", "-a always,exit -S open,close -k x\n"
                                    "-a exit,always -S close -S open -F key=x\n")], ENV)
    assert [p.message.split(":")[0] for p in plan.errors] == ["duplicate rule"]


def test_loaded_rules_count_without_a_delete_all() -> None:
    loaded = [d.canonical(rule_of("-a always,exit -S open -k x"))]
    text = "-a always,exit -S open -k x\n"
    assert build_plan([("a.rules", text)], ENV, loaded).errors
    assert not build_plan([("a.rules", "-D\n" + text)], ENV, loaded).errors


def test_syscall_that_does_not_exist_for_the_arch() -> None:
    plan = build_plan([("a.rules", "-a always,exit -F arch=b64 -S 999\n")], ENV)
    assert [str(p) for p in plan.errors] == [
        "a.rules:1: syscall 999 does not exist for arch=b64: the rule can never match it"]


def test_rule_after_a_never_catch_all_is_unreachable() -> None:
    plan = build_plan([("a.rules", "-a never,exit -F arch=b64 -S all\n"
                                    "-a always,exit -F arch=b64 -S open -k x\n"
                                    "-a always,exit -F arch=b32 -S open -k x\n")], ENV)
    assert [p.where.line for p in plan.errors] == [2]
    assert "can never match" in plan.errors[0].message


def test_augenrules_moves_delete_all_to_the_top_and_settings_last_wins() -> None:
    plan = build_plan([("a.rules", "-a always,exit -S open -k x\n-b 100\n-D\n-b 200\n-e 2\n"
                                    "-f 2\n")], ENV)
    assert len(plan.rules) == 1 and plan.delete_all
    assert plan.settings["backlog"][0] == 200
    assert plan.enable is not None and plan.enable[0] == 2
    sequential = build_plan([("a.rules", "-a always,exit -S open -k x\n-D\n")], ENV,
                            augenrules=False)
    assert sequential.rules == []


# -- lint -----------------------------------------------------------------------------------

def test_lint_findings() -> None:
    plan = build_plan([("a.rules", "\n".join([
        "-a always,exit -F arch=b64 -S open -F auid>=1000 -k perm",
        "-a always,exit -F arch=b64 -S close -F auid>=1000 -k perm",
        "-a always,exit -F arch=b64 -S openat,open_by_handle_at -F path=/etc/shadow -F perm=r",
        "-a always,exit -F arch=b64 -S kill -k sig",
        "-a never,exit -F arch=b64 -S kill -F uid=0 -k sig",
        "-a never,exit -F arch=b64 -S ptrace -F uid=0",
    ]))], ENV)
    found = {(f.kind, f.where.line) for f in lint(plan)}
    assert found == {("split", 2), ("watch", 3), ("never-late", 5)}
    assert not plan.errors  # lint is advice: the plan is unchanged


def test_io_uring_rules_name_operations_not_syscalls() -> None:
    """An io_uring rule's mask holds io_uring operation numbers (the kernel's enum), with
    no architecture, whatever this machine's syscall table says."""
    rule = rule_of("-a always,io_uring -S openat,recv -k u")
    assert rule.filter == d.AUDIT_FILTER_URING_EXIT
    assert sorted(rule.syscalls()) == [18, 27]
    assert not any(f.field == d.AUDIT_ARCH for f in rule.fields)
    assert d.unpack_rule(d.pack_rule(rule)) == rule
