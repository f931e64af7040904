"""pyauditctl's command line and loader against a fake kernel link.

This is where `-e 2` and `-f 2` are shown: a real kernel would stay locked until reboot
(or panic), so no test ever sends them to it. The fake records every request in order.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from auditpy.auditctl import cli
from auditpy.proto.netlink import (
    STATUS_BACKLOG_LIMIT,
    STATUS_ENABLED,
    STATUS_FAILURE,
    AuditFeatures,
    AuditStatus,
)
from auditpy.rules import data as d
from auditpy.rules.listing import format_rule


class FakeLink:
    """A kernel's rule list and status; `refuse(n)` makes the n-th add (1-based) fail."""

    def __init__(self, rules: list[bytes] | None = None) -> None:
        self.rules: list[bytes] = list(rules or [])
        self.status = AuditStatus(enabled=1, failure=1, backlog_limit=64, feature_bitmap=0x7F)
        self.features = AuditFeatures(mask=1)
        self.calls: list[str] = []
        self.adds = 0
        self.refuse_at: int | None = None

    def get_status(self) -> AuditStatus:
        return AuditStatus(**vars(self.status))

    def set_status(self, status: AuditStatus) -> None:
        for bit, attr in ((STATUS_ENABLED, "enabled"), (STATUS_FAILURE, "failure"),
                          (STATUS_BACKLOG_LIMIT, "backlog_limit")):
            if status.mask & bit:
                setattr(self.status, attr, getattr(status, attr))
                self.calls.append(f"set {attr}={getattr(status, attr)}")

    def reset_counter(self, status: AuditStatus) -> int:
        return 0

    def get_features(self) -> AuditFeatures:
        return self.features

    def set_features(self, features: AuditFeatures) -> None:
        self.calls.append("set loginuid_immutable")

    def list_rules(self) -> list[bytes]:
        # the kernel lists rules by filter list, and without the prepend bit
        rules = [d.pack_rule(d.canonical(d.unpack_rule(r))) for r in self.rules]
        return sorted(rules, key=lambda r: d.unpack_rule(r).filter)

    def add_rule(self, rule: bytes) -> None:
        self.adds += 1
        if self.adds == self.refuse_at:
            self.calls.append("refused")
            raise OSError(errno.EINVAL, "Invalid argument")
        if any(d.canonical(d.unpack_rule(r)) == d.canonical(d.unpack_rule(rule))
               for r in self.rules):
            raise OSError(errno.EEXIST, "File exists")
        self.rules.append(rule)
        self.calls.append("add")

    def delete_rule(self, rule: bytes) -> None:
        want = d.canonical(d.unpack_rule(rule))
        for i, r in enumerate(self.rules):
            if d.canonical(d.unpack_rule(r)) == want:
                del self.rules[i]
                self.calls.append("delete")
                return
        raise OSError(errno.ENOENT, "No such file or directory")

    def user_message(self, msg_type: int, text: str) -> None:
        self.calls.append(f"user {msg_type} {text}")

    def trim(self) -> None:
        self.calls.append("trim")

    def make_equivalent(self, mount: str, subtree: str) -> None:
        self.calls.append("equiv")

    def close(self) -> None:
        pass


def run(link: FakeLink, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(list(args), out=out, err=err, link_factory=lambda: link)
    return rc, out.getvalue(), err.getvalue()


def rules_text(n: int, key: str = "fake") -> str:
    return "".join(f"-a always,exit -F arch=b64 -S getppid -F pid={1_000_000 + i} -k {key}\n"
                   for i in range(n))


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "10-base.rules").write_text("-D\n-b 8192\n-f 2\n")
    (tmp_path / "50-many.rules").write_text(rules_text(40))
    (tmp_path / "99-finalize.rules").write_text("-e 2\n")
    return tmp_path


def test_enable_2_and_failure_2_are_applied_last(rules_dir: Path) -> None:
    link = FakeLink()
    rc, _, err = run(link, "--load", str(rules_dir))
    assert rc == 0, err
    assert link.calls[0] == "set backlog_limit=8192"
    assert link.calls[1:41] == ["add"] * 40
    assert link.calls[41:] == ["set failure=2", "set enabled=2"]
    assert "40 rules loaded" in err


