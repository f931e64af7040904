"""Drive a real pyaudispd through its stdin, as pyauditd does, and look at its children.

Plugin programs and files live under a per-test directory; everything is created by root
with modes that pass the dispatcher's checks (root-owned, not group/world-writable).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from auditpy.proto import dispatch as wire

from .conftest import proc_state, wait_for

PLUGIN_SOURCES = Path(__file__).parent / "plugins"
USER = 1005  # AUDIT_USER
EOE = 1320


def children_of(ppid: int) -> dict[int, str]:
    """pid -> state letter of every process whose parent is `ppid` (from /proc/*/stat)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == ppid:
            found[int(name)] = fields[0]
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode() for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def install(source: str, target: Path) -> Path:
    """Copy a helper script to `target`, root-owned and 0755, atomically (a new inode)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(PLUGIN_SOURCES / source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


class Audispd:
    """One pyaudispd process with a temporary configuration."""

    def __init__(
        self,
        root: Path,
        *,
        settings: dict[str, object] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.conf = root / "conf"
        self.plugin_dir = root / "plugins.d"
        self.run_dir = root / "run"
        self.out = root / "out"
        for d in (self.conf, self.plugin_dir, self.run_dir, self.out):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        self.log_path = root / "audispd.log"
        self.args = [
            "--backoff-initial",
            "0.05",
            "--backoff-max",
            "0.2",
            "--stop-timeout",
            "1",
            "--shutdown-timeout",
            "2",
            *args,
        ]
        self.write_settings(settings or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._log_offset = 0

    # -- files ----------------------------------------------------------------------------

    def write_settings(self, settings: dict[str, object]) -> None:
        values: dict[str, object] = {
            "log_file": str(self.root / "audit.log"),
            "space_left": 75,
            "admin_space_left": 50,
            "plugin_dir": str(self.plugin_dir),
            "max_restarts": 10,
            "q_depth": 512,
        }
        values.update(settings)
        self._write(self.conf / "auditd.conf", "".join(f"{k} = {v}\n" for k, v in values.items()))

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def program(self, source: str = "recorder.py", name: str | None = None) -> Path:
        return install(source, self.root / (name or source))

    def plugin(
        self,
        name: str,
        *,
        active: bool = True,
        path: str | Path | None = None,
        args: Iterable[str] | None = None,
        fmt: str = "string",
        extra: str = "",
    ) -> Path:
        """Write plugins.d/NAME.conf; by default a recorder writing to out/NAME."""
        if path is None:
            path = self.root / "recorder.py"
            if not path.exists():
                self.program()
        if args is None:
            args = [str(self.output(name))]
        text = (
            f"active = {'yes' if active else 'no'}\n"
            "direction = out\n"
            f"path = {path}\n"
            "type = always\n"
            f"args = {' '.join(args)}\n"
            f"format = {fmt}\n"
            f"{extra}"
        )
        conf = self.plugin_dir / f"{name}.conf"
        self._write(conf, text)
        return conf

    def output(self, name: str) -> Path:
        return self.out / name

    def events(self, name: str) -> list[tuple[str, int]]:
        try:
            text = (self.out / f"{name}.events").read_text()
        except FileNotFoundError:
            return []
        return [(w, int(p)) for w, p in (line.split() for line in text.splitlines())]

    def starts(self, name: str) -> list[int]:
        return [pid for what, pid in self.events(name) if what == "start"]

    # -- process --------------------------------------------------------------------------

    def start(self) -> Audispd:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "auditpy.audispd",
                    "-f",
                    "-c",
                    str(self.conf),
                    "--run-dir",
                    str(self.run_dir),
                    *self.args,
                ],
                stdin=theirs,
                stdout=log,
                stderr=log,
            )
        theirs.close()
        self.sock = ours
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, payload: bytes, msg_type: int = USER, version: int = wire.PROTOCOL_V1) -> None:
        assert self.sock is not None
        self.sock.sendall(wire.frame(version, msg_type, payload))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
        wait_for(lambda: self.count(pattern) >= count, timeout, f"{pattern!r} x{count} in log",
                 context=lambda: f"log:\n{self.log()[-3000:]}")

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP and wait until the dispatcher has finished the reload."""
        before = self.count(r"reload done")
        self.signal(signal.SIGHUP)
        self.wait_log(r"reload done", before + 1, timeout)

    def children(self) -> dict[int, str]:
        return children_of(self.pid)

    def plugin_pids(self) -> dict[str, int]:
        """Running plugin processes by the name of the output file they were given."""
        found = {}
        prefix = str(self.out) + "/"
        for pid in self.children():
            for arg in cmdline(pid):
                if arg.startswith(prefix):
                    found[arg[len(prefix) :]] = pid
        return found

    def ready(self, *names: str) -> bool:
        """Whether each named recorder runs and has installed its SIGHUP handler (a SIGHUP
        before that would kill it: the default action, as for any plugin)."""
        pids = self.plugin_pids()
        return all(n in pids and ("start", pids[n]) in self.events(n) for n in names)

    def wait_ready(self, *names: str, timeout: float = 10.0) -> None:
        wait_for(lambda: self.ready(*names), timeout, f"plugins {names} ready",
                 context=lambda: f"log:\n{self.log()[-3000:]}")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def state(self, timeout: float = 10.0) -> dict[str, dict[str, str]]:
        """SIGCONT, then the state file as {"": globals, "plugin NAME": {...}}."""
        path = self.run_dir / "audispd.state"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.signal(signal.SIGCONT)
        wait_for(path.exists, timeout, "state file")
        sections: dict[str, dict[str, str]] = {"": {}}
        current = sections[""]
        for line in path.read_text().splitlines():
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], {})
            elif " = " in line:
                key, _, value = line.partition(" = ")
                current[key] = value
        return sections

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close_input(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stop(self) -> int | None:
        """End of input, then wait; kill whatever is left (the test fails elsewhere)."""
        self.close_input()
        code: int | None = None
        if self.proc is not None:
            try:
                code = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return code

    def leftovers(self) -> list[int]:
        """Processes still alive that run with this test's files (the dispatcher and its
        plugins: their command lines name the test directory)."""
        root = str(self.root)
        return [
            int(name)
            for name in os.listdir("/proc")
            if name.isdigit()
            and int(name) != os.getpid()
            and any(root in a for a in cmdline(int(name)))
            and proc_state(int(name)) not in (None, "Z")
        ]
