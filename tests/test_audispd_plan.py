"""pyaudispd's reload: the pure plan over random old and new configurations and runner
states, and `Dispatcher.apply` carrying plans out with fake runners whose stops take random
numbers of loop turns (no processes, no root)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy import structs
from auditpy.audispd.dispatcher import Dispatcher, Options
from auditpy.audispd.plan import Action, ReloadPlan, Running, Step, plan_reload, what_changed
from auditpy.audispd.runner import STOP_TIMEOUT, PluginRunner, Record, RunnerContext, State
from auditpy.config.files import ProgramIdentity
from auditpy.config.plugins import PluginConfig, PluginProblem
from auditpy.system import evloop

NAMES = [f"{c}.conf" for c in "abcdefg"]
DIR = "/etc/audit/plugins.d"


def configs_for(name: str) -> st.SearchStrategy[PluginConfig]:
    return st.builds(
        PluginConfig,
        name=st.just(name),
        file=st.just(f"{DIR}/{name}"),
        active=st.booleans(),
        path=st.sampled_from(["/sbin/one", "/sbin/two"]),
        args=st.sampled_from([(), ("x",), ("x", "y")]),
        format=st.sampled_from(["string", "binary"]),
        type=st.sampled_from(["always", "builtin"]),
        identity=st.sampled_from([None, ProgramIdentity(1, 2, 3, 4), ProgramIdentity(1, 5, 3, 4)]),
    )


@st.composite
def plugin_files(draw: st.DrawFn) -> tuple[dict[str, PluginConfig], list[PluginProblem]]:
    """What load_plugins returns: usable files by name, and problems (a skipped file is not
    among the usable ones; a warning may be about one that is)."""
    configs: dict[str, PluginConfig] = {}
    problems: list[PluginProblem] = []
    for name in NAMES:
        fate = draw(st.sampled_from(["absent", "usable", "broken", "warned"]))
        if fate == "broken":
            problems.append(PluginProblem(f"{DIR}/{name}", 3, "format: 'xml'"))
        elif fate != "absent":
            configs[name] = draw(configs_for(name))
            if fate == "warned":
                problems.append(PluginProblem(f"{DIR}/{name}", 1, "obsolete", skipped=False))
    return configs, problems


@st.composite
def running_states(draw: st.DrawFn) -> dict[str, Running]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True))
    return {
        name: Running(structs.replace(draw(configs_for(name)), active=True),
                      draw(st.sampled_from(list(State))))
        for name in names
    }


def by_name(plan: ReloadPlan) -> dict[str, list[Action]]:
    found: dict[str, list[Action]] = {}
    for action in plan.actions:
        found.setdefault(action.name, []).append(action)
    return found


@settings(max_examples=400, deadline=None)
@given(running_states(), plugin_files())
def test_plan_gives_each_plugin_exactly_what_its_change_asks_for(
    running: dict[str, Running],
    files: tuple[dict[str, PluginConfig], list[PluginProblem]],
) -> None:
    configs, problems = files
    plan = plan_reload(running, configs, problems)
    wanted = {name for name, config in configs.items() if config.active}
    broken = {p.path.rsplit("/", 1)[1] for p in problems if p.skipped}
    actions = by_name(plan)

    # One action per plugin that runs or is wanted, none for any other.
    assert set(actions) == set(running) | wanted
    assert all(len(done) == 1 for done in actions.values())
    assert plan.wanted == wanted
    assert plan.skipped_files == len(broken)

    for name, (action,) in actions.items():
        assert name in action.text if action.text is not None else action.step is Step.HUP
        if name not in running:
            assert action.step is Step.START and action.config == configs[name]
            assert action.text == f"starting new plugin {name}"
            continue
        old = running[name]
        if name not in wanted:
            assert action.step is Step.STOP and action.config is None
            why = (
                "its file has errors" if name in broken
                else "it is no longer active" if name in configs
                else "its file was removed"
            )
            assert action.reason == why
            assert action.text == f"stopping plugin {name} because {why}"
            continue
        new = configs[name]
        assert action.config == new
        if new.launch_key != old.config.launch_key:
            assert action.step is Step.RESTART
            changed = [label for label, attr in [
                ("path", "path"), ("args", "args"), ("format", "format"), ("type", "type"),
                ("program file", "identity")] if getattr(old.config, attr) != getattr(new, attr)]
            assert changed  # the launch key differs only where a label says so
            assert action.reason == ", ".join(changed) + " changed"
            assert action.text == f"restarting plugin {name}: {action.reason}"
        elif old.state is State.FAILED:
            assert action.step is Step.REVIVE
            assert action.text == f"starting plugin {name} again after it failed"
        else:
            assert action.step is Step.HUP and action.text is None

    # Plugins that run keep their order; new ones follow in the order of their files.
    order = [a.name for a in plan.actions]
    assert order[: len(running)] == list(running)
    assert order[len(running):] == [n for n in configs if n in wanted and n not in running]


def test_what_changed_names_every_launch_field() -> None:
    old = PluginConfig(name="p", file="p", active=True, path="/a", args=("1",))
    new = PluginConfig(name="p", file="p", active=True, path="/b", args=("2",), format="binary",
                       identity=ProgramIdentity(1, 1, 1, 1))
    assert what_changed(old, new) == "path, args, format, program file changed"


# --------------------------------------------------------------------------- apply


@dataclass
class World:
    """What fake runners did, in order, and how they are to behave."""

    #: where stops draw how long they take and whether they fail; None: at once, and reaped
    data: st.DataObject | None
    events: list[tuple[str, int]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)
    runners: list[FakeRunner] = field(default_factory=list)
    adopted: dict[int, list[Record]] = field(default_factory=dict)


class FakeRunner(PluginRunner):
    def __init__(self, config: PluginConfig, ctx: RunnerContext, world: World) -> None:
        super().__init__(config, ctx)
        self.world = world
        self.id = next(world.ids)
        self.stops = 0
        #: records it would hand to a successor
        self.held = [Record(1, 1005, f"{self.id}:{i}".encode()) for i in range(self.id % 3)]
        world.runners.append(self)

    def start(self) -> None:
        self.world.events.append(("start", self.id))
        self.state = State.RUNNING

    def offer(self, record: Record) -> bool:
        return True

    def hup(self) -> None:
        self.world.events.append(("hup", self.id))

    def revive(self) -> None:
        self.world.events.append(("revive", self.id))
        super().revive()

    def adopt(self, records: list[Record]) -> None:
        self.world.events.append(("adopt", self.id))
        self.world.adopted[self.id] = records

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = STOP_TIMEOUT, keep: bool = False
    ) -> list[Record]:
        self.stops += 1
        self.world.events.append(("stop", self.id))
        self.state = State.STOPPING
        data = self.world.data
        if data is not None:
            for _ in range(data.draw(st.integers(0, 4), label=f"turns of stop {self.id}")):
                await evloop.sleep(0)
            self.unreaped = data.draw(st.integers(0, 9), label=f"unreaped {self.id}") == 0
        self.state = State.STOPPED
        self.world.events.append(("reaped", self.id))
        return list(self.held) if keep else []


def index(world: World, event: str, runner_id: int) -> int:
    return world.events.index((event, runner_id))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_apply_carries_out_random_reloads(data: st.DataObject) -> None:
    """A run of reloads over random plugin files and runner states: after each, exactly the
    wanted plugins run, with their new configuration, every other runner was stopped once
    and reaped, and a restarted plugin's successor started only after its predecessor was
    reaped, with the records the predecessor did not deliver."""
    world = World(data)
    loop = evloop.Loop()
    try:
        d = Dispatcher(loop, Options(),
                       runner_factory=lambda config, ctx: FakeRunner(config, ctx, world))
        d._started = True
        first, _ = data.draw(plugin_files(), label="initial files")
        for name, config in first.items():
            if config.active:
                d.plugins[name] = d._make_runner(config, d.ctx)
                d.plugins[name].start()
        for _round in range(data.draw(st.integers(1, 6), label="reloads")):
            if not d.plugins:
                break
            for runner in d.plugins.values():  # crashes and exhausted budgets in between
                runner.state = data.draw(
                    st.sampled_from([State.RUNNING, State.RUNNING, State.BACKOFF, State.FAILED])
                )
            before = dict(d.plugins)
            configs, problems = data.draw(plugin_files(), label="files")
            running = {name: Running(r.config, r.state) for name, r in d.plugins.items()}
            plan = plan_reload(running, configs, problems)
            world.events.clear()
            loop.run_until_complete(d.apply(plan))
            check_applied(world, d, before, plan)
            if not plan.wanted:
                assert d._done.done() and d._done.result() == 0
                break
    finally:
        loop.close()


def check_applied(
    world: World, d: Dispatcher, before: dict[str, PluginRunner], plan: ReloadPlan
) -> None:
    steps = {a.name: a for a in plan.actions}
    assert set(d.plugins) == plan.wanted
    assert not d._retiring
    for name, action in steps.items():
        old = before.get(name)
        now = d.plugins.get(name)
        if action.step is Step.STOP:
            assert isinstance(old, FakeRunner) and old.stops == 1
            assert index(world, "stop", old.id) < index(world, "reaped", old.id)
            continue
        assert isinstance(now, FakeRunner) and now.config == action.config
        assert now.stops == 0
        if action.step in (Step.HUP, Step.REVIVE):
            assert now is old and world.events.count((action.step.value, now.id)) == 1
        elif action.step is Step.START:
            assert old is None and world.events.count(("start", now.id)) == 1
        else:  # RESTART
            assert isinstance(old, FakeRunner) and now is not old and old.stops == 1
            reaped = index(world, "reaped", old.id)
            if old.unreaped:
                assert ("start", now.id) not in world.events
                assert now.state is State.FAILED and now.dropped == len(old.held)
            else:
                assert reaped < index(world, "adopt", now.id) < index(world, "start", now.id)
                assert world.adopted[now.id] == old.held
    # Nothing that is not wanted keeps running: every runner is either in `plugins` or was
    # stopped exactly once.
    live = {id(r) for r in d.plugins.values()}
    for runner in world.runners:
        if id(runner) not in live:
            assert runner.stops == 1, runner.id
    assert all(r.stops == 0 for r in d.plugins.values())


def test_apply_logs_each_action_and_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    world = World(None)
    loop = evloop.Loop()
    try:
        d = Dispatcher(loop, Options(),
                       runner_factory=lambda config, ctx: FakeRunner(config, ctx, world))

        def conf(name: str, args: tuple[str, ...] = ()) -> PluginConfig:
            return PluginConfig(name=name, file=name, active=True, path="/sbin/p", args=args)

        for name in ("keep", "gone", "edit", "dead"):
            d.plugins[name] = d._make_runner(conf(name), d.ctx)
        d.plugins["dead"].state = State.FAILED
        plan = plan_reload(
            {n: Running(r.config, r.state) for n, r in d.plugins.items()},
            {"keep": conf("keep"), "edit": conf("edit", ("new",)), "dead": conf("dead"),
             "new": conf("new")},
            [PluginProblem("gone", 1, "bad", skipped=True)],
        )
        with caplog.at_level(logging.INFO, logger="auditpy.audispd"):
            loop.run_until_complete(d.apply(plan))
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "stopping plugin gone because its file has errors",
        "restarting plugin edit: args changed",
        "starting plugin dead again after it failed",
        "starting new plugin new",
        "reload done: 1 started, 1 stopped, 1 restarted, 1 signalled, 1 revived; "
        "1 plugin file problems; 4 active plugins",
    ]
