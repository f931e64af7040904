"""plugins.d files and the dispatcher settings: parsing, file checks, scanning."""

from __future__ import annotations

import os
import shutil
import syslog
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.config.errors import ConfigError
from auditpy.config.files import ProgramIdentity, check_plugin_program
from auditpy.config.plugins import (
    AF_UNIX,
    SYSLOG,
    DispatcherSettings,
    PluginConfig,
    any_active,
    load_dispatcher_settings,
    load_plugin_file,
    load_plugins,
    parse_af_unix_args,
    parse_audispd_conf,
    parse_plugin_conf,
    parse_syslog_args,
    plugin_file_names,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files must be root-owned")


def parse(text: str) -> PluginConfig:
    config, _warnings = parse_plugin_conf(text, "/p/x.conf")
    return config


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_plugin_conf(text, "/p/x.conf")
    return [str(problem) for problem in info.value.errors]


# --------------------------------------------------------------------------- keys


def test_every_key() -> None:
    config = parse(
        "# comment\n"
        "active = yes\n"
        "direction = out\n"
        "path = /sbin/audisp-remote\n"
        "type = always\n"
        "args = one two three four\n"
        "format = binary\n"
    )
    assert config == PluginConfig(
        name="x.conf",
        file="/p/x.conf",
        active=True,
        path="/sbin/audisp-remote",
        args=("one", "two", "three", "four"),
        format="binary",
    )
    assert config.argv == ["/sbin/audisp-remote", "one", "two", "three", "four"]
    assert config.path_line == 4


def test_defaults_and_case() -> None:
    config = parse("ACTIVE = YES\nPath = /bin/true\nFormat = String\n")
    assert (config.active, config.type, config.format, config.args) == (
        True,
        "always",
        "string",
        (),
    )
    assert not parse("path = /bin/true\n").active  # active defaults to no


def test_unterminated_last_line_is_read() -> None:
    assert parse("path = /bin/true\nactive = yes").active


@pytest.mark.parametrize(
    ("path", "builtin"),
    [
        ("builtin_af_unix", AF_UNIX),
        ("af_unix", AF_UNIX),
        ("BUILTIN_SYSLOG", SYSLOG),
        ("syslog", SYSLOG),
    ],
)
def test_builtin_paths(path: str, builtin: str) -> None:
    config = parse(f"active = yes\npath = {path}\ntype = builtin\n")
    assert (config.builtin, config.path, config.type) == (builtin, builtin, "builtin")
    with pytest.raises(ValueError):
        _ = config.argv


def test_args_empty_and_repeated_key_warns() -> None:
    config, warnings = parse_plugin_conf("path = /a\nargs =\npath = /b\n", "/p/x.conf")
    assert config.path == "/b" and config.args == ()
    assert [str(w) for w in warnings] == [
        "/p/x.conf:3: path was already set on line 1; this value is used"
    ]
    assert not warnings[0].skipped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("active = maybe\n", "/p/x.conf:1: active: 'maybe' is not one of yes, no"),
        ("direction = in\n", "/p/x.conf:1: direction = in is not supported"),
        ("direction = sideways\n", "/p/x.conf:1: direction: 'sideways' is not one of out"),
        ("path = bin/true\n", "/p/x.conf:1: path 'bin/true' is neither absolute nor"),
        ("type = sometimes\n", "/p/x.conf:1: type: 'sometimes' is not one of always, builtin"),
        ("format = xml\n", "/p/x.conf:1: format: 'xml' is not one of string, binary"),
        ("colour = blue\n", "/p/x.conf:1: unknown keyword 'colour'"),
        ("active=yes\n", "/p/x.conf:1: missing '=' after 'active=yes'"),
        ("active\n", "/p/x.conf:1: missing '=' after 'active'"),
        ("active = yes no\n", "/p/x.conf:1: wrong number of tokens"),
        ("active =\n", "/p/x.conf:1: wrong number of tokens"),
        ("path = /a\0b\n", "/p/x.conf:1: line contains a NUL byte"),
        ("path = /\udcff\n", "/p/x.conf:1: line contains bytes that are not valid UTF-8"),
        ("args = " + "x " * 300 + "\n", "/p/x.conf:1: line is longer than 512 bytes"),
        ("\n\nactive = yes\n", "/p/x.conf:3: the plugin is active but has no path"),
        ("type = builtin\npath = /bin/true\n", "/p/x.conf:1: type = builtin needs path"),
        ("path = syslog\nargs = LOG_NOPE\n", "/p/x.conf:2: syslog: unknown argument 'LOG_NOPE'"),
        ("path = af_unix\nargs = 0640 0600\n", "/p/x.conf:2: af_unix: socket mode given twice"),
    ],
)
def test_bad_values_name_file_and_line(text: str, message: str) -> None:
    found = errors(text)
    assert any(problem.startswith(message) for problem in found), found


