"""Whole events as JSON from the real kernel: pyauditd + pyaudispd's builtin_json, with laurel
0.5.1 as a second plugin of the same dispatcher (both see the same records).

Rules match only the test's own processes: each workload first sets its login uid to a
value no session on this machine has (writing /proc/self/loginuid, which also starts a new
session), and every rule carries ``-F auid=`` of that value; the rules are deleted
afterwards (the kernel_state fixture checks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from auditpy.events.assemble import Assembler
from auditpy.proto.netlink import STATUS_BACKLOG_LIMIT, AuditStatus
from tests.auparse_oracle import UNAVAILABLE as AUPARSE_UNAVAILABLE
from tests.auparse_oracle import auparse_events
from tests.laurel_support import LAUREL, compare
from tests.laurel_support import UNAVAILABLE as LAUREL_UNAVAILABLE

from .conftest import DaemonDir, auditctl, get_status, set_status, start_pyauditd, wait_for
from .test_interop import start_c_auditd

#: Login uids no session here has; one per test so rules never overlap.
AUID_WORKLOAD = 2147401001
AUID_CHAIN = 2147401002
AUID_CONTAINER = 2147401003
KEY = "pytest-json"


def set_loginuid_and_exec(auid: int, argv: list[str]) -> list[str]:
    """A command that sets its login uid, then execs argv."""
    code = (f"import os; open('/proc/self/loginuid', 'w').write('{auid}'); "
            f"os.execvp({argv[0]!r}, {argv!r})")
    return [sys.executable, "-c", code]


class Rules:
    def __init__(self) -> None:
        self.added: list[list[str]] = []
        self.lost_before = 0

    def add(self, *args: str) -> None:
        auditctl(*args)
        self.added.append(list(args))

    def delete_all(self) -> None:
        for args in reversed(self.added):
            if args[0] == "-a":
                auditctl("-d", *args[1:], check=False)
            elif args[0] == "-w":
                auditctl("-W", *args[1:], check=False)
        self.added.clear()


@pytest.fixture
def rules(kernel_state: AuditStatus) -> Any:
    """Rules deleted afterwards; a backlog large enough that the kernel loses nothing while
    the daemon starts (kernel_state puts the old limit back)."""
    set_status(AuditStatus(mask=STATUS_BACKLOG_LIMIT, backlog_limit=8192))
    r = Rules()
    r.lost_before = get_status().lost
    try:
        yield r
    finally:
        r.delete_all()


def lost_since(r: Rules) -> str:
    return f"the kernel lost {get_status().lost - r.lost_before} records meanwhile"


def json_plugin(d: DaemonDir, out: Path, extra: str = "") -> None:
    conf = d.root / "json.conf"
    conf.write_text(f"output = {out}\ntranslate_universal = yes\ntranslate_userdb = yes\n"
                    f"execve_env = none\n{extra}")
    os.chmod(conf, 0o644)
    (d.conf_dir / "plugins.d" / "json.conf").write_text(
        f"active = yes\ndirection = out\npath = builtin_json\nargs = {conf}\n")


def laurel_plugin(d: DaemonDir, out: Path) -> None:
    config = d.root / "laurel.toml"
    config.write_text(
        f'directory = "{out.parent}"\n[auditlog]\nfile = "{out.name}"\nsize = 1000000000\n'
        "[translate]\nuniversal = true\nuser-db = true\n[enrich]\nexecve-env = []\n"
    )
    (d.conf_dir / "plugins.d" / "laurel.conf").write_text(
        f"active = yes\ndirection = out\npath = {LAUREL}\ntype = always\n"
        f"args = --config {config}\nformat = string\n")


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_marker(path: Path, marker: str, timeout: float = 30.0) -> None:
    assert wait_for(lambda: path.exists() and marker in path.read_text(), timeout), (
        f"{marker!r} never reached {path}")


WORKLOAD = textwrap.dedent("""
    import os, socket, subprocess, sys
    d = sys.argv[1]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["/bin/true"], **quiet)
    subprocess.run(["/bin/sh", "-c", f"echo hi > {d}/w/f1; ls -l {d}/w; cat {d}/w/f1"], **quiet)
    with open(f"{d}/prog.c", "w") as f:
        f.write("int main(void) { return 0; }\\n")
    subprocess.run(["gcc", "-O0", "-o", f"{d}/prog", f"{d}/prog.c"], **quiet)
    subprocess.run([f"{d}/prog", "arg with space", "tab\\there", "üñí"], **quiet)
    p = f"{d}/w/file"
    with open(p, "w") as f:
        f.write("x")
    os.chmod(p, 0o600)
    os.chown(p, 0, 0)
    os.rename(p, p + "2")
    os.unlink(p + "2")
    secret = f"{d}/secret"
    with open(secret, "w") as f:
        f.write("s")
    os.chmod(secret, 0o600)
    pid = os.fork()
    if pid == 0:
        os.setgid(65534)
        os.setuid(65534)
        try:
            open(secret)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    for family, addr in ((socket.AF_INET, ("127.0.0.1", 9)), (socket.AF_INET6, ("::1", 9)),
                         (socket.AF_UNIX, "/nonexistent/pytest-json.sock")):
        s = socket.socket(family)
        try:
            s.connect(addr)
        except OSError:
            pass
        s.close()
    b = socket.socket()
    b.bind(("127.0.0.1", 0))
    b.close()
    # auditctl -m takes printable ASCII only; odd bytes reach records through a file name.
    subprocess.run(["auditctl", "-m", "odd 'single' \\"double\\" back\\\\slash %+= end"], **quiet)
    odd = os.fsencode(f"{d}/w/") + b"odd \\x01\\xff\\xc3\\xbc name"
    with open(odd, "w") as f:
        f.write("x")
    os.unlink(odd)
    subprocess.run(["auditctl", "-m", "pytest-json-workload-done"], **quiet)
