"""A randomized run: plugin files and programs change, plugins get killed, SIGHUPs arrive.

After every step, within a second, the running plugin processes (children of pyaudispd,
from /proc/*/stat) must be exactly the plugins that were active at the last reload, each
must receive a marker record sent through fd 0, nothing may be a zombie and pyaudispd's
descriptors must be its fixed set plus two per plugin (socket and pidfd).

The seed is printed (shown on failure); AUDISPD_RANDOM_SEED=N replays a run and
AUDISPD_RANDOM_STEPS=N changes its length.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from .audispd_support import Audispd, install
from .conftest import proc_state, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plugins must be root-owned")

STEPS = int(os.environ.get("AUDISPD_RANDOM_STEPS", "200"))
WITHIN = 1.0


class Model:
    def __init__(self, d: Audispd, rng: random.Random) -> None:
        self.d = d
        self.rng = rng
        self.programs = {key: d.program(name=f"prog_{key}.py") for key in "ab"}
        #: name -> (active, program key, args variant)
        self.files: dict[str, tuple[bool, str, int]] = {}
        #: names active at the last start or reload of the dispatcher
        self.applied: set[str] = set()
        self.running = False
        self.next_name = 0
        self.marker = 0
        self.base_fds: int | None = None
        self.exits = 0

    def write(self, name: str) -> None:
        active, program, variant = self.files[name]
        self.d.plugin(
            name,
            active=active,
            path=self.programs[program],
            args=[str(self.d.output(name)), f"v{variant}"],
        )

    def add(self) -> str:
        name = f"p{self.next_name}"
        self.next_name += 1
        self.files[name] = (self.rng.random() < 0.7, self.rng.choice("ab"), 0)
        self.write(name)
        return f"add {name} {self.files[name]}"

    def active(self) -> set[str]:
        return {name for name, (active, _, _) in self.files.items() if active}

    def start(self) -> None:
        self.d.close_input()
        self.d.start()
        self.running = True
        self.applied = self.active()
        self.base_fds = None

    # -- steps ----------------------------------------------------------------------------

    def step(self) -> str:
        ops = ["toggle", "add", "remove", "edit", "replace", "kill", "hup", "hup", "hup"]
        op = self.rng.choice(ops)
        names = sorted(self.files)
        if op == "add" or (not names and op in ("toggle", "remove", "edit")):
            return self.add()
        if op == "toggle":
            name = self.rng.choice(names)
            active, program, variant = self.files[name]
            self.files[name] = (not active, program, variant)
            self.write(name)
            return f"toggle {name} -> {not active}"
        if op == "remove":
            name = self.rng.choice(names)
            del self.files[name]
            (self.d.plugin_dir / f"{name}.conf").unlink()
            return f"remove {name}"
        if op == "edit":
            name = self.rng.choice(names)
            active, program, variant = self.files[name]
            self.files[name] = (active, self.rng.choice("ab"), variant + 1)
            self.write(name)
            return f"edit {name}"
        if op == "replace":
            key = self.rng.choice("ab")
            install("recorder.py", self.programs[key])
            return f"replace program {key}"
        if op == "kill":
            pids = self.d.plugin_pids() if self.running else {}
            if not pids:
                return "kill (nothing running)"
            name = self.rng.choice(sorted(pids))
            os.kill(pids[name], signal.SIGKILL)
            # Records written to a process that is being killed are lost with it; the
            # marker must go to its successor, so wait until the victim has been reaped.
            wait_for(lambda: proc_state(pids[name]) is None, WITHIN, "the killed plugin reaped")
            return f"kill -9 {name} ({pids[name]})"
        # hup: what pyauditd does on its own SIGHUP
        if not self.running:
            if not self.active():
                return "hup (no dispatcher, nothing active)"
            self.start()
            return "hup -> new dispatcher"
        self.d.reload()
        self.applied = self.active()
        if not self.applied:
            assert self.d.wait_exit(5) == 0
            assert "no active plugins, exiting" in self.d.log()
            self.running = False
            self.exits += 1
            return "hup -> no active plugins, dispatcher exited"
        return f"hup -> {sorted(self.applied)}"

    # -- invariants -----------------------------------------------------------------------

    def check(self) -> None:
        d = self.d
        if not self.running:
            return
        wait_for(lambda: set(d.plugin_pids()) == self.applied, WITHIN, "running set")
        self.marker += 1
        marker = f"marker={self.marker} ".encode()
        d.send(b"type=USER msg=audit(1.0:%d): " % self.marker + marker)

        def delivered() -> bool:
            for name in self.applied:
                try:
                    if marker not in d.output(name).read_bytes():
                        return False
                except FileNotFoundError:
                    return False
            return True

        wait_for(delivered, WITHIN, f"marker {self.marker} at {sorted(self.applied)}")
        kids = d.children()
        assert "Z" not in kids.values(), kids
        assert set(kids) == set(d.plugin_pids().values())
        fds = d.fd_count() - 2 * len(self.applied)
        if self.base_fds is None:
            self.base_fds = fds
        assert fds == self.base_fds, "pyaudispd's descriptors grew"


def test_random_operations(tmp_path: Path) -> None:
    seed = int(os.environ.get("AUDISPD_RANDOM_SEED", random.randrange(2**32)))
    print(f"AUDISPD_RANDOM_SEED={seed}")
    rng = random.Random(seed)
    d = Audispd(tmp_path, settings={"max_restarts": 10000})
    model = Model(d, rng)
    history: list[str] = []
    try:
        for _ in range(3):
            model.add()
        if not model.active():
            model.files["p0"] = (True, "a", 0)
            model.write("p0")
        model.start()
        model.check()
        for number in range(STEPS):
            history.append(f"{number}: {model.step()}")
            try:
                model.check()
            except AssertionError as exc:
                tail = "\n".join(history[-15:])
                raise AssertionError(f"seed {seed}, after steps:\n{tail}\n{exc}") from exc
    finally:
        d.stop()
    assert not d.leftovers()
    assert model.marker > 10  # most steps ran with a dispatcher (it may exit and come back)
