"""log_file is checked like AuditLog opens it (issue 15, item 6a): what the open would refuse
is a FILE:LINE configuration error before the daemon starts, never a traceback after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditpy.auditd import cli
from auditpy.auditd.logfile import AuditLog, LogFileError, LogSettings
from auditpy.config.auditd_conf import load_auditd_conf, log_file_problems
from auditpy.config.errors import ConfigError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned config file")
NOBODY = 65534


def write_conf(directory: Path, log_file: Path) -> Path:
    path = directory / "auditd.conf"
    path.write_text(f"log_file = {log_file}\nlocal_events = no\nspace_left = 10\n"
                    "admin_space_left = 5\n")
    path.chmod(0o640)
    return path


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir(mode=0o700)
    return d


def refusal(log_file: Path) -> str:
    """Why AuditLog refuses to open `log_file` (the check must agree)."""
    with pytest.raises(LogFileError) as info:
        AuditLog(LogSettings(log_file=str(log_file)), notify=lambda p, t: None).open()
    return str(info.value)


@pytest.mark.parametrize("dangling", [False, True])
def test_symlinked_log_file_is_a_config_error(tmp_path: Path, logdir: Path,
                                              dangling: bool) -> None:
    target = logdir / "real.log"
    if not dangling:
        target.write_bytes(b"")
        target.chmod(0o600)
    link = logdir / "audit.log"
    link.symlink_to(target)
    assert refusal(link)
    errors, _ = log_file_problems(str(link))
    assert len(errors) == 1 and "symbolic link" in errors[0]
    if os.geteuid() == 0:
        with pytest.raises(ConfigError) as info:
            load_auditd_conf(str(write_conf(tmp_path, link)))
        assert [(e.line, "symbolic link" in e.message) for e in info.value.errors] == [(1, True)]


def test_fifo_log_file_is_a_config_error(logdir: Path) -> None:
    fifo = logdir / "audit.log"
    os.mkfifo(fifo, 0o600)
    assert "not a regular file" in refusal(fifo)
    errors, _ = log_file_problems(str(fifo))
    assert len(errors) == 1 and "not a regular file" in errors[0]


@root_only
def test_log_file_of_another_owner_is_a_config_error(logdir: Path) -> None:
    log = logdir / "audit.log"
    log.write_bytes(b"")
    log.chmod(0o600)
    os.chown(log, NOBODY, NOBODY)
    assert "not owned by root" in refusal(log)
    errors, _ = log_file_problems(str(log))
    assert len(errors) == 1 and "not owned by root" in errors[0]


@root_only
def test_check_names_the_log_file_line(tmp_path: Path, logdir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    link = logdir / "audit.log"
    link.symlink_to(logdir / "elsewhere.log")
    conf = write_conf(tmp_path, link)
    assert cli.main(["--check", "-c", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{conf}:1:" in err and "symbolic link" in err


@root_only
def test_daemon_with_a_symlinked_log_file_exits_6_with_file_and_line(
    tmp_path: Path, logdir: Path
) -> None:
    """The start itself (local_events = no: nothing would touch the kernel even if it got
    that far)."""
    target = logdir / "real.log"
    target.write_bytes(b"")
    target.chmod(0o600)
    link = logdir / "audit.log"
    link.symlink_to(target)
    conf = write_conf(tmp_path, link)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "auditpy.auditd", "-f", "-c", str(tmp_path),
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 6, out.stderr
    assert f"{conf}:1:" in out.stderr and "symbolic link" in out.stderr
    assert "Traceback" not in out.stderr