def test_every_error_is_reported() -> None:
    found = errors("active = maybe\nformat = xml\nfoo = bar\n")
    assert [p.split(":")[1] for p in found] == ["1", "2", "3"]


def test_bad_path_line_gives_no_extra_missing_path_error() -> None:
    assert len(errors("active = yes\npath = relative\n")) == 1


def test_af_unix_args() -> None:
    assert parse_af_unix_args([]) == parse_af_unix_args(["0640", "/var/run/audispd_events"])
    args = parse_af_unix_args(["/run/x.sock", "binary", "0600"])
    assert (args.mode, args.path, args.format) == (0o600, "/run/x.sock", "binary")
    for bad in (["0999"], ["01777"], ["x/y"], ["nope"], ["/a", "/b"], ["string", "binary"]):
        with pytest.raises(ValueError):
            parse_af_unix_args(bad)
    with pytest.raises(ValueError):
        parse_af_unix_args(["/" + "x" * 200])


def test_syslog_args() -> None:
    assert parse_syslog_args([]) == parse_syslog_args(["LOG_INFO", "LOG_USER"])
    args = parse_syslog_args(["log_local3", "LOG_WARNING"])
    assert (args.priority, args.facility) == (syslog.LOG_WARNING, syslog.LOG_LOCAL3)
    for bad in (["LOG_INFO", "LOG_ERR"], ["LOG_USER", "LOG_DAEMON"], ["interpret"]):
        with pytest.raises(ValueError):
            parse_syslog_args(bad)


def test_launch_key_covers_what_needs_a_restart() -> None:
    base = parse("active = yes\npath = /bin/true\nargs = a\n")
    same = parse("# moved around\nargs = a\npath = /bin/true\nactive = yes\n")
    assert base.launch_key == same.launch_key
    for text in (
        "active = yes\npath = /bin/false\nargs = a\n",
        "active = yes\npath = /bin/true\nargs = b\n",
        "active = yes\npath = /bin/true\nargs = a\nformat = binary\n",
    ):
        assert parse(text).launch_key != base.launch_key


def test_plugin_file_names() -> None:
    names = ["b.conf", "a.conf", ".hidden.conf", "x.conf.dpkg-old", "noext", "y.txt", ".conf"]
    assert plugin_file_names(names) == ["a.conf", "b.conf"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("= #\n\0\t")))
def test_hostile_text_gives_clean_problems(text: str) -> None:
    try:
        config, warnings = parse_plugin_conf(text, "/p/h.conf")
    except ConfigError as exc:
        assert exc.errors and all(p.path == "/p/h.conf" for p in exc.errors)
        assert all(isinstance(p.line, int) and p.line >= 1 for p in exc.errors)
        return
    assert config.name == "h.conf"
    assert all(not w.skipped for w in warnings)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["active", "direction", "path", "type", "args", "format", "bogus"]),
            st.sampled_from(
                [
                    "yes",
                    "no",
                    "out",
                    "in",
                    "/bin/true",
                    "syslog",
                    "af_unix",
                    "always",
                    "builtin",
                    "string",
                    "binary",
                    "LOG_ERR",
                    "0600",
                    "/x/y",
                    "",
                    "=",
                ]
            ),
        ),
        max_size=8,
    )
)
def test_hostile_keys_and_values(lines: list[tuple[str, str]]) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in lines)
    try:
        parse_plugin_conf(text, "/p/h.conf")
    except ConfigError as exc:
        assert exc.errors


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_bytes_give_clean_problems(data: bytes) -> None:
    """What the loader feeds the parser: bytes decoded with surrogateescape."""
    text = data.decode("utf-8", "surrogateescape")
    for parser in (parse_plugin_conf, parse_audispd_conf):
        try:
            parser(text, "/p/h.conf")
        except ConfigError as exc:
            assert exc.errors and all(str(p).startswith("/p/h.conf:") for p in exc.errors)