def test_refusal_half_way_restores_everything_and_never_locks(rules_dir: Path) -> None:
    mask = (*d.ALL_SYSCALLS[:-1], 0xFFFF)
    before = [d.pack_rule(d.Rule(d.AUDIT_FILTER_EXIT, d.AUDIT_ALWAYS, mask,
                                 (d.Field(d.AUDIT_PID, d.AUDIT_EQUAL, 7),)))]
    link = FakeLink(before)
    listed_before = link.list_rules()
    link.refuse_at = 30
    rc, _, err = run(link, "--load", str(rules_dir))
    assert rc == 1
    assert "50-many.rules:30: the kernel refused the rule (Invalid argument)" in err
    assert link.list_rules() == listed_before
    assert link.status.backlog_limit == 64  # put back
    assert not [c for c in link.calls if c.startswith(("set enabled", "set failure"))]


def test_errors_stop_the_load_before_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text(rules_text(3) + "-a always,exit -F nosuch=1\n-e 2\n")
    link = FakeLink()
    rc, _, err = run(link, "--load", str(tmp_path))
    assert rc == 1
    assert f"error: {tmp_path}/a.rules:4: -F unknown field: nosuch" in err
    assert link.calls == []


def test_check_shows_what_a_load_would_do(rules_dir: Path) -> None:
    rc, out, err = run(FakeLink(), "--check", str(rules_dir))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "3 files, 40 rules (after deleting every loaded rule)"
    assert lines[-2].startswith("after every rule is in: failure 2 (panic when audit fails)")
    assert lines[-1].startswith("last: enabled 2 (immutable: no rule or setting can change "
                                "until reboot)")


def test_diff(rules_dir: Path) -> None:
    link = FakeLink()
    assert run(link, "--load", str(rules_dir))[0] == 0
    link.status.enabled = 1
    link.status.failure = 1
    link.delete_rule(link.rules[5])
    rc, out, _ = run(link, "--diff", str(rules_dir))
    assert rc == 1
    added = [line for line in out.splitlines() if line.startswith("+-a")]
    assert added == ["+" + rules_text(40).splitlines()[5].replace(" -k fake", " -F key=fake")]
    assert "failure: loaded 1, files 2" in out


def test_list_status_delete_all() -> None:
    link = FakeLink()
    rc, _, err = run(link, "-a", "always,exit", "-F", "arch=b64", "-S", "open", "-k", "one")
    assert rc == 0, err
    assert run(link, "-w", "/etc/passwd", "-p", "wa", "-k", "two")[0] == 0
    rc, out, _ = run(link, "-l")
    assert out == "-a always,exit -F arch=b64 -S open -F key=one\n-w /etc/passwd -p wa -k two\n"
    assert run(link, "-l", "-k", "two")[1] == "-w /etc/passwd -p wa -k two\n"
    rc, _, err = run(link, "-a", "always,exit", "-F", "arch=b64", "-S", "open", "-k", "one")
    assert (rc, err) == (255, "Error sending add rule data request (Rule exists)\n")
    rc, out, _ = run(link, "-D", "-k", "one")
    assert (rc, out) == (0, "")
    rc, out, _ = run(link, "-s")
    assert out.splitlines()[:2] == ["enabled 1", "failure 1"]
    assert out.splitlines()[-1] == "loginuid_immutable 0 unlocked"
    rc, out, _ = run(link, "-D")
    assert (rc, out) == (0, "No rules\n")


def test_bad_command_lines_exit_255() -> None:
    assert run(FakeLink(), "-e", "5") == (255, "", "Enable must be 0, 1, or 2 was 5\n")
    assert run(FakeLink(), "-x")[0] == 255
    assert run(FakeLink())[0] == 1  # usage


def test_rules_file_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.write_text("-A always,exit -F arch=b64 -S open -k b\n"
                    "-A always,exit -F arch=b64 -S close -k a\n")
    link = FakeLink()
    assert run(link, "-R", str(path))[0] == 0
    texts = [format_rule(d.unpack_rule(r), machine=1) for r in link.list_rules()]
    assert texts == ["-a always,exit -F arch=b64 -S close -F key=a",
                     "-a always,exit -F arch=b64 -S open -F key=b"]


class _ClosedPipe(io.StringIO):
    """An output whose reader went away after the first line."""

    def write(self, text: str) -> int:
        if self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text.split("\n", 1)[0] + "\n")


def test_a_closed_output_ends_quietly_as_sigpipe_ends_auditctl() -> None:
    """`pyauditctl -s | head -1`: no kernel error is claimed, nothing is said, and the
    status is the one a shell shows for the C auditctl (128 + SIGPIPE)."""
    out, err = _ClosedPipe(), io.StringIO()
    rc = cli.main(["-s"], out=out, err=err, link_factory=FakeLink)
    assert (rc, out.getvalue(), err.getvalue()) == (141, "enabled 1\n", "")
    assert run(FakeLink(), "-s")[0] == 0
