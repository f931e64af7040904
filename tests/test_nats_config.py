"""The NATS file (publisher and collector): every problem named with file and line, the
file-system checks, and the builtin's arguments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditpy.config.errors import ConfigError
from auditpy.config.nats_conf import (
    COLLECTOR,
    PUBLISHER,
    NatsConf,
    load_nats_conf,
    parse_nats_conf,
)
from auditpy.config.plugins import DEFAULT_NATS_CONF, NATS, parse_nats_args, parse_plugin_conf
from auditpy.proto.nats import ServerUrl


def test_defaults_and_values() -> None:
    parsed = parse_nats_conf(
        "# the cluster\nservers = nats://a:1,tls://b,c:3\nSUBJECT = logs.{node}.audit\n"
        "queue_depth = 500\nwindow = 64\nack_timeout = 2.5\nrecover_from = none\n"
        "queue_file = /var/spool/q\nnode = web1.example.com\n",
        "/etc/n.conf",
    )
    config = parsed.config
    assert config.servers == (ServerUrl("a", 1), ServerUrl("b", tls=True), ServerUrl("c", 3))
    assert config.uses_tls
    assert config.subject_for("web1_example_com") == "logs.web1_example_com.audit"
    assert (config.queue_depth, config.window, config.ack_timeout) == (500, 64, 2.5)
    assert config.recover_from is None and config.queue_file == "/var/spool/q"
    assert NatsConf().stream == "AUDIT" and NatsConf().consumer == "pyauditd"
    assert parsed.lines["window"] == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers = a\nbogus = 1\n", "/n.conf:2: unknown keyword 'bogus'"),
        ("servers = a\nwindow=3\n", "/n.conf:2: missing '='"),
        ("servers = a\nwindow = 0\n", "/n.conf:2: window: 0 is out of range"),
        ("servers = a\nwindow = x\n", "/n.conf:2: window: 'x' should be a number"),
        ("servers = a\nwindow =\n", "/n.conf:2: window: no value given"),
        ("servers = a\nwindow = 1 2\n", "/n.conf:2: window: unexpected '2' after the value"),
        ("servers = http://a\n", "/n.conf:1: servers: 'http://a': scheme"),
        ("servers = a,,b\n", "/n.conf:1: servers: empty server"),
        ("servers = a\nsubject = audit.>\n", "/n.conf:2: subject: subject 'audit.>' has a"),
        ("servers = a\nsubject = a..b\n", "/n.conf:2: subject: subject 'a..b' has an empty"),
        ("servers = a\nstream = a.b\n", "/n.conf:2: stream: stream name 'a.b'"),
        ("servers = a\nqueue_file = rel/q\n", "/n.conf:2: queue_file: 'rel/q' is not an abs"),
        ("servers = a\ntls = maybe\n", "/n.conf:2: tls: 'maybe' should be yes or no"),
        ("window = 3\n", "/n.conf: servers is not set"),
        ("servers = a\ntoken = t\nuser = u\n", "/n.conf:2: token and user/password exclude"),
        ("servers = a\npassword = p\n", "/n.conf:2: password without user"),
        ("servers = a\ntls_key_file = /k\n", "/n.conf:2: tls_key_file is set but"),
        ("servers = a\nack_timeout = -1\n", "/n.conf:2: ack_timeout: -1 is out of range"),
        ("servers = a\nack_timeout = nan\n", "/n.conf:2: ack_timeout: nan is out of range"),
    ],
)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nats_conf(text, "/n.conf")
    assert any(str(p).startswith(message) for p in caught.value.errors), caught.value.errors


def test_every_error_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nats_conf("window = 0\nbatch = 0\nnope = 1\n", "/n.conf")
    assert [p.line for p in caught.value.errors] == [1, 2, 3]


def test_keys_of_the_other_end_are_warned_about() -> None:
    parsed = parse_nats_conf("servers = a\nconsumer = c\nwindow = 9\n", "/n.conf", PUBLISHER)
    assert [str(w) for w in parsed.warnings] == ["/n.conf:2: consumer is ignored by the publisher"]
    assert parsed.config.consumer == "pyauditd"
    parsed = parse_nats_conf("servers = a\nconsumer = c\nwindow = 9\npeer_logs = /l/*.log\n",
                             "/n.conf", COLLECTOR)
    assert parsed.config.consumer == "c" and parsed.config.peer_logs == "/l/*.log"
    assert [w.line for w in parsed.warnings] == [3]


def test_tls_files_without_tls_are_warned_about() -> None:
    parsed = parse_nats_conf("servers = a\ntls_ca_file = /ca.pem\n", "/n.conf")
    assert parsed.warnings[0].line == 2 and "tls_ca_file is used only" in parsed.warnings[0].message


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_checks_the_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.conf", "servers = a\n", 0o644)
    assert load_nats_conf(str(good)).config.servers == (ServerUrl("a"),)
    secret = write(tmp_path / "secret.conf", "servers = a\nuser = u\npassword = p\n", 0o640)
    with pytest.raises(ConfigError, match=r"secret.conf:3: holds a password but is readable"):
        load_nats_conf(str(secret))
    os.chmod(secret, 0o600)
    assert load_nats_conf(str(secret)).config.password == "p"
    writable = write(tmp_path / "w.conf", "servers = a\n", 0o664)
    with pytest.raises(ConfigError, match="is group or world writable"):
        load_nats_conf(str(writable))
    with pytest.raises(ConfigError, match="cannot open"):
        load_nats_conf(str(tmp_path / "missing.conf"))
    tls = write(tmp_path / "tls.conf", f"servers = tls://a\ntls_ca_file = {tmp_path}/none.pem\n")
    with pytest.raises(ConfigError, match=r"tls.conf:2: tls_ca_file: cannot read"):
        load_nats_conf(str(tls))
    garbage = write(tmp_path / "garbage.pem", "not a certificate\n")
    bad = write(tmp_path / "bad.conf", f"servers = tls://a\ntls_ca_file = {garbage}\n")
    with pytest.raises(ConfigError, match=r"bad.conf:2: cannot load the TLS certificates"):
        load_nats_conf(str(bad))


def test_builtin_nats_in_plugin_files() -> None:
    config, _ = parse_plugin_conf(
        "active = yes\npath = builtin_nats\nargs = /etc/audit/n.conf\n", "/p/nats.conf")
    assert (config.builtin, config.type, config.args) == (NATS, "builtin", ("/etc/audit/n.conf",))
    assert parse_nats_args([]) == DEFAULT_NATS_CONF
    with pytest.raises(ConfigError, match=r"/p/n.conf:3: nats: configuration file 'rel'"):
        parse_plugin_conf("active = yes\npath = builtin_nats\nargs = rel\n", "/p/n.conf")
    with pytest.raises(ConfigError, match="one argument expected"):
        parse_plugin_conf("active = yes\npath = builtin_nats\nargs = /a /b\n", "/p/n.conf")
