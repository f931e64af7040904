"""What a reload does, decided without doing it: the plugins that run and their states, the
plugin files just read, and their problems in; a list of actions out.

Keeping the decision pure makes the rules checkable over every combination (the tests run
hypothesis over random old and new configurations and runner states) instead of through
processes and signals, and leaves the dispatcher only the carrying out (`Dispatcher.apply`).

The rules, as in 2.x-4.1 (4.2 rejects the whole reload when one file has an error):

* a plugin that runs and is no longer wanted (file removed, ``active = no``, or a file with
  errors, which takes only its own plugin out) is stopped, and the reason is said;
* one whose launch key (program, its file's identity, arguments, format, type) changed is
  restarted: stopped, reaped, and only then its successor started, which gets the records
  its predecessor did not deliver;
* one that gave up (its restart budget spent) is started again with a full budget;
* any other is told about the reload (an external program gets SIGHUP);
* a wanted plugin that does not run is started.

Every wanted plugin gets exactly one of start, restart, revive or hup; every running one
that is not wanted exactly one stop; nothing else gets anything.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping

from auditpy.audispd.runner import State
from auditpy.config.plugins import PluginConfig, PluginProblem
from auditpy.structs import dataclass


class Step(enum.Enum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    HUP = "hup"
    REVIVE = "revive"


@dataclass(frozen=True)
class Running:
    """What the plan needs to know of a plugin that runs (or waits to)."""

    config: PluginConfig
    state: State


@dataclass(frozen=True)
class Action:
    step: Step
    name: str
    #: the configuration it runs with afterwards; None for STOP
    config: PluginConfig | None
    #: why it stops, or what changed for a restart; "" otherwise
    reason: str
    #: what the dispatcher logs before carrying it out; None when the runner says it itself
    #: (a hup: only the runner knows whether it signalled, restarted or did nothing)
    text: str | None


@dataclass(frozen=True)
class ReloadPlan:
    actions: tuple[Action, ...]
    #: plugin files left out because of errors
    skipped_files: int

    def steps(self, step: Step) -> list[Action]:
        return [a for a in self.actions if a.step is step]

    @property
    def wanted(self) -> set[str]:
        """The plugins that run once the plan is carried out."""
        return {a.name for a in self.actions if a.step is not Step.STOP}


#: Launch-key fields with the words a restart's log line uses for them.
_CHANGES = (
    ("path", "path"),
    ("args", "args"),
    ("format", "format"),
    ("type", "type"),
    ("program file", "identity"),
)


def what_changed(old: PluginConfig, new: PluginConfig) -> str:
    changes = [label for label, attr in _CHANGES if getattr(old, attr) != getattr(new, attr)]
    return ", ".join(changes) + " changed"


def plan_reload(
    running: Mapping[str, Running],
    configs: Mapping[str, PluginConfig],
    problems: Iterable[PluginProblem],
) -> ReloadPlan:
    """The actions that take `running` (by plugin name, in the order they run) to the
    active plugins of `configs` (every usable plugin file by name, as `load_plugins` gives
    them); `problems` are the files' problems, of which the skipped ones are files left out
    because of errors."""
    skipped = [p for p in problems if p.skipped]
    broken = {os.path.basename(p.path) for p in skipped}
    wanted = {name: config for name, config in configs.items() if config.active}
    actions: list[Action] = []
    for name, current in running.items():
        config = wanted.get(name)
        if config is None:
            if name in broken:
                why = "its file has errors"
            elif name in configs:
                why = "it is no longer active"
            else:
                why = "its file was removed"
            actions.append(Action(Step.STOP, name, None, why,
                                  f"stopping plugin {name} because {why}"))
        elif config.launch_key != current.config.launch_key:
            changed = what_changed(current.config, config)
            actions.append(Action(Step.RESTART, name, config, changed,
                                  f"restarting plugin {name}: {changed}"))
        elif current.state is State.FAILED:
            actions.append(Action(Step.REVIVE, name, config, "",
                                  f"starting plugin {name} again after it failed"))
        else:
            actions.append(Action(Step.HUP, name, config, "", None))
    for name, config in wanted.items():
        if name not in running:
            actions.append(Action(Step.START, name, config, "", f"starting new plugin {name}"))
    return ReloadPlan(tuple(actions), len(skipped))