# --------------------------------------------------------------------------- audispd.conf


def test_audispd_conf_values() -> None:
    values, warnings = parse_audispd_conf(
        "q_depth = 100\noverflow_action = SUSPEND\npriority_boost = 2\nmax_restarts = 0\n"
        "name_format = user\nname = box\nplugin_dir = rel/dir\n",
        "/c/audispd.conf",
    )
    assert values == {
        "q_depth": 100,
        "overflow_action": "SUSPEND",
        "priority_boost": 2,
        "max_restarts": 0,
        "name_format": "USER",
        "name": "box",
        "plugin_dir": "rel/dir",
    }
    assert warnings == [
        "/c/audispd.conf:1: q_depth: 100 is small; use at least 512 for a safety margin"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "q_depth = 0\n",
        "q_depth = 100000\n",
        "overflow_action = panic\n",
        "max_restarts = -1\n",
        "dispatcher = /sbin/audispd\n",
        "name_format = dns\n",
        "priority_boost = 99999999999\n",
    ],
)
def test_audispd_conf_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_audispd_conf(text, "/c/audispd.conf")
    assert str(info.value).startswith("/c/audispd.conf:1: ")


# --------------------------------------------------------------------------- files


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def auditd_conf(directory: Path, extra: str = "") -> None:
    write(
        directory / "auditd.conf",
        f"log_file = {directory}/audit.log\nspace_left = 75\nadmin_space_left = 50\n"
        f"q_depth = 1000\noverflow_action = ignore\nmax_restarts = 3\npriority_boost = 1\n"
        f"plugin_dir = plugins\n{extra}",
    )


@needs_root
def test_settings_from_auditd_conf_then_audispd_conf(tmp_path: Path) -> None:
    auditd_conf(tmp_path)
    settings, _ = load_dispatcher_settings(str(tmp_path), str(tmp_path))
    assert settings == DispatcherSettings(
        q_depth=1000,
        overflow_action="IGNORE",
        priority_boost=1,
        max_restarts=3,
        plugin_dir=f"{tmp_path}/plugins",
    )
    write(tmp_path / "audispd.conf", "q_depth = 4000\nmax_restarts = 7\nplugin_dir = other\n")
    settings, _ = load_dispatcher_settings(str(tmp_path), str(tmp_path))
    assert (settings.q_depth, settings.max_restarts, settings.overflow_action) == (
        4000,
        7,
        "IGNORE",
    )
    assert settings.plugin_dir == f"{tmp_path}/other"


@needs_root
def test_settings_refuse_bad_files(tmp_path: Path) -> None:
    auditd_conf(tmp_path)
    write(tmp_path / "audispd.conf", "q_depth = 10\n", mode=0o664)
    with pytest.raises(ConfigError, match="group or world writable"):
        load_dispatcher_settings(str(tmp_path), "/")
    write(tmp_path / "audispd.conf", "q_depth = lots\n")
    with pytest.raises(ConfigError, match=r"audispd.conf:1: q_depth"):
        load_dispatcher_settings(str(tmp_path), "/")
    os.unlink(tmp_path / "audispd.conf")
    auditd_conf(tmp_path, "overflow_action = panic\n")
    with pytest.raises(ConfigError, match="overflow_action"):
        load_dispatcher_settings(str(tmp_path), "/")


@needs_root
def test_missing_auditd_conf_gives_defaults(tmp_path: Path) -> None:
    settings, warnings = load_dispatcher_settings(str(tmp_path), "/")
    assert settings == DispatcherSettings()
    assert warnings and "does not exist" in warnings[0]


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "plugin"
    shutil.copyfile("/bin/true", path)
    os.chmod(path, 0o750)
    return path


@needs_root
def test_program_checks(tmp_path: Path, program: Path) -> None:
    identity, reason = check_plugin_program(str(program))
    assert reason is None and identity == ProgramIdentity.of(os.stat(program))
    for mode, text in (
        (0o770, "group or world writable"),
        (0o757, "group or world writable"),
        (0o640, "not readable and executable"),
        (0o350, "not readable"),
    ):
        os.chmod(program, mode)
        assert text in (check_plugin_program(str(program))[1] or "")
    os.chmod(program, 0o755)
    os.chown(program, 1, 0)
    assert "not owned by root" in (check_plugin_program(str(program))[1] or "")
    assert "not a regular file" in (check_plugin_program(str(tmp_path))[1] or "")
    assert "cannot stat" in (check_plugin_program(str(tmp_path / "nope"))[1] or "")
    assert "absolute" in (check_plugin_program("bin/true")[1] or "")


