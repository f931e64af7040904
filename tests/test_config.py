"""Tests for auditd.conf parsing, validation and loading.

Expected behaviour was checked against Debian's auditd 3.0.9 config loader where the man
page leaves it open (line length, unterminated last line, which actions allow what).
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy import structs
from auditpy.config.auditd_conf import (
    KEYWORDS,
    MAX_LINE_BYTES,
    AuditdConfig,
    changed_keys,
    load_auditd_conf,
    parse_auditd_conf,
)
from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import exec_helper_problems

DEBIAN_CONF = Path("/etc/audit/auditd.conf")
NOBODY = 65534
#: Lines 1 and 2 of every test file, so that the space_left sanity check passes and the
#: line under test is line 3.
BASE = "space_left = 10\nadmin_space_left = 5\n"
ADM_GID = grp.getgrnam("adm").gr_gid if any(g.gr_name == "adm" for g in grp.getgrall()) else None


def parse(body: str) -> tuple[AuditdConfig, list[ConfigProblem]]:
    return parse_auditd_conf(BASE + body, "t.conf")


def config_of(body: str) -> AuditdConfig:
    return parse(body)[0]


def warnings_of(body: str) -> list[str]:
    return [p.message for p in parse(body)[1]]


def errors_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_auditd_conf(text, "t.conf")
    return info.value.errors


def only_error(body: str) -> ConfigProblem:
    errors = errors_of(BASE + body)
    assert len(errors) == 1, errors
    return errors[0]


# --------------------------------------------------------------------------------------
# Problems and errors


def test_problem_and_error_rendering() -> None:
    with_line = ConfigProblem("/etc/audit/auditd.conf", 7, "bad")
    without = ConfigProblem("/etc/audit/auditd.conf", None, "worse")
    assert str(with_line) == "/etc/audit/auditd.conf:7: bad"
    assert str(without) == "/etc/audit/auditd.conf: worse"
    error = ConfigError([with_line, without])
    assert error.errors == [with_line, without]
    assert str(error).splitlines() == [str(with_line), str(without)]


def test_defaults_are_the_c_code_defaults() -> None:
    config, warnings = parse_auditd_conf("")
    assert config == AuditdConfig()
    assert warnings == []
    assert config.log_format == "ENRICHED"
    assert config.flush == "NONE"
    assert config.freq == 0
    assert config.disk_error_action == "SYSLOG"
    assert config.space_left == 0
    assert config.tcp_listen_port is None
    assert config.q_depth == 2000
    assert config.kernel_link == "REGISTER"


def test_every_keyword_is_an_attribute() -> None:
    attributes = {f.name for f in structs.fields(AuditdConfig)}
    assert set(KEYWORDS) <= attributes


# --------------------------------------------------------------------------------------
# The shipped Debian file


@pytest.mark.skipif(not DEBIAN_CONF.exists(), reason="no Debian auditd.conf on this machine")
def test_debian_shipped_file() -> None:
    config, warnings = parse_auditd_conf(DEBIAN_CONF.read_text(), str(DEBIAN_CONF))
    assert warnings == []
    expected = {
        "local_events": True,
        "write_logs": True,
        "log_file": "/var/log/audit/audit.log",
        "log_group": "adm",
        "log_format": "ENRICHED",
        "flush": "INCREMENTAL_ASYNC",
        "freq": 50,
        "max_log_file": 8,
        "num_logs": 5,
        "priority_boost": 4,
        "name_format": "NONE",
        "name": None,
        "max_log_file_action": "ROTATE",
        "space_left": 75,
        "space_left_percent": False,
        "space_left_action": "SYSLOG",
        "verify_email": True,
        "action_mail_acct": "root",
        "admin_space_left": 50,
        "admin_space_left_action": "SUSPEND",
        "disk_full_action": "SUSPEND",
        "disk_error_action": "SUSPEND",
        "use_libwrap": True,
        "tcp_listen_port": None,
        "tcp_listen_queue": 5,
        "tcp_max_per_addr": 1,
        "tcp_client_ports": (0, 65535),
        "tcp_client_max_idle": 0,
        "transport": "TCP",
        "krb5_principal": "auditd",
        "distribute_network": False,
        "q_depth": 2000,
        "overflow_action": "SYSLOG",
        "max_restarts": 10,
        "plugin_dir": "/etc/audit/plugins.d",
        "end_of_event_timeout": 2,
    }
    assert {key: getattr(config, key) for key in expected} == expected
    if ADM_GID is not None:
        assert config.log_gid == ADM_GID


@pytest.mark.skipif(not DEBIAN_CONF.exists(), reason="no Debian auditd.conf on this machine")
@pytest.mark.skipif(os.geteuid() != 0, reason="the file must be root-owned and readable")
def test_debian_shipped_file_loads() -> None:
    config, _ = load_auditd_conf(str(DEBIAN_CONF))
    assert config.freq == 50


# --------------------------------------------------------------------------------------
# Syntax


def test_blank_and_comment_lines() -> None:
    text = BASE + "\n   \n# a comment\n   #indented = comment\n#\nfreq = 3\n"
    assert parse_auditd_conf(text)[0].freq == 3


def test_keywords_and_values_are_case_insensitive_but_paths_keep_case() -> None:
    config = config_of(
        "FREQ = 7\nFlush = InCreMental_Async\nLog_File = /var/log/Audit/Audit.LOG\n"
        "WRITE_LOGS = No\nname = MyHost\n"
    )
    assert config.freq == 7
    assert config.flush == "INCREMENTAL_ASYNC"
    assert config.log_file == "/var/log/Audit/Audit.LOG"
    assert config.write_logs is False
    assert config.name == "MyHost"


def test_extra_spaces_are_fine() -> None:
    assert config_of("   freq    =   9   \n").freq == 9


def test_later_lines_win() -> None:
    config = config_of("freq = 1\nfreq = 2\nspace_left_action = exec /sbin/x\n")
    assert (config.freq, config.space_left_action, config.space_left_exe) == (2, "EXEC", "/sbin/x")
    config = config_of("space_left_action = exec /sbin/x\nspace_left_action = syslog\n")
    assert (config.space_left_action, config.space_left_exe) == ("SYSLOG", None)


def test_non_ascii_case_folding_does_not_match_keywords() -> None:
    # KELVIN SIGN lower-cases to 'k' in Python but not in strcasecmp().
    assert "unknown keyword" in only_error("\u212arb5_principal = x\n").message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("freq\n", "wrong number of tokens"),
        ("freq =\n", "wrong number of tokens"),
        ("freq=5\n", "wrong number of tokens"),
        ("freq\t=\t5\n", "wrong number of tokens"),  # tabs do not separate tokens
        ("freq =5\n", "missing '='"),
        ("freq x 5\n", "missing '='"),
        ("freq = 5 6\n", "takes no option"),
        ("freq = 5 # comment\n", "wrong number of tokens"),
        ("freq = 5 #comment\n", "takes no option"),
        ("space_left_action = syslog a b\n", "wrong number of tokens"),
        ("freq = 5 6 7\n", "wrong number of tokens"),
        ("foo = bar\n", "unknown keyword 'foo'"),
        ("= = 5\n", "unknown keyword '='"),
        ("freq = 5\r\n", "should only be digits"),  # CR stays part of the value, as in C
        ("freq = 1\x002\n", "NUL"),
        ("name = caf\udce9\n", "not valid UTF-8"),
    ],
)
def test_syntax_errors_name_the_line(line: str, fragment: str) -> None:
    problem = only_error(line)
    assert problem.line == 3
    assert problem.path == "t.conf"
    assert fragment in problem.message


def test_every_error_is_reported() -> None:
    errors = errors_of(BASE + "freq = x\nbogus\nnum_logs = 1000\nflush = often\n")
    assert [e.line for e in errors] == [3, 4, 5, 6]
    assert "t.conf:3:" in str(ConfigError(errors))


def test_line_length_limit() -> None:
    fits = "name = " + "a" * (MAX_LINE_BYTES - len("name = "))
    too_long = fits + "b"
    assert config_of(fits + "\n").name == fits[len("name = ") :]
    config, warnings = parse(too_long + "\nfreq = 4\n")
    assert config.name is None
    assert config.freq == 4
    assert [(w.line, "longer than" in w.message) for w in warnings] == [(3, True)]


def test_line_length_counts_bytes() -> None:
    value = "\u00e9" * 76  # 152 bytes of UTF-8, but 76 characters
    _, warnings = parse(f"name = {value}\n")
    assert warnings and "longer than" in warnings[0].message


def test_over_long_garbage_line_is_only_a_warning() -> None:
    _, warnings = parse("x" * 400 + "\n")
    assert len(warnings) == 1


def test_unterminated_last_line_is_ignored_like_auditd() -> None:
    config, warnings = parse_auditd_conf(BASE + "freq = 5")
    assert config.freq == 0
    assert [w.line for w in warnings] == [3]
    assert "no newline" in warnings[0].message


def test_sanity_needs_one_complete_line() -> None:
    # A single unterminated line does not count as a line for 3.0.9's sanity check.
    assert parse_auditd_conf("freq = 5")[0] == AuditdConfig()


# --------------------------------------------------------------------------------------
# Keyword values

VALID: list[tuple[str, str, Any]] = [
    ("local_events = no", "local_events", False),
    ("local_events = YES", "local_events", True),
    ("write_logs = no", "write_logs", False),
    ("log_file = /srv/audit/a.log", "log_file", "/srv/audit/a.log"),
    ("log_file = /var/log/x.log", "log_file", "/var/log/x.log"),  # fine with log_group root
    ("log_format = raw", "log_format", "RAW"),
    ("log_format = Enriched", "log_format", "ENRICHED"),
    ("log_group = root", "log_gid", 0),
    ("log_group = 0", "log_gid", 0),
    ("log_group = 12345", "log_gid", 12345),
    ("log_group = 4294967294", "log_gid", 4294967294),
    ("priority_boost = 0", "priority_boost", 0),
    ("priority_boost = 2147483647", "priority_boost", 2147483647),
    ("flush = none", "flush", "NONE"),
    ("flush = data", "flush", "DATA"),
    ("flush = sync", "flush", "SYNC"),
    ("freq = 0", "freq", 0),
    ("freq = 007", "freq", 7),
    ("num_logs = 999", "num_logs", 999),
    ("num_logs = 0", "num_logs", 0),
    ("name_format = hostname", "name_format", "HOSTNAME"),
    ("name_format = fqd", "name_format", "FQD"),
    ("name_format = numeric", "name_format", "NUMERIC"),
    ("name_format = user", "name_format", "USER"),
    ("name = a=b", "name", "a=b"),
    ("max_log_file = 18446744073709551615", "max_log_file", 2**64 - 1),
    ("max_log_file_action = keep_logs", "max_log_file_action", "KEEP_LOGS"),
    ("max_log_file_action = rotate", "max_log_file_action", "ROTATE"),
    ("max_log_file_action = suspend", "max_log_file_action", "SUSPEND"),
    ("verify_email = no", "verify_email", False),
    ("action_mail_acct = admin@example.com", "action_mail_acct", "admin@example.com"),
    ("action_mail_acct = a_b-c.d", "action_mail_acct", "a_b-c.d"),
    ("space_left = 99%", "space_left_percent", True),
    ("space_left_action = email", "space_left_action", "EMAIL"),
    ("space_left_action = halt", "space_left_action", "HALT"),  # 3.0.9 still allows it
    ("space_left_action = single", "space_left_action", "SINGLE"),
    ("space_left_action = rotate", "space_left_action", "ROTATE"),
    ("space_left_action = exec /usr/sbin/x", "space_left_exe", "/usr/sbin/x"),
    ("admin_space_left = 1%", "admin_space_left", 1),
    ("admin_space_left_action = halt", "admin_space_left_action", "HALT"),
    ("admin_space_left_action = exec /a/b", "admin_space_left_exe", "/a/b"),
    ("disk_full_action = rotate", "disk_full_action", "ROTATE"),
    ("disk_full_action = exec /x", "disk_full_exe", "/x"),
    ("disk_error_action = halt", "disk_error_action", "HALT"),
    ("disk_error_action = exec /x", "disk_error_action", "EXEC"),
    ("disk_error_action = ignore", "disk_error_action", "IGNORE"),
    ("tcp_listen_port = 60", "tcp_listen_port", 60),
    ("tcp_listen_port = 65535", "tcp_listen_port", 65535),
    ("tcp_listen_queue = 1", "tcp_listen_queue", 1),
    ("tcp_max_per_addr = 1024", "tcp_max_per_addr", 1024),
    ("use_libwrap = no", "use_libwrap", False),
    ("tcp_client_ports = 1-1023", "tcp_client_ports", (1, 1023)),
    ("tcp_client_ports = 600", "tcp_client_ports", (600, 600)),
    ("tcp_client_max_idle = 30", "tcp_client_max_idle", 30),
    ("transport = krb5", "transport", "KRB5"),
    ("transport = TCP", "transport", "TCP"),
    ("transport = tls", "transport", "TLS"),
    ("enable_krb5 = no", "transport", "TCP"),
    ("krb5_principal = auditd/host", "krb5_principal", "auditd/host"),
    ("krb5_key_file = /etc/k.key", "krb5_key_file", "/etc/k.key"),
    ("distribute_network = yes", "distribute_network", True),
    ("q_depth = 99999", "q_depth", 99999),
    ("overflow_action = ignore", "overflow_action", "IGNORE"),
    ("overflow_action = halt", "overflow_action", "HALT"),
    ("overflow_action = single", "overflow_action", "SINGLE"),
    ("max_restarts = 0", "max_restarts", 0),
    ("plugin_dir = /etc/Plugins", "plugin_dir", "/etc/Plugins"),
    ("end_of_event_timeout = 0", "end_of_event_timeout", 0),
    ("end_of_event_timeout = 2147483648", "end_of_event_timeout", 2147483648),
    ("kernel_link = multicast", "kernel_link", "MULTICAST"),
    ("kernel_link = Register", "kernel_link", "REGISTER"),
]


@pytest.mark.parametrize(("line", "attr", "expected"), VALID)
def test_valid_values(line: str, attr: str, expected: Any) -> None:
    assert getattr(config_of(line + "\n"), attr) == expected


INVALID: list[tuple[str, str]] = [
    ("local_events = 1", "yes or no"),
    ("write_logs = true", "yes or no"),
    ("use_libwrap = y", "yes or no"),
    ("distribute_network = \u0443es", "yes or no"),
    ("verify_email = maybe", "yes or no"),
    ("log_file = audit.log", "too short"),
    ("log_file = /a/b.log", "too short"),
    ("log_file = /etc", "too short"),
    ("log_format = nolog2", "unknown value"),
    ("log_group = no-such-group-here", "unknown group"),
    ("log_group = -1", "unknown group"),
    ("log_group = 12abc", "unknown group"),
    ("log_group = 4294967295", "too large"),
    ("log_group = 99999999999999999999999", "out of range"),
    ("priority_boost = 2147483648", "too large"),
    ("priority_boost = -1", "digits"),
    ("flush = always", "unknown value"),
    ("freq = +5", "digits"),
    ("freq = 0x10", "digits"),
    ("freq = \u0663", "digits"),  # ARABIC-INDIC DIGIT THREE is not an ASCII digit
    ("freq = 2147483648", "too large"),
    ("freq = 99999999999999999999999", "out of range"),
    ("num_logs = 1000", "too large"),
    ("name_format = fqdn", "unknown value"),
    ("max_log_file = 18446744073709551616", "out of range"),
    ("max_log_file = 8M", "digits"),
    ("max_log_file_action = email", "unknown value"),
    ("max_log_file_action = exec /bin/x", "takes no option"),  # exec came in 4.1
    ("max_log_file_action = exec", "unknown value"),
    ("action_mail_acct = a", "too short"),
    ("action_mail_acct = a+b", "character"),
    ("action_mail_acct = a!b", "character"),
    ("action_mail_acct = a@b", "'.' after"),
    ("action_mail_acct = a.b@c", "'.' after"),
    ("space_left = 0%", "too small"),
    ("space_left = 100%", "too large"),
    ("space_left = %", "N%"),
    ("space_left = 5%%", "N%"),
    ("space_left = 5%x", "N%"),
    ("space_left = x%", "N%"),
    ("space_left = 5x", "digits"),
    ("space_left_action = exec", "needs the path"),
    ("space_left_action = exec bin/x", "absolute path"),
    ("space_left_action = reboot", "unknown value"),
    ("admin_space_left = -1", "digits"),
    ("admin_space_left_action = keep_logs", "unknown value"),
    ("disk_full_action = email", "not allowed"),
    ("disk_error_action = email", "not allowed"),
    ("disk_error_action = rotate", "not allowed"),
    ("tcp_listen_port = 0", "too small"),
    ("tcp_listen_port = 65536", "too large"),
    ("tcp_listen_queue = 0", "too small"),
    ("tcp_listen_queue = 65536", "too large"),
    ("tcp_max_per_addr = 0", "too small"),
    ("tcp_max_per_addr = 1025", "too large"),
    ("tcp_client_ports = 0", "too small"),
    ("tcp_client_ports = 0-10", "too small"),
    ("tcp_client_ports = 1-65536", "too large"),
    ("tcp_client_ports = 10-5", "reversed"),
    ("tcp_client_ports = -5", "two joined"),
    ("tcp_client_ports = 5-", "two joined"),
    ("tcp_client_ports = 1-2-3", "two joined"),
    ("tcp_client_max_idle = 2147483648", "too large"),
    ("transport = ssl", "unknown value"),
    ("enable_krb5 = maybe", "yes or no"),
    ("q_depth = 0", "too small"),
    ("q_depth = 100000", "too large"),
    ("overflow_action = rotate", "unknown value"),
    ("overflow_action = email", "unknown value"),
    ("overflow_action = exec /bin/x", "takes no option"),
    ("max_restarts = 2147483648", "too large"),
    ("end_of_event_timeout = -1", "digits"),
    ("kernel_link = both", "unknown value"),
    ("plugin_dir = a b", "takes no option"),
    ("krb5_key_file = a b", "takes no option"),
]


@pytest.mark.parametrize(("line", "fragment"), INVALID)
def test_invalid_values_name_the_line(line: str, fragment: str) -> None:
    problem = only_error(line + "\n")
    assert problem.line == 3
    assert fragment in problem.message, problem.message


def test_invalid_value_on_a_later_line() -> None:
    errors = errors_of(BASE + "\n# c\nfreq = 1\n\nnum_logs = many\n")
    assert [e.line for e in errors] == [7]


@pytest.mark.skipif(ADM_GID is None, reason="no adm group")
def test_log_group_keeps_the_name_and_resolves_the_gid() -> None:
    config = config_of("log_group = adm\n")
    assert (config.log_group, config.log_gid) == ("adm", ADM_GID)


def test_space_left_forms() -> None:
    config = config_of("space_left = 25%\nadmin_space_left = 50\n")
    assert (config.space_left, config.space_left_percent) == (25, True)
    assert (config.admin_space_left, config.admin_space_left_percent) == (50, False)
    config = config_of("space_left = 25%\nspace_left = 100\n")
    assert (config.space_left, config.space_left_percent) == (100, False)


def test_option_on_a_non_exec_action_is_ignored_with_a_warning() -> None:
    config, warnings = parse("disk_full_action = syslog /bin/x\n")
    assert (config.disk_full_action, config.disk_full_exe) == ("SYSLOG", None)
    assert [w.line for w in warnings] == [3]


def test_verify_email_must_come_first() -> None:
    assert config_of("verify_email = no\naction_mail_acct = a!b\n").action_mail_acct == "a!b"
    assert "character" in errors_of(BASE + "action_mail_acct = a!b\nverify_email = no\n")[0].message


def test_log_format_nolog_turns_off_write_logs() -> None:
    config, warnings = parse("log_format = NOLOG\n")
    assert (config.log_format, config.write_logs) == ("NOLOG", False)
    assert len(warnings) == 2
    config, warnings = parse("write_logs = no\nlog_format = nolog\n")
    assert len(warnings) == 1
    assert config_of("log_format = nolog\nwrite_logs = yes\n").write_logs is True


def test_enable_krb5_sets_transport_and_is_deprecated() -> None:
    config, warnings = parse("enable_krb5 = yes\n")
    assert (config.enable_krb5, config.transport) == (True, "KRB5")
    assert "deprecated" in warnings[0].message
    assert config_of("enable_krb5 = yes\ntransport = tcp\n").transport == "TCP"


def test_deprecated_2x_keywords() -> None:
    config, warnings = parse("dispatcher = /sbin/audispd\ndisp_qos = lossless\n")
    assert (config.dispatcher, config.disp_qos) == ("/sbin/audispd", "LOSSLESS")
    assert [w.line for w in warnings] == [3, 4]
    assert all("deprecated" in w.message for w in warnings)
    config, warnings = parse("disp_qos = whatever\n")  # ignored anyway, so 3.0.9 accepts it
    assert config.disp_qos is None
    assert len(warnings) == 2


# --------------------------------------------------------------------------------------
# Sanity checks


def test_empty_file_skips_the_sanity_check() -> None:
    assert parse_auditd_conf("")[0] == AuditdConfig()


@pytest.mark.parametrize("text", ["\n", "# only a comment\n", "freq = 5\n"])
def test_non_empty_file_needs_space_left_above_admin_space_left(text: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert "space_left (0) must be larger than admin_space_left (0)" in errors[0].message


def test_space_left_check_points_at_the_line() -> None:
    errors = errors_of("# c\nadmin_space_left = 50\nspace_left = 50\n")
    assert [e.line for e in errors] == [3]


@pytest.mark.parametrize(
    ("text", "space_left", "admin_space_left"),
    [
        # a percentage on either side is not compared with a size, as in 3.0.9
        ("space_left = 10%\nadmin_space_left = 50\n", (10, True), (50, False)),
        ("space_left = 3\nadmin_space_left = 5%\n", (3, False), (5, True)),
        ("space_left = 1\n", (1, False), (0, False)),
    ],
)
def test_percent_or_larger_space_left_passes(
    text: str, space_left: tuple[int, bool], admin_space_left: tuple[int, bool]
) -> None:
    config, warnings = parse_auditd_conf(text)
    assert (config.space_left, config.space_left_percent) == space_left
    assert (config.admin_space_left, config.admin_space_left_percent) == admin_space_left
    assert warnings == []


def test_sanity_check_is_skipped_for_a_rejected_value() -> None:
    errors = errors_of("space_left = lots\nadmin_space_left = 5\n")
    assert [e.line for e in errors] == [1]


@pytest.mark.parametrize("flush", ["incremental", "INCREMENTAL_ASYNC"])
def test_incremental_flush_needs_freq(flush: str) -> None:
    assert "needs freq > 0" in only_error(f"flush = {flush}\n").message
    assert config_of(f"flush = {flush}\nfreq = 1\n").freq == 1


@pytest.mark.skipif(ADM_GID in (None, 0), reason="needs a non-root adm group")
@pytest.mark.parametrize("log_file", ["/var/log/x.log", "/var/log//x.log"])
def test_log_group_with_a_log_directly_in_var_log(log_file: str) -> None:
    problem = only_error(f"log_group = adm\nlog_file = {log_file}\n")
    assert "/var/log" in problem.message
    assert problem.line == 4


def test_log_group_root_in_var_log_and_non_root_elsewhere_are_fine() -> None:
    assert config_of("log_group = 0\nlog_file = /var/log/x.log\n").log_gid == 0
    assert config_of("log_group = 4\nlog_file = /var/log/audit/x.log\n").log_gid == 4
    # 3.0.9 compares dirname() as a string, so these spellings slip through there too.
    assert config_of("log_group = 4\nlog_file = /var/log/./x.log\n").log_gid == 4
    assert config_of("log_group = 4\nlog_file = /var//log/x.log\n").log_gid == 4


@pytest.mark.parametrize(("flush", "warned"), [("data", True), ("sync", True), ("none", False)])
def test_freq_without_incremental_flush(flush: str, warned: bool) -> None:
    # 3.0.9 warns only for data and sync; flush = none with a freq is silent.
    warnings = warnings_of(f"freq = 5\nflush = {flush}\n")
    assert any("not incremental" in w for w in warnings) == warned


def test_small_q_depth_warns() -> None:
    config, warnings = parse("q_depth = 10\n")
    assert config.q_depth == 10
    assert [w.line for w in warnings] == [3]
    assert warnings_of("q_depth = 512\n") == []


# --------------------------------------------------------------------------------------
# changed_keys


def test_changed_keys() -> None:
    old = config_of("freq = 1\n")
    new = config_of("freq = 2\nspace_left_action = exec /x\n")
    assert changed_keys(old, old) == set()
    assert changed_keys(old, new) == {"freq", "space_left_action", "space_left_exe"}


def test_resolved_paths() -> None:
    config = config_of("log_file = logs/audit/a.log\nplugin_dir = plugins\n")
    resolved = config.resolved_paths("/srv")
    assert (resolved.log_file, resolved.plugin_dir) == ("/srv/logs/audit/a.log", "/srv/plugins")
    assert resolved.krb5_key_file == "/etc/audit/audit.key"
    assert AuditdConfig().resolved_paths("/srv") == AuditdConfig()


# --------------------------------------------------------------------------------------
# Property tests

_TOKENS = st.one_of(
    st.sampled_from([*KEYWORDS, "=", "yes", "no", "exec", "/x", "5%", "1-2", "#", "  "]),
    st.text(max_size=12),
    st.integers(-(2**70), 2**70).map(str),
)


def _never_crashes(text: str) -> None:
    try:
        config, warnings = parse_auditd_conf(text)
    except ConfigError as error:
        assert error.errors
        assert all(isinstance(p, ConfigProblem) for p in error.errors)
        str(error)
    else:
        assert isinstance(config, AuditdConfig)
        assert all(isinstance(p, ConfigProblem) for p in warnings)


@given(st.text())
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    _never_crashes(text)


@given(st.binary())
def test_any_bytes_parse_or_raise_config_error(data: bytes) -> None:
    _never_crashes(data.decode("utf-8", "surrogateescape"))
    _never_crashes(data.decode("latin-1"))


@given(st.lists(st.lists(_TOKENS, max_size=5).map(" ".join), max_size=12).map("\n".join))
def test_keyword_shaped_lines_parse_or_raise_config_error(text: str) -> None:
    _never_crashes(text)


@given(st.sampled_from(KEYWORDS), st.text(max_size=30))
def test_any_value_for_any_keyword(keyword: str, value: str) -> None:
    _never_crashes(f"{BASE}{keyword} = {value}\n")


_PATH = st.from_regex(r"/[A-Za-z0-9_./-]{1,40}", fullmatch=True)
_ACCOUNT = r"[a-z0-9_.-]{2,12}(@[a-z0-9-]{1,10}\.[a-z]{2,5})?"
_FILE_NAME = st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True)
_WORD = st.from_regex(r"[A-Za-z0-9_./@=#-]{1,40}", fullmatch=True)


@st.composite
def _valid_settings(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any]]:
    """Pick valid values for a random set of keywords.

    Returns (keyword -> value text, attribute -> expected value).
    """
    text: dict[str, str] = {}
    expected: dict[str, Any] = {}

    def choose(keyword: str, values: list[str]) -> None:
        value = draw(st.sampled_from(values))
        text[keyword] = value
        expected[keyword] = value.upper()

    def yes_no(keyword: str) -> None:
        value = draw(st.booleans())
        text[keyword] = "yes" if value else "no"
        expected[keyword] = value

    def number(keyword: str, low: int, high: int) -> None:
        value = draw(st.integers(low, high))
        text[keyword] = str(value)
        expected[keyword] = value

    def action(keyword: str, values: list[str]) -> None:
        value = draw(st.sampled_from(values))
        prefix = keyword.removesuffix("_action")
        exe = draw(_PATH) if value == "exec" else None
        text[keyword] = value if exe is None else f"exec {exe}"
        expected[keyword] = value.upper()
        expected[f"{prefix}_exe"] = exe

    def maybe(keyword: str) -> bool:
        return draw(st.booleans())

    for keyword in ("local_events", "write_logs", "use_libwrap", "distribute_network"):
        if maybe(keyword):
            yes_no(keyword)
    if maybe("verify_email"):
        yes_no("verify_email")
    if maybe("log_file"):
        text["log_file"] = expected["log_file"] = "/var/log/audit/" + draw(_FILE_NAME)
    if maybe("log_format"):
        choose("log_format", ["raw", "enriched"])
    if maybe("log_group"):
        group = draw(st.sampled_from([g.gr_name for g in grp.getgrall()] + ["0", "12345"]))
        text["log_group"] = expected["log_group"] = group
        expected["log_gid"] = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    flush = draw(st.sampled_from(["none", "incremental", "incremental_async", "data", "sync"]))
    text["flush"] = flush
    expected["flush"] = flush.upper()
    number("freq", 1 if flush.startswith("incremental") else 0, 2**31 - 1)
    for keyword, high in (("priority_boost", 2**31 - 1), ("num_logs", 999)):
        if maybe(keyword):
            number(keyword, 0, high)
    for keyword, high in (("max_log_file", 2**64 - 1), ("end_of_event_timeout", 2**64 - 1)):
        if maybe(keyword):
            number(keyword, 0, high)
    if maybe("name_format"):
        choose("name_format", ["none", "hostname", "fqd", "numeric", "user"])
    for keyword in ("name", "krb5_principal"):
        if maybe(keyword):
            text[keyword] = expected[keyword] = draw(_WORD)
    for keyword in ("plugin_dir", "krb5_key_file"):
        if maybe(keyword):
            text[keyword] = expected[keyword] = draw(_PATH)
    if maybe("max_log_file_action"):
        choose("max_log_file_action", ["ignore", "syslog", "suspend", "rotate", "keep_logs"])
    if maybe("action_mail_acct"):
        account = draw(st.from_regex(_ACCOUNT, fullmatch=True))
        text["action_mail_acct"] = expected["action_mail_acct"] = account
    admin = draw(st.integers(0, 10**9))
    for keyword, low in (("admin_space_left", 0), ("space_left", admin + 1)):
        if draw(st.booleans()):
            percent = draw(st.integers(1, 99))
            text[keyword] = f"{percent}%"
            expected[keyword], expected[f"{keyword}_percent"] = percent, True
        else:
            value = admin if keyword == "admin_space_left" else draw(st.integers(low, 2**64 - 1))
            text[keyword] = str(value)
            expected[keyword], expected[f"{keyword}_percent"] = value, False
    every = ["ignore", "syslog", "rotate", "email", "exec", "suspend", "single", "halt"]
    for keyword, values in (
        ("space_left_action", every),
        ("admin_space_left_action", every),
        ("disk_full_action", [v for v in every if v != "email"]),
        ("disk_error_action", [v for v in every if v not in ("email", "rotate")]),
    ):
        if maybe(keyword):
            action(keyword, values)
    if maybe("tcp_listen_port"):
        number("tcp_listen_port", 1, 65535)
    if maybe("tcp_listen_queue"):
        number("tcp_listen_queue", 1, 65535)
    if maybe("tcp_max_per_addr"):
        number("tcp_max_per_addr", 1, 1024)
    if maybe("tcp_client_max_idle"):
        number("tcp_client_max_idle", 0, 2**31 - 1)
    if maybe("max_restarts"):
        number("max_restarts", 0, 2**31 - 1)
    if maybe("q_depth"):
        number("q_depth", 512, 99999)
    if maybe("tcp_client_ports"):
        low = draw(st.integers(1, 65535))
        high = draw(st.integers(low, 65535))
        single = low == high and draw(st.booleans())
        text["tcp_client_ports"] = str(low) if single else f"{low}-{high}"
        expected["tcp_client_ports"] = (low, high)
    if maybe("transport"):
        choose("transport", ["tcp", "krb5"])
    if maybe("overflow_action"):
        choose("overflow_action", ["ignore", "syslog", "suspend", "single", "halt"])
    if maybe("kernel_link"):
        choose("kernel_link", ["register", "multicast"])
    return text, expected


_CASE_SENSITIVE = {
    "log_file",
    "log_group",
    "name",
    "krb5_principal",
    "plugin_dir",
    "krb5_key_file",
    "action_mail_acct",
}


@st.composite
def _render(draw: st.DrawFn, settings_: dict[str, str]) -> str:
    def shuffle_case(word: str) -> str:
        flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
        pairs = zip(word, flips, strict=True)
        return "".join(c.upper() if flip else c.lower() for c, flip in pairs)

    def gap(least: int) -> str:
        return " " * draw(st.integers(least, 3))

    lines = []
    for keyword in draw(st.permutations(list(settings_))):
        value, _, option = settings_[keyword].partition(" ")
        if keyword not in _CASE_SENSITIVE:
            value = shuffle_case(value)
        tail = f"{gap(1)}{option}" if option else ""
        line = f"{gap(0)}{shuffle_case(keyword)}{gap(1)}={gap(1)}{value}{tail}{gap(0)}"
        assert len(line) <= MAX_LINE_BYTES
        lines.append(line)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "   ", "# comment", "  #x = y"])))
    return "".join(line + "\n" for line in lines)


@settings(max_examples=300)
@given(st.data())
def test_valid_configs_round_trip(data: st.DataObject) -> None:
    text_values, expected = data.draw(_valid_settings())
    text = data.draw(_render(text_values))
    config, _ = parse_auditd_conf(text)
    assert config == structs.replace(AuditdConfig(), **expected)


# --------------------------------------------------------------------------------------
# Loading from the file system

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")


def write_conf(directory: Path, body: str, *, name: str = "auditd.conf") -> Path:
    log_dir = directory / "log"
    log_dir.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"log_file = {log_dir}/audit.log\n{BASE}{body}")
    path.chmod(0o640)
    return path


def load_error(path: Path, **kwargs: bool) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_auditd_conf(str(path), **kwargs)
    return info.value.errors


@root_only
def test_load_good_file(tmp_path: Path) -> None:
    config, warnings = load_auditd_conf(str(write_conf(tmp_path, "freq = 5\n")))
    assert config.freq == 5
    assert warnings == []


def test_load_missing_file_gives_defaults_and_a_warning(tmp_path: Path) -> None:
    config, warnings = load_auditd_conf(str(tmp_path / "nope.conf"))
    assert config == AuditdConfig()
    assert len(warnings) == 1
    assert "does not exist" in str(warnings[0])


@root_only
def test_load_wrong_owner(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "")
    os.chown(path, NOBODY, NOBODY)
    errors = load_error(path)
    assert [str(e) for e in errors] == [f"{path}: is not owned by root"]


@root_only
def test_load_world_writable(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "")
    path.chmod(0o646)
    assert "world writable" in str(load_error(path)[0])
    path.chmod(0o664)  # group-writable is what 3.0.9 tolerates
    config, warnings = load_auditd_conf(str(path))
    assert config.log_file == str(tmp_path / "log" / "audit.log")
    assert warnings == []


@root_only
def test_load_symlink(tmp_path: Path) -> None:
    target = write_conf(tmp_path, "freq = 6\n")
    link = tmp_path / "link.conf"
    link.symlink_to(target)
    assert "symbolic link" in str(load_error(link)[0])
    assert load_auditd_conf(str(link), allow_symlink=True)[0].freq == 6


def test_load_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    errors = load_error(tmp_path)
    assert any("not a regular file" in e.message for e in errors)


@root_only
def test_load_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in str(load_error(fifo)[0])


@root_only
def test_load_undecodable_bytes(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "freq = 5\n")
    with path.open("ab") as handle:
        handle.write(b"name = caf\xe9\n# comment \xff is fine\n")
    errors = load_error(path)
    assert [(e.line, "UTF-8" in e.message) for e in errors] == [(5, True)]


@root_only
def test_load_checks_exec_helpers(tmp_path: Path) -> None:
    helper = tmp_path / "helper.sh"
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    path = write_conf(tmp_path, f"disk_full_action = exec {helper}\n")
    assert load_auditd_conf(str(path))[0].disk_full_exe == str(helper)
    helper.chmod(0o775)
    errors = load_error(path)
    assert [e.line for e in errors] == [4]
    assert "0775" in errors[0].message


def test_load_checks_the_log_directory(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a root-owned config file")
    path = tmp_path / "auditd.conf"
    path.write_text(f"log_file = {tmp_path}/missing/audit.log\n{BASE}")
    errors = load_error(path)
    assert [e.line for e in errors] == [1]
    assert "log directory" in errors[0].message


@root_only
def test_load_checks_an_existing_log_file(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "")
    log = tmp_path / "log" / "audit.log"
    log.write_text("")
    log.chmod(0o644)
    _, warnings = load_auditd_conf(str(path))
    assert [w.line for w in warnings] == [1]
    assert "0600 or 0640" in warnings[0].message
    os.chown(log, NOBODY, 0)
    assert "not owned by root" in load_error(path)[0].message
    log.unlink()
    log.mkdir()
    assert "not a regular file" in load_error(path)[0].message


# --------------------------------------------------------------------------------------
# exec helpers


def test_exec_helper_problems(tmp_path: Path) -> None:
    helper = tmp_path / "helper"
    helper.write_text("#!/bin/sh\n")
    for mode in (0o750, 0o755, 0o555, 0o550):
        helper.chmod(mode)
        assert not any("mode" in p for p in exec_helper_problems(str(helper)))
    for mode in (0o777, 0o700, 0o751, 0o757):
        helper.chmod(mode)
        assert any("mode" in p for p in exec_helper_problems(str(helper)))
    assert "absolute" in exec_helper_problems("helper")[0]
    assert "cannot stat" in exec_helper_problems(str(tmp_path / "none"))[0]
    assert "regular" in exec_helper_problems(str(tmp_path))[0]
    assert exec_helper_problems("/bad\0path")


@root_only
def test_exec_helper_must_be_root_owned(tmp_path: Path) -> None:
    helper = tmp_path / "helper"
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    assert exec_helper_problems(str(helper)) == []
    os.chown(helper, NOBODY, NOBODY)
    assert any("not owned by root" in p for p in exec_helper_problems(str(helper)))
    assert stat.S_IMODE(helper.stat().st_mode) == 0o755
