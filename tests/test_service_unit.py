"""conf/systemd/pyauditd.service agrees with the daemon it starts, and systemd accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from auditpy.auditd import cli
from auditpy.auditd.daemon import Options

from .conftest import needs

UNIT = Path(__file__).resolve().parent.parent / "conf" / "systemd" / "pyauditd.service"


def unit_settings() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_matches_the_daemon() -> None:
    service = unit_settings()["Service"]
    # Type=forking: the parent exits once the child has registered, and the pid file is
    # where the daemon writes it by default.
    assert service["Type"] == ["forking"]
    run_dir = cli.parse_args([]).run_dir
    assert service["PIDFile"] == [Options(run_dir=run_dir).pid_file]
    assert service["ExecStart"][0].endswith("/pyauditd")  # no -f or -n: it detaches
    prevent = {int(code) for code in service["RestartPreventExitStatus"][0].split()}
    assert prevent == {cli.EXIT_USAGE, cli.EXIT_PRIVILEGE, cli.EXIT_CONFIG}
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "auditd.service" in unit_settings()["Unit"]["Conflicts"][0].split()
    # Rules come from pyauditctl (all or nothing), not from the C package's augenrules.
    assert service["ExecStartPost"] == ["-/usr/local/bin/pyauditctl --load"]


@needs("systemd-analyze", "pyauditd")  # verify wants ExecStart to name an existing program
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    installed = shutil.which("pyauditd")
    assert analyze is not None and installed is not None
    unit = tmp_path / "pyauditd.service"
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/pyauditd",
                                    f"ExecStart={installed}")
    ctl = shutil.which("pyauditctl") or str(Path(installed).with_name("pyauditctl"))
    text = text.replace("-/usr/local/bin/pyauditctl", f"-{ctl}")
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