@needs_root
def test_identity_changes_when_the_program_is_replaced(program: Path) -> None:
    before, _ = check_plugin_program(str(program))
    tmp = program.with_name("new")
    shutil.copyfile("/bin/false", tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, program)
    after, _ = check_plugin_program(str(program))
    assert before is not None and after is not None and before != after


@needs_root
def test_load_plugins_skips_bad_files_only(tmp_path: Path, program: Path) -> None:
    d = tmp_path / "plugins.d"
    d.mkdir()
    write(d / "good.conf", f"active = yes\npath = {program}\n")
    write(d / "off.conf", "active = no\npath = /does/not/matter\n")
    write(d / "builtin.conf", "active = yes\npath = builtin_syslog\nargs = LOG_ERR\n")
    write(d / "typo.conf", f"active = yes\npath = {program}\nformat = xml\n")
    write(d / "writable.conf", f"active = yes\npath = {program}\n", mode=0o666)
    write(d / "groupw.conf", f"active = yes\npath = {program}\n", mode=0o620)
    write(d / "missing.conf", "active = yes\npath = /no/such/plugin\n")
    write(d / "other.conf", f"active = yes\npath = {program}\n")
    os.chown(d / "other.conf", 1, 1)
    os.mkdir(d / "dir.conf")
    os.symlink(d / "good.conf", d / "link.conf")
    for skipped in (".hidden.conf", "good.conf.bak", "README", "x.conf~"):
        write(d / skipped, "this is not a plugin file\n")

    plugins, problems = load_plugins(str(d))
    assert sorted(plugins) == ["builtin.conf", "good.conf", "link.conf", "off.conf"]
    assert plugins["good.conf"].identity == ProgramIdentity.of(os.stat(program))
    assert plugins["off.conf"].identity is None  # inactive: its program is not checked
    assert plugins["builtin.conf"].builtin == SYSLOG
    text = "\n".join(str(p) for p in problems)
    assert f"{d}/typo.conf:3: format: 'xml'" in text
    assert f"{d}/writable.conf: is group or world writable" in text
    assert f"{d}/groupw.conf: is group or world writable" in text
    assert f"{d}/missing.conf:2: cannot stat '/no/such/plugin'" in text
    assert f"{d}/other.conf: is not owned by root" in text
    assert f"{d}/dir.conf: is not a regular file" in text
    assert all(p.skipped for p in problems)
    assert len(problems) == 6
    assert any_active(str(d))


@needs_root
def test_bad_program_of_active_plugin(tmp_path: Path, program: Path) -> None:
    os.chmod(program, 0o775)
    conf = write(tmp_path / "p.conf", f"active = yes\npath = {program}\n")
    config, problems = load_plugin_file(str(conf))
    assert config is None
    assert [str(p) for p in problems] == [f"{conf}:2: '{program}' is group or world writable"]


@needs_root
def test_any_active(tmp_path: Path) -> None:
    assert not any_active(str(tmp_path / "nowhere"))
    plugins, problems = load_plugins(str(tmp_path / "nowhere"))
    assert plugins == {} and "cannot read plugin directory" in str(problems[0])
    write(tmp_path / "a.conf", "active = no\npath = syslog\n")
    assert not any_active(str(tmp_path))
    write(tmp_path / "a.conf", "active = yes\npath = syslog\n")
    assert any_active(str(tmp_path))
    write(tmp_path / "a.conf", "active = yes\npath = syslog\nargs = LOG_BOGUS\n")
    assert not any_active(str(tmp_path))


@needs_root
def test_fifo_and_huge_files_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.conf", 0o644)
    write(tmp_path / "huge.conf", "# x\n" * 20000)
    plugins, problems = load_plugins(str(tmp_path))
    assert plugins == {}
    assert sorted(str(p).split(": ", 1)[1] for p in problems) == [
        "is larger than 65536 bytes",
        "is not a regular file",
    ]