""")


@pytest.mark.skipif(LAUREL_UNAVAILABLE is not None, reason=LAUREL_UNAVAILABLE or "")
def test_real_workload_against_laurel_and_libauparse(
    daemon_dir: DaemonDir, rules: Rules, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ours, theirs = out / "ours.json", out / "laurel.json"
    json_plugin(daemon_dir, ours)
    laurel_plugin(daemon_dir, theirs)
    work = tmp_path / "work"
    (work / "w").mkdir(parents=True)
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    auid = f"auid={AUID_WORKLOAD}"
    daemon = start_pyauditd(daemon_dir)
    try:
        for calls in ("execve", "open,openat,creat,truncate,ftruncate", "chmod,fchmod,fchmodat",
                      "chown,fchown,lchown,fchownat", "unlink,unlinkat,rename,renameat",
                      "connect,bind", "clone,fork,vfork,clone3", "exit_group"):
            rule = ["-a", "always,exit", "-F", "arch=b64", "-S", calls, "-F", auid]
            if calls.startswith("open"):
                rule += ["-F", "exit=-EACCES"]
            rules.add(*rule, "-k", f"{KEY}-{calls.split(',')[0]}")
        rules.add("-w", str(work / "w"), "-p", "wa", "-k", f"{KEY}-watch")
        subprocess.run(set_loginuid_and_exec(AUID_WORKLOAD, [sys.executable, str(script),
                                                             str(work)]), check=True,
                       timeout=120)
        wait_for_marker(ours, "pytest-json-workload-done")
        wait_for_marker(theirs, "pytest-json-workload-done")
        rules.delete_all()
    finally:
        daemon.stop()
    mine, laurel = events(ours), events(theirs)
    workload = [e for e in mine if e.get("SYSCALL", {}).get("auid") == AUID_WORKLOAD]
    assert len(workload) >= 60, len(workload)
    kinds = {e["SYSCALL"].get("SYSCALL") for e in workload if "SYSCALL" in e}
    assert {"execve", "chmod", "connect", "bind", "unlink", "rename", "exit_group"} <= kinds
    assert any("SOCKADDR" in e and e["SOCKADDR"][0].get("SADDR", {}).get("saddr_fam") == "inet6"
               for e in workload)
    assert any(e.get("USER", {}).get("msg", "").startswith("text=odd 'single'") for e in mine)
    assert any(p.get("name", "").endswith("/odd %01%ffü name") for e in workload
               for p in e.get("PATH", []))
    # Every event laurel wrote is among ours, field by field (README differences apart).
    compared, problems = compare(laurel, mine, allow_lineage=True)
    assert compared >= len(workload) // 2
    assert problems == []
    # Execs of forked processes name their parent's exec (the fork rule feeds the table).
    execs = [e for e in workload if e.get("SYSCALL", {}).get("SYSCALL") == "execve"
             and e["SYSCALL"]["success"] == "yes"]
    assert sum(1 for e in execs if e["SYSCALL"].get("PPID", {}).get("EVENT_ID")) >= 5
    check_boundaries(daemon_dir.log)


def check_boundaries(log: Path) -> None:
    """The log pyauditd wrote, grouped by us and by libauparse: the same events."""
    if AUPARSE_UNAVAILABLE is not None:
        return
    lines = log.read_bytes().splitlines(keepends=True)
    ours = sorted(tuple(b for _t, b in e.records) for e in Assembler().feed_lines(lines))
    reference = sorted(
        tuple(text.split(b"): ", 1)[1] if b"): " in text else b"" for _t, _s, text in ev)
        for ev in auparse_events(log)
    )
    assert len(reference) > 50
    assert ours == reference


CHAIN = textwrap.dedent("""
    import os, sys, time
    ancestors = [int(os.environ["BASH_PID"]), int(os.environ["SH_PID"]), os.getpid()]
    if os.fork():
        os._exit(0)                        # python exits at once
    def gone(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True
    deadline = time.monotonic() + 30
    while not all(gone(p) for p in ancestors) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.execv("/bin/true", ["true", "lineage-chain-end"])
""")


def test_lineage_chain_with_parents_gone(daemon_dir: DaemonDir, rules: Rules,
                                         tmp_path: Path) -> None:
    """bash -> sh -> python -> /bin/true, each parent exited before /bin/true is even
    exec'd (so it is re-parented and /proc knows none of them): the process table fed by
    the stream still names each parent's exec event."""
    out = tmp_path / "ours.json"
    json_plugin(daemon_dir, out)
    script = tmp_path / "chain.py"
    script.write_text(CHAIN)
    daemon = start_pyauditd(daemon_dir)
    try:
        auid = f"auid={AUID_CHAIN}"
        rules.add("-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-F", auid,
                  "-k", f"{KEY}-chain")
        rules.add("-a", "always,exit", "-F", "arch=b64", "-S", "clone,fork,vfork,clone3",
                  "-F", auid, "-k", f"{KEY}-fork")
        inner = f"SH_PID=$$ {sys.executable} {script} & exit 0"
        command = f"export BASH_PID=$$; /bin/sh -c '{inner}' & exit 0"
        subprocess.run(set_loginuid_and_exec(AUID_CHAIN, ["/bin/bash", "-c", command]),
                       check=True, timeout=60)
        # (the marker is in no rule key: the first events must not end the wait)
        wait_for_marker(out, "lineage-chain-end", 40)
        rules.delete_all()
    finally:
        daemon.stop()
    execs = {}
    for e in events(out):
        sc = e.get("SYSCALL", {})
        if sc.get("auid") == AUID_CHAIN and sc.get("SYSCALL") == "execve" and (
            sc.get("success") == "yes"
        ):
            execs[sc["comm"]] = e
    assert {"bash", "sh", "true"} <= set(execs), sorted(execs)
    python = next(e for c, e in execs.items() if c.startswith("python"))
    true_, sh, bash = execs["true"], execs["sh"], execs["bash"]
    chain = [e for e in events(out) if e.get("SYSCALL", {}).get("auid") == AUID_CHAIN]
    assert true_["SYSCALL"]["PPID"].get("EVENT_ID") == python["ID"], (lost_since(rules), chain)
    assert true_["SYSCALL"]["PPID"]["pid"] == python["SYSCALL"]["pid"]
    assert true_["SYSCALL"]["ppid"] != python["SYSCALL"]["pid"]  # re-parented by then
    assert python["SYSCALL"]["PPID"]["EVENT_ID"] == sh["ID"]
    assert sh["SYSCALL"]["PPID"]["EVENT_ID"] == bash["ID"]
    assert true_["SYSCALL"]["PID"]["EVENT_ID"] == true_["ID"]


def cgroup2_root() -> Path | None:
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


def test_container_id_from_a_docker_like_scope(daemon_dir: DaemonDir, rules: Rules,
                                               tmp_path: Path) -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    cid = os.urandom(32).hex()
    scope = root / f"docker-{cid}.scope"
    out = tmp_path / "ours.json"
    json_plugin(daemon_dir, out)
    daemon = start_pyauditd(daemon_dir)
    scope.mkdir()
    helper = None
    try:
        rules.add("-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-F",
                  f"auid={AUID_CONTAINER}", "-k", f"{KEY}-container")
        # The helper waits until it is in the scope, then runs a shell (alive for a while)
        # that runs a short-lived program: gone when its event is read, it is known to be
        # in the scope through its parent.
        code = ("import os, time\n"
                f"open('/proc/self/loginuid', 'w').write('{AUID_CONTAINER}')\n"
                "while 'docker-' not in open('/proc/self/cgroup').read(): time.sleep(0.01)\n"
                "os.execv('/bin/sh', ['sh', '-c', 'sleep 0.3; /bin/true container-run-end;"
                " sleep 0.3'])\n")
        helper = subprocess.Popen([sys.executable, "-c", code])
        (scope / "cgroup.procs").write_text(str(helper.pid))
        assert helper.wait(30) == 0
        wait_for_marker(out, "container-run-end", 30)  # in no rule key
        rules.delete_all()
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()
        daemon.stop()
        assert wait_for(lambda: not (scope / "cgroup.procs").read_text().strip(), 10)
        scope.rmdir()
    [event] = [e for e in events(out) if "container-run-end" in json.dumps(e)
               and e.get("SYSCALL", {}).get("comm") == "true"]
    assert event["CONTAINER_INFO"] == {"ID": cid}
    assert event["SYSTEMD_INFO"] == {"UNIT": f"docker-{cid}.scope"}


def test_pyaudisp_json_as_a_plugin_of_the_c_auditd(daemon_dir: DaemonDir, rules: Rules,
                                                   tmp_path: Path) -> None:
    """The same code as a program the C daemon runs, with no configuration file."""
    if not Path("/sbin/auditd").exists():
        pytest.skip("the C auditd is not installed")
    out = tmp_path / "c.json"
    wrapper = tmp_path / "pyaudisp-json"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={os.environ.get('PYTHONPATH', '')}\n"
                       f"exec {sys.executable} -m auditpy.audisp_json \"$@\"\n")
    os.chmod(wrapper, 0o755)
    (daemon_dir.conf_dir / "plugins.d" / "json.conf").write_text(
        f"active = yes\ndirection = out\npath = {wrapper}\ntype = always\n"
        f"args = --output {out}\nformat = string\n")
    daemon = start_c_auditd(daemon_dir)
    try:
        rules.add("-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-F",
                  f"auid={AUID_CONTAINER}", "-k", f"{KEY}-c")
        for _ in range(2):
            subprocess.run(set_loginuid_and_exec(AUID_CONTAINER,
                                                 ["/bin/true", "pytest-json-c-auditd"]),
                           check=True, timeout=30)
        wait_for(lambda: out.exists() and out.read_text().count("pytest-json-c-auditd") >= 4,
                 30)
        rules.delete_all()
    finally:
        daemon.stop()
    found = [e for e in events(out) if "pytest-json-c-auditd" in json.dumps(e)]
    assert len(found) == 2, daemon.stderr()
    assert all(e["EXECVE"]["ARGV"] == ["/bin/true", "pytest-json-c-auditd"] for e in found)
    assert all("INCOMPLETE" not in e for e in found)
