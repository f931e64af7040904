"""The command line without the kernel: --check, --version, usage errors, hostile configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditpy.auditd import cli

KEYWORDS = ["log_file", "flush", "freq", "num_logs", "space_left", "admin_space_left",
            "max_log_file_action", "log_format", "name_format", "q_depth", "tcp_listen_port",
            "disk_full_action", "space_left_action", "priority_boost", "kernel_link"]


def write_conf(directory: Path, text: str | bytes) -> None:
    path = directory / "auditd.conf"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    os.chmod(path, 0o640)


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "auditpy.auditd", "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("pyauditd ")


def test_usage_error_exits_2() -> None:
    out = subprocess.run([sys.executable, "-m", "auditpy.auditd", "-s", "sometimes"],
                         capture_output=True, text=True)
    assert out.returncode == 2


def test_check_accepts_the_shipped_local_config(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).parent.parent
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main(["--check", "-c", "conf/local"]) == 0
    finally:
        os.chdir(cwd)


def test_check_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_conf(tmp_path, "space_left = 2\nadmin_space_left = 1\nflush = SOMETIMES\n")
    assert cli.main(["--check", "-c", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/auditd.conf:3:" in err


line = st.one_of(
    st.text(max_size=80),
    st.builds(lambda k, v, sp: f"{k}{sp}={sp}{v}", st.sampled_from(KEYWORDS),
              st.text(max_size=30), st.sampled_from([" ", "", "  ", "\t"])),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(st.lists(line, max_size=12), st.binary(max_size=40))
def test_hostile_configs_give_a_clean_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], junk: bytes
) -> None:
    write_conf(tmp_path, "\n".join(lines).encode("utf-8", "surrogatepass") + junk + b"\n")
    code = cli.main(["--check", "-c", str(tmp_path)])
    out = capsys.readouterr()
    assert code in (0, 1)
    assert "Traceback" not in out.err
    if code == 1:
        assert str(tmp_path / "auditd.conf") in out.err


#: A stand-in daemon for --state: on SIGCONT it writes its state report.
_REPORTER = """
import os, signal, sys
path = sys.argv[1]
def report(_signum, _frame):
    with open(path + ".tmp", "w") as f:
        f.write("a line of the state report\\n")
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGCONT, report)
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_state_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`pyauditd --state | head -0`: the report's reader is gone; pyauditd says nothing and
    exits as the C tools do when SIGPIPE ends them (141)."""
    reporter = subprocess.Popen([sys.executable, "-c", _REPORTER, str(tmp_path / "auditd.state")],
                                stdout=subprocess.PIPE, text=True)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the report
    try:
        assert reporter.stdout is not None and reporter.stdout.readline() == "ready\n"
        (tmp_path / "auditd.pid").write_text(f"{reporter.pid}\n")
        state = subprocess.run([sys.executable, "-m", "auditpy.auditd", "--state",
                                "--run-dir", str(tmp_path)],
                               stdout=write_end, stderr=subprocess.PIPE, timeout=60)
        assert (state.returncode, state.stderr) == (141, b"")
        assert (tmp_path / "auditd.state").exists()  # the report was asked for and written
    finally:
        os.close(write_end)
        reporter.kill()
        reporter.wait()
