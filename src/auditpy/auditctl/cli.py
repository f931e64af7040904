"""pyauditctl's command line: auditctl 3.0.9's options, output and exit codes, plus
`--load`, `--check`, `--diff` and `--lint` on a rules.d directory."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from auditpy.auditctl import load as loader
from auditpy.auditctl.link import KernelLink, Link
from auditpy.proto.netlink import (
    AUDIT_FEATURE_LOGINUID_IMMUTABLE,
    AUDIT_USER,
    STATUS_BACKLOG_LIMIT,
    STATUS_BACKLOG_WAIT_TIME,
    STATUS_BACKLOG_WAIT_TIME_ACTUAL,
    STATUS_ENABLED,
    STATUS_FAILURE,
    STATUS_LOST,
    STATUS_RATE_LIMIT,
    AuditFeatures,
    AuditStatus,
)
from auditpy.rules import data as d
from auditpy.rules.lint import lint
from auditpy.rules.listing import format_rules
from auditpy.rules.parse import Command, Environment, RuleError, parse_args

VERSION = "0.1.0"
EXIT_OK = 0
EXIT_FAIL = 1
#: auditctl returns -1 from main() for a bad command line.
EXIT_ERROR = 255
EXIT_NOT_ROOT = 4

USAGE = """usage: pyauditctl [options]
    -a <l,a>                          Append rule to end of <l>ist with <a>ction
    -A <l,a>                          Add rule at beginning of <l>ist with <a>ction
    -b <backlog>                      Set max number of outstanding audit buffers
                                      allowed Default=64
    -c                                Continue through errors in rules
    -C f=f                            Compare collected fields if available:
                                      Field name, operator(=,!=), field name
    -d <l,a>                          Delete rule from <l>ist with <a>ction
                                      l=task,exit,user,exclude,filesystem
                                      a=never,always
    -D                                Delete all rules and watches
    -e [0..2]                         Set enabled flag
    -f [0..2]                         Set failure flag
                                      0=silent 1=printk 2=panic
    -F f=v                            Build rule: field name, operator(=,!=,<,>,<=,
                                      >=,&,&=) value
    -h                                Help
    -i                                Ignore errors when reading rules from file
    -k <key>                          Set filter key on audit rule
    -l                                List rules
    -m text                           Send a user-space message
    -p [r|w|x|a]                      Set permissions filter on watch
                                      r=read, w=write, x=execute, a=attribute
    -q <mount,subtree>                make subtree part of mount point's dir watches
    -r <rate>                         Set limit in messages/sec (0=none)
    -R <file>                         read rules from file (all or nothing)
    -s                                Report status
    -S syscall                        Build rule: syscall name or number
    --signal <signal>                 Send the specified signal to the daemon
    -t                                Trim directory watches
    -v                                Version
    -w <path>                         Insert watch at <path>
    -W <path>                         Remove watch at <path>
    --loginuid-immutable              Make loginuids unchangeable once set
    --backlog_wait_time               Set the kernel backlog_wait_time
    --reset-lost                      Reset the lost record counter
    --reset_backlog_wait_time_actual  Reset the actual backlog wait time counter
  pyauditctl only (in place of augenrules; DIR defaults to /etc/audit/rules.d):
    --load [DIR]                      Check DIR/*.rules, then load them all or nothing
    --check [DIR]                     Check the rules without touching the kernel
    --diff [DIR]                      Show how the loaded rules differ from the files
    --lint [DIR]                      Report rule orderings that cost time per syscall
"""

_SIGNALS = {
    "term": signal.SIGTERM, "stop": signal.SIGTERM, "hup": signal.SIGHUP,
    "reload": signal.SIGHUP, "usr1": signal.SIGUSR1, "rotate": signal.SIGUSR1,
    "usr2": signal.SIGUSR2, "resume": signal.SIGUSR2, "cont": signal.SIGCONT,
    "state": signal.SIGCONT,
}


class Cli:
    def __init__(self, out: TextIO, err: TextIO, link_factory: Callable[[], Link]) -> None:
        self.out = out
        self.err = err
        self.link_factory = link_factory
        self._link: Link | None = None

    @property
    def link(self) -> Link:
        if self._link is None:
            self._link = self.link_factory()
        return self._link

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def say(self, text: str) -> None:
        self.err.write(text + "\n")

    # -- status ---------------------------------------------------------------------------

    def print_status(self, status: AuditStatus, *, interpret: bool = False) -> None:
        if interpret:
            enabled = {0: "disable", 1: "enabled", 2: "enabled+immutable"}
            failure = {0: "silent", 1: "printk", 2: "panic"}
            self.out.write(f"enabled {enabled.get(status.enabled, 'unknown')}\n"
                           f"failure {failure.get(status.failure, 'unknown')}\n")
        else:
            self.out.write(f"enabled {status.enabled}\nfailure {status.failure}\n")
        self.out.write(
            f"pid {status.pid}\nrate_limit {status.rate_limit}\n"
            f"backlog_limit {status.backlog_limit}\nlost {status.lost}\n"
            f"backlog {status.backlog}\nbacklog_wait_time {status.backlog_wait_time}\n"
            f"backlog_wait_time_actual {status.backlog_wait_time_actual}\n"
        )

    def print_features(self, features: AuditFeatures) -> None:
        bit = 1 << AUDIT_FEATURE_LOGINUID_IMMUTABLE
        if features.mask & bit:
            state = "locked" if features.lock & bit else "unlocked"
            self.out.write(f"loginuid_immutable {int(bool(features.features & bit))} {state}\n")

    # -- commands -------------------------------------------------------------------------

    def run_command(self, cmd: Command) -> int:
        op = cmd.op
        link = self.link
        if op == "status":
            self.print_status(link.get_status(), interpret=cmd.interpret)
            self.print_features(link.get_features())
        elif op in ("enable", "failure", "rate", "backlog", "backlog_wait_time"):
            if op in ("enable", "failure") and cmd.value == 2:
                pass  # as asked: auditctl applies them too; --load orders them last
            bit, attr = {
                "enable": (STATUS_ENABLED, "enabled"), "failure": (STATUS_FAILURE, "failure"),
                "rate": (STATUS_RATE_LIMIT, "rate_limit"),
                "backlog": (STATUS_BACKLOG_LIMIT, "backlog_limit"),
                "backlog_wait_time": (STATUS_BACKLOG_WAIT_TIME, "backlog_wait_time"),
            }[op]
            status = AuditStatus(mask=bit)
            setattr(status, attr, cmd.value)
            link.set_status(status)
            self.print_status(link.get_status())
        elif op == "list":
            rules = [d.unpack_rule(r) for r in link.list_rules()]
            self.out.write(format_rules(rules, key=cmd.text, interpret=cmd.interpret))
        elif op == "delete_all":
            for raw in link.list_rules():
                rule = d.unpack_rule(raw)
                if cmd.text and not any(cmd.text in k for k in _raw_keys(rule)):
                    continue
                link.delete_rule(raw)
            rules = [d.unpack_rule(r) for r in link.list_rules()]
            self.out.write(format_rules(rules, key=cmd.text))
        elif op in ("add", "delete") and cmd.rule is not None:
            status = link.get_status()
            if status.enabled == 2:
                self.say("The audit system is in immutable mode, no rule changes allowed")
                return EXIT_ERROR
            packed = d.pack_rule(cmd.rule, prepend=cmd.prepend)
            try:
                if op == "add":
                    link.add_rule(packed)
                else:
                    link.delete_rule(packed)
            except OSError as exc:
                what = "add" if op == "add" else "delete"
                reason = "Rule exists" if exc.errno == 17 else os.strerror(exc.errno or 0)
                self.say(f"Error sending {what} rule data request ({reason})")
                return EXIT_ERROR
        elif op == "message":
            link.user_message(AUDIT_USER, _user_message(cmd.text))
        elif op == "signal":
            return self.send_signal(cmd.text)
        elif op in ("reset_lost", "reset_backlog_wait_time_actual"):
            if op == "reset_lost":
                value = link.reset_counter(AuditStatus(mask=STATUS_LOST))
                self.say(f"lost: {value}")
            else:
                value = link.reset_counter(AuditStatus(mask=STATUS_BACKLOG_WAIT_TIME_ACTUAL))
                self.say(f"backlog_wait_time_actual: {value}")
        elif op == "loginuid_immutable":
            bit = 1 << AUDIT_FEATURE_LOGINUID_IMMUTABLE
            link.set_features(AuditFeatures(mask=bit, features=bit, lock=bit))
        elif op == "trim":
            link.trim()
        elif op == "make_equivalent":
            mount, _, sub = cmd.text.partition(",")
            link.make_equivalent(mount, sub)
        return EXIT_OK

    def send_signal(self, name: str) -> int:
        signum = _SIGNALS.get(name.lower())
        if signum is None:
            self.say(f"{name} is an unsupported signal")
            return EXIT_FAIL
        pid = self.link.get_status().pid
        if pid == 0:
            self.say("Auditd is not running")
            return 2
        try:
            os.kill(pid, signum)
        except OSError as exc:
            self.say(f"Failed sending signal to auditd ({exc.strerror})")
            return EXIT_FAIL
        return EXIT_OK

    # -- rules.d --------------------------------------------------------------------------

    def rules_dir(self, mode: str, directory: str) -> int:
        try:
            files = loader.read_rules_dir(directory)
        except loader.LoadError as exc:
            self.say(f"pyauditctl: {exc}")
            return EXIT_FAIL
        return self.rule_files(mode, files, augenrules=True)

    def rule_files(self, mode: str, files: list[tuple[str, str]], *, augenrules: bool) -> int:
        kernel = mode in ("load", "diff")
        link = self.link if kernel else None
        env = loader.environment_for(link) if link is not None else Environment()
        loaded = [d.unpack_rule(r) for r in link.list_rules()] if link is not None else None
        plan = loader.build_plan(files, env, loaded if mode != "check" else None,
                                 augenrules=augenrules)
        for problem in plan.errors:
            self.say(f"error: {problem}")
        for problem in plan.warnings:
            self.say(f"warning: {problem}")
        if mode == "lint":
            findings = lint(plan)
            for finding in findings:
                self.out.write(f"{finding}\n")
            if not findings:
                self.out.write("no findings\n")
            return EXIT_FAIL if findings or plan.errors else EXIT_OK
        if mode == "check":
            for line in loader.check_report(plan):
                self.out.write(line + "\n")
            if plan.errors:
                self.out.write(f"{len(plan.errors)} error(s): a load would change nothing\n"
                               if not plan.ok else
                               f"{len(plan.errors)} error(s): -c/-i given, a load would skip "
                               "those lines\n")
            return EXIT_OK if not plan.errors else EXIT_FAIL
        assert link is not None
        if mode == "diff":
            lines = loader.diff_lines(plan, loaded or [], link.get_status())
            for line in lines:
                self.out.write(line + "\n")
            return EXIT_FAIL if lines or plan.errors else EXIT_OK
        if not plan.ok:
            self.say(f"pyauditctl: {len(plan.errors)} error(s), nothing was changed")
            return EXIT_FAIL
        try:
            done = loader.apply_plan(link, plan)
        except loader.LoadError as exc:
            self.say(f"pyauditctl: {exc}")
            self.say("pyauditctl: the rules loaded before are in place again; nothing was "
                     "changed")
            return EXIT_FAIL
        summary = f"pyauditctl: {len(plan.rules)} rules loaded ({done.added} added"
        summary += f", {done.deleted} deleted)" if done.deleted else ")"
        if done.settings:
            summary += "; " + ", ".join(done.settings)
        self.say(summary)
        return EXIT_FAIL if plan.errors else EXIT_OK


def _raw_keys(rule: d.Rule) -> list[str]:
    return [(f.text or b"").decode("utf-8", "surrogateescape")
            for f in rule.field_values(d.AUDIT_FILTERKEY)]


def _user_message(text: str) -> str:
    """audit_log_user_message()'s text for `-m`: the message, then who sent it."""
    try:
        exe = os.readlink("/proc/self/exe")
    except OSError:
        exe = "?"
    try:
        tty = os.ttyname(0).removeprefix("/dev/")
    except OSError:
        tty = "?"
    quoted = f'"{exe}"' if exe.isprintable() and " " not in exe and '"' not in exe else \
        exe.encode().hex().upper()
    return (f"text={text} exe={quoted} hostname={os.uname().nodename} addr=? terminal={tty} "
            "res=success")


def main(argv: list[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, link_factory: Callable[[], Link] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cli = Cli(out or sys.stdout, err or sys.stderr, link_factory or KernelLink)
    try:
        return _main(cli, args)
    except BrokenPipeError:
        # The output's reader went away (`pyauditctl -l | head -1`): end quietly, as the C
        # auditctl does when SIGPIPE ends it. (Imported here: the option parser comes with
        # it, which pyauditctl does not use.)
        from auditpy.system import cmdline

        return cmdline.stdout_gone() if out is None else cmdline.EXIT_SIGPIPE
    finally:
        cli.close()


_DIR_MODES = {"--load": "load", "--check": "check", "--diff": "diff", "--lint": "lint"}


def _main(cli: Cli, args: list[str]) -> int:
    if not args:
        cli.out.write(USAGE)
        return EXIT_FAIL
    if args[0] in _DIR_MODES:
        if len(args) > 2:
            cli.say(f"pyauditctl: {args[0]} takes one directory")
            return EXIT_ERROR
        mode = _DIR_MODES[args[0]]
        if mode in ("load", "diff") and os.geteuid() != 0 and cli.link_factory is KernelLink:
            cli.say("You must be root to run this program.")
            return EXIT_NOT_ROOT
        return cli.rules_dir(mode, args[1] if len(args) == 2 else loader.DEFAULT_RULES_DIR)
    if args in (["-h"], ["--help"]):
        cli.out.write(USAGE)
        return EXIT_ERROR
    if args == ["-v"]:
        cli.out.write(f"pyauditctl version {VERSION} (auditctl 3.0.9 rule syntax)\n")
        return EXIT_OK
    if os.geteuid() != 0 and cli.link_factory is KernelLink:
        cli.say("You must be root to run this program.")
        return EXIT_NOT_ROOT
    if len(args) == 2 and args[0] == "-R":
        try:
            files = loader.read_rules_file(args[1])
        except loader.LoadError as exc:
            cli.say(str(exc))
            return EXIT_FAIL
        return cli.rule_files("load", files, augenrules=False)
    env = loader.environment_for(cli.link) if _needs_features(args) else Environment()
    try:
        parsed = parse_args(["pyauditctl", *args], env)
    except RuleError as exc:
        cli.say(str(exc))
        return EXIT_ERROR
    for warning in parsed.warnings:
        cli.say(warning)
    for cmd in parsed.commands:
        if cmd.op == "help":
            cli.out.write(USAGE)
            return EXIT_ERROR
        if cmd.op == "version":
            cli.out.write(f"pyauditctl version {VERSION} (auditctl 3.0.9 rule syntax)\n")
            continue
        if cmd.op == "deprecated":
            cli.say(cmd.text)
            return EXIT_OK
        if cmd.op in ("ignore_errors", "continue_errors"):
            continue
        try:
            rc = cli.run_command(cmd)
        except BrokenPipeError:
            raise  # the output's reader, not the kernel (main)
        except OSError as exc:
            cli.say(f"Error sending request to the kernel ({exc.strerror or exc})")
            return EXIT_ERROR
        if rc != EXIT_OK:
            return rc
    return EXIT_OK


def _needs_features(args: list[str]) -> bool:
    """Only rules with exe=, sessionid=, exclude or filesystem lists depend on the kernel's
    feature bits; other commands need not ask first."""
    return any(a.startswith(("-a", "-A", "-d")) for a in args)
