"""pyaudispd: the audit event dispatcher (a 2.x-style audispd in Python).

pyauditd starts it as ``python3 -m auditpy.audispd -c CONFIG_DIR --base-dir BASE_DIR
--run-dir RUN_DIR`` (the command line and start-up are in `auditpy.audispd.main`) with fd 0
= its end of a socketpair that carries dispatcher frames (`auditpy.proto.dispatch`).
pyaudispd feeds every record to every active plugin of ``plugin_dir``, each through its own
bounded queue (`runner`), and supervises the plugin processes.

Exit codes: 0 after end of input, SIGTERM/SIGINT, or when no plugin is active (at start or
after a reload: "no active plugins, exiting"; pyauditd starts a new dispatcher on the
SIGHUP that activates one); 1 if the settings cannot be loaded at start, fd 0 is unusable,
or the input is not in the dispatcher protocol; 2 for bad command-line arguments.

Signals: HUP reload (re-read settings and plugins, then start, stop, restart or SIGHUP each
plugin); TERM/INT stop; USR2 resume after an overflow suspend; CONT write
RUN_DIR/audispd.state. They are held blocked from the first instruction of `main` and read
from a signalfd on the loop (`system.service.SignalReader`): a storm of them coalesces, none
is lost, and none can kill the dispatcher while it starts. SIGCHLD is not used: every child
is watched by its pidfd on the one event loop (system.evloop), and nothing waits for "any child".

The record path never waits for the file system: settings and plugin files are read by a
worker thread at start and on every reload (20,000 plugin files take about a second), while
the loop goes on feeding the running plugins; the result is applied on the loop
(`plan.plan_reload`, then `Dispatcher.apply`).

Deviations from the C dispatcher (2.8.5 audispd, and 3.x/4.x's libdisp):

* per-plugin queues and non-blocking writers instead of one queue and blocking writes, so
  one stuck plugin costs only its own records;
* a plugin's death is noticed at once (pidfd), not at the next write's EPIPE; restarts
  use a back-off and a ``max_restarts`` budget that refills after a stable run or when the
  program changes (C: a lifetime count, and before 4.1.0 a plugin over it stayed "active"
  with a dead pipe);
* stopping a plugin closes its input first (it may finish and exit by itself), then
  SIGTERM after 50 ms, then SIGKILL after a timeout (3 s on reload, 5 s at exit), and it is
  always reaped before its replacement starts (2.x: SIGTERM, 50 ms, start the new one);
* a plugin that exhausted its budget is started again by a reload;
* overflow with ``syslog`` logs the first 5 drops and then a periodic per-plugin summary
  instead of going silent; every drop is counted per plugin (state file, exit message);
* ``single``/``halt`` run init once (until SIGUSR2 or a reload), not once per dropped record;
* binary plugins get the header plus exactly ``size`` bytes (as 4.1.1+; Debian's 3.0.9
  wrote a fixed 8970-byte buffer after every header);
* the af_unix builtin serves several clients with non-blocking writes and disconnects one
  that falls ``q_depth`` records behind (2.x: one client, blocking writes);
* plugins get an empty signal mask, default dispositions, their own session and an
  oom_score_adj of 0 (pyauditd's -1000 is not passed on).

As in 2.x-4.1 (not 4.2): unchanged plugins get SIGHUP rather than a restart, and a plugin
file with errors only takes its own plugin out (4.2 rejects the whole reload).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from auditpy.audispd.plan import ReloadPlan, Running, Step, plan_reload
from auditpy.audispd.runner import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    STABLE_AFTER,
    STOP_TIMEOUT,
    Columns,
    ExternalPlugin,
    PluginRunner,
    Record,
    RunnerContext,
    State,
    describe_status,
)
from auditpy.config.errors import ConfigError
from auditpy.config.plugins import (
    AF_UNIX,
    JSON,
    NATS,
    SYSLOG,
    DispatcherSettings,
    PluginConfig,
    PluginProblem,
    load_dispatcher_settings,
    load_plugins,
)
from auditpy.proto import dispatch as wire
from auditpy.proto.dispatch import FIGURE_KEYS, figures_line
from auditpy.structs import dataclass, field
from auditpy.system import evloop
from auditpy.system.children import INIT_PATH, ChildHandle, spawn_helper
from auditpy.system.node import node_name
from auditpy.system.service import Signal, SignalReader, write_state_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

log = logging.getLogger("auditpy.audispd")

if TYPE_CHECKING:
    T = TypeVar("T")

STATE_FILE = "audispd.state"
#: SIGTERM to SIGKILL when the dispatcher itself stops.
SHUTDOWN_TIMEOUT = 5.0
#: At shutdown, how long queued records may take to reach a plugin before its input closes.
SHUTDOWN_DRAIN = 0.5
#: overflow_action=syslog: drops logged one by one before switching to summaries.
OVERFLOW_REPORT_LIMIT = 5
#: Seconds between the per-plugin summaries of dropped records.
REPORT_INTERVAL = 30.0
#: Seconds between the figures sent to pyauditd (its ledger and metrics).
FIGURES_INTERVAL = 1.0
#: Signals the dispatcher handles: held blocked for its whole life and read from a
#: signalfd. Every other signal keeps its default action.
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT)
READ_SIZE = 65536


@dataclass
class Options:
    config_dir: str = "/etc/audit"
    base_dir: str = "/"
    run_dir: str = "/var/run"
    init_path: str = INIT_PATH
    stable_after: float = STABLE_AFTER
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stop_timeout: float = STOP_TIMEOUT
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    report_interval: float = REPORT_INTERVAL


def make_runner(config: PluginConfig, ctx: RunnerContext) -> PluginRunner:
    # A builtin's module (the JSON one brings the event assembler, the NATS one a client
    # and its TLS) is loaded only when a plugin file activates it: memory is per process.
    if config.builtin == AF_UNIX:
        from auditpy.audispd.builtin_af_unix import AfUnixPlugin

        return AfUnixPlugin(config, ctx)
    if config.builtin == SYSLOG:
        from auditpy.audispd.builtin_syslog import SyslogPlugin

        return SyslogPlugin(config, ctx)
    if config.builtin == NATS:
        from auditpy.audispd.builtin_nats import NatsPlugin

        return NatsPlugin(config, ctx)
    if config.builtin == JSON:
        from auditpy.audispd.builtin_json import JsonPlugin

        return JsonPlugin(config, ctx)
    return ExternalPlugin(config, ctx)


RunnerFactory = Callable[[PluginConfig, RunnerContext], PluginRunner]


def node_prefix(settings: DispatcherSettings) -> tuple[bytes, str | None]:
    """``node=NAME `` for V0 string lines, as 2.x audispd's name_format did, and a warning
    when there is none to be had. The name is resolved as pyauditd resolves it; where that
    fails the records go without one (the dispatcher must not stop over it: pyauditd
    already runs)."""
    try:
        name = node_name(settings.name_format, settings.name)
    except (OSError, IndexError, ValueError) as exc:
        return b"", (f"cannot resolve the node name for name_format={settings.name_format}: "
                     f"{exc}")
    if settings.name_format != "NONE" and not name:
        return b"", f"name_format={settings.name_format} gives no node name; records go without one"
    return (b"" if not name else b"node=" + name.encode("utf-8", "backslashreplace") + b" "), None


def apply_priority(boost: int) -> None:
    """Run at nice -priority_boost (plugins inherit it), never lowering an inherited higher
    priority: pyauditd has usually applied the same boost already."""
    target = -min(boost, 20)
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.warning("cannot apply priority_boost %d: %s", boost, exc.strerror)


@dataclass
class Loaded:
    """What one reading of the configuration found (made off the loop)."""

    #: None when a file may not be used (start-up then fails, a reload keeps the old ones)
    settings: DispatcherSettings | None
    #: (level, text) to log, in the order found
    messages: list[tuple[int, str]] = field(default_factory=list)
    configs: dict[str, PluginConfig] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)
    #: the node prefix for the new settings; None when it is unchanged
    node: bytes | None = None


def read_configuration(options: Options, current: DispatcherSettings | None) -> Loaded:
    """Settings from auditd.conf and a 2.x audispd.conf, then every file of the plugin
    directory they name (`current`'s when they cannot be used). File-system work only:
    run off the loop."""
    try:
        settings, warnings = load_dispatcher_settings(options.config_dir, options.base_dir)
    except ConfigError as exc:
        loaded = Loaded(None, [(logging.ERROR, str(problem)) for problem in exc.errors])
    else:
        # auditd.conf's own warnings were reported by pyauditd already.
        loaded = Loaded(settings, [
            (logging.DEBUG if "auditd.conf" in warning.split(":", 1)[0] else logging.WARNING,
             warning)
            for warning in warnings
        ])
        if current is None or (settings.name_format, settings.name) != (
            current.name_format, current.name
        ):
            loaded.node, warning = node_prefix(settings)
            if warning is not None:
                loaded.messages.append((logging.WARNING, warning))
    in_force = loaded.settings or current
    if in_force is not None:
        loaded.configs, loaded.problems = load_plugins(in_force.plugin_dir)
    return loaded


class Dispatcher:
    def __init__(
        self,
        loop: evloop.Loop,
        options: Options,
        *,
        runner_factory: RunnerFactory = make_runner,
    ) -> None:
        self.loop = loop
        self.options = options
        self.settings = DispatcherSettings()
        self.ctx = RunnerContext(
            loop,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
            stable_after=options.stable_after,
        )
        self._make_runner = runner_factory
        self.plugins: dict[str, PluginRunner] = {}
        self.node = b""
        self.suspended = False
        self.records_in = 0
        self._inbuf = bytearray()
        self._reading = False
        self._done: evloop.Future[int] = loop.create_future()
        self._signals: SignalReader | None = None
        #: the plugins are started: a reload may run (one asked for earlier waits for this)
        self._started = False
        self._reload_task: evloop.Task[None] | None = None
        self._reload_again = False
        self._overflow_reports = 0
        self._runlevel_requested = False
        self._reported_drops: dict[int, int] = {}
        self._report_timer: evloop.TimerHandle | None = None
        self._helpers: list[ChildHandle] = []
        #: runners a reload is stopping (no longer in `plugins`)
        self._retiring: list[PluginRunner] = []
        #: the counters of runners that were replaced or stopped, by plugin name
        self._carried: dict[str, dict[str, int]] = {}
        self._figures_failed = False
        self._figures_timer: evloop.TimerHandle | None = None

    # -- start and stop -------------------------------------------------------------------

    async def run(self) -> int:
        # Signals sent from now on are read by the loop; until it runs they wait (held
        # since the first instruction of main).
        self._signals = SignalReader(self.loop, HANDLED_SIGNALS, self._on_signal)
        try:
            return await self._run()
        finally:
            self._signals.close()
            self._signals = None

    async def _run(self) -> int:
        loaded = await self._read_configuration(None)
        if loaded is None:  # SIGTERM while reading: nothing has started yet
            log.info("pyaudispd exiting; %d records received", self.records_in)
            return self._done.result()
        self._log_messages(loaded.messages)
        if loaded.settings is None:
            log.error("cannot load the dispatcher settings, exiting")
            return 1
        self._apply_settings(loaded.settings, first=True, node=loaded.node)
        self._log_plugin_problems(loaded.problems)
        active = {name: config for name, config in loaded.configs.items() if config.active}
        if not active:
            log.info("no active plugins, exiting")
            return 0
        try:
            os.set_blocking(0, False)
            self.loop.add_reader(0, self._read_input)
        except (OSError, ValueError) as exc:
            log.error("cannot read records from fd 0: %s", exc)
            return 1
        self._reading = True
        for name, config in active.items():
            runner = self._make_runner(config, self.ctx)
            self.plugins[name] = runner
            runner.start()
        log.info(
            "pyaudispd initialized with q_depth=%d and %d active plugins",
            self.settings.q_depth,
            len(self.plugins),
        )
        self._started = True
        if self._reload_again:  # a SIGHUP came while we were starting
            self.request_reload()
        self._schedule_report()
        self._schedule_figures()
        try:
            code = await self._done
            await self._shutdown()
        except BaseException:
            self._kill_all()
            raise
        return code

    def _kill_all(self) -> None:
        """Last resort when something unexpected breaks the loop: no child is left behind."""
        self.ctx.shutting_down = True
        for runner in [*self.plugins.values(), *self._retiring]:
            child = getattr(runner, "child", None)
            if isinstance(child, ChildHandle):
                child.terminate(1.0)

    def finish(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(0)
            self._reading = False

    async def _shutdown(self) -> None:
        self.ctx.shutting_down = True
        self._stop_reading()
        if self._figures_timer is not None:
            self._figures_timer.cancel()
        if self._report_timer is not None:
            self._report_timer.cancel()
        task = self._reload_task
        if task is not None and not task.done():
            # One still reading files gives up at once (`_read_configuration`); one applying
            # its plan starts nothing more, and its stops are bounded.
            await evloop.wait([task])
        runners = list(self.plugins.values())
        await evloop.gather(
            *(
                r.stop(drain=SHUTDOWN_DRAIN, term_timeout=self.options.shutdown_timeout)
                for r in runners
            )
        )
        for helper in self._helpers:
            helper.wait(1.0)
        log.info("pyaudispd exiting; %d records received", self.records_in)

    # -- signals --------------------------------------------------------------------------

    def _on_signal(self, sig: Signal) -> None:
        signum = sig.signum
        if signum == signal.SIGHUP:
            self.request_reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if not self._done.done():
                log.info("stopping on %s", signal.Signals(signum).name)
            self.finish(0)
        elif signum == signal.SIGUSR2:
            self._resume()
        elif signum == signal.SIGCONT:
            self.write_state()

    def _resume(self) -> None:
        if self.suspended:
            log.warning("resuming event passing to plugins")
        self.suspended = False
        self._runlevel_requested = False
        self._overflow_reports = 0

    # -- input ----------------------------------------------------------------------------

    def _read_input(self) -> None:
        try:
            data = os.read(0, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            # The daemon closed its end with our figures unread in it: the end of input as
            # well (the kernel reports the reset only once the records sent are read).
            data = b""
        except OSError as exc:
            log.error("cannot read records: %s; exiting", exc.strerror)
            self.finish(1)
            return
        if not data:
            log.info("end of input; stopping")
            self.finish(0)
            return
        self._inbuf += data
        try:
            runs = wire.unpack_stream(self._inbuf)
        except wire.FrameError as exc:
            log.error("%s; the input cannot be resynchronised, exiting", exc)
            self.finish(1)
            return
        for version, types, payloads in runs:
            self.dispatch_columns(version, types, payloads)

    def dispatch_columns(self, version: int, types: list[int], payloads: list[bytes]) -> None:
        """Queue a read's records (one protocol version) for every plugin: whole, when every
        plugin can take them so (`PluginRunner.room`), else one by one (`dispatch`), which
        applies the full-queue rules record by record."""
        runners = list(self.plugins.values())
        count = len(types)
        if count and runners and not self.suspended and all(r.room(count) for r in runners):
            columns = Columns(version, types, payloads, self.node)
            self.records_in += count
            for runner in runners:
                runner.offered += count
                runner.take(columns)
            for runner in runners:
                runner.flush()
            return
        node = self.node
        self.dispatch([Record(version, msg_type, payload, node)
                       for msg_type, payload in zip(types, payloads, strict=True)])

    def dispatch(self, records: list[Record]) -> None:
        """Queue one read's records for every plugin, then start sending (one send per
        plugin for the lot)."""
        count = len(records)
        self.records_in += count
        runners = list(self.plugins.values())
        for runner in runners:
            runner.offered += count
        for record in records:
            if self.suspended:
                for runner in runners:
                    runner.dropped += 1
                continue
            for runner in runners:
                if not runner.offer(record):
                    self._overflow(runner)
        for runner in runners:
            runner.flush()

    def _overflow(self, runner: PluginRunner) -> None:
        action = self.settings.overflow_action
        if action == "IGNORE":
            return
        if action == "SYSLOG":
            if self._overflow_reports < OVERFLOW_REPORT_LIMIT:
                self._overflow_reports += 1
                log.warning("queue to plugin %s is full - dropping event", runner.name)
                if self._overflow_reports == OVERFLOW_REPORT_LIMIT:
                    log.warning(
                        "queue full reporting limit reached; dropped events are now "
                        "summarised every %g s",
                        self.options.report_interval,
                    )
            return
        if action == "SUSPEND":
            if not self.suspended:
                log.warning(
                    "suspending event passing to plugins: the queue to plugin %s "
                    "overflowed (SIGUSR2 or a reload resumes)",
                    runner.name,
                )
            self.suspended = True
            return
        # SINGLE or HALT
        if self._runlevel_requested:
            return
        self._runlevel_requested = True
        single = action == "SINGLE"
        log.critical(
            "the queue to plugin %s overflowed; %s",
            runner.name,
            "changing the system to single user mode" if single else "halting the system",
        )
        self._run_helper(self.options.init_path, ["1" if single else "0"])

    def _run_helper(self, path: str, args: list[str]) -> None:
        try:
            child = spawn_helper(path, args)
        except OSError as exc:
            log.critical("cannot run %s: %s", path, exc.strerror or exc)
            return
        self._helpers.append(child)

        def reaped(done: ChildHandle) -> None:
            self._helpers.remove(done)
            log.info("%s %s: %s", path, " ".join(args), describe_status(done.returncode))

        child.attach(self.loop, reaped)

    def _schedule_report(self) -> None:
        if self.ctx.shutting_down:
            return
        self._report_timer = self.loop.call_later(self.options.report_interval, self._report)

    def _report(self) -> None:
        """Periodic summary of drops, so an overflow is never silent for long."""
        self._report_timer = None
        if self.settings.overflow_action != "IGNORE":
            for runner in self.plugins.values():
                last = self._reported_drops.get(id(runner), 0)
                if runner.dropped > last:
                    log.warning(
                        "plugin %s: %d records dropped in the last %g s (%d in all)%s",
                        runner.name,
                        runner.dropped - last,
                        self.options.report_interval,
                        runner.dropped,
                        "; event passing is suspended" if self.suspended else "",
                    )
        self._reported_drops = {id(r): r.dropped for r in self.plugins.values()}
        self._schedule_report()

    # -- reload ---------------------------------------------------------------------------

    def request_reload(self) -> None:
        if self.ctx.shutting_down or self._done.done():
            return
        if not self._started or (self._reload_task is not None and not self._reload_task.done()):
            self._reload_again = True  # coalesced: one more reload once this one is done
            return
        self._reload_task = self.loop.create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        while True:
            self._reload_again = False
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed")
            if not self._reload_again or self.ctx.shutting_down or self._done.done():
                return

    async def reload(self) -> None:
        log.info("reloading the configuration")
        loaded = await self._read_configuration(self.settings)
        if loaded is None or self.ctx.shutting_down:
            return
        self._log_messages(loaded.messages)
        settings = loaded.settings
        if settings is None:
            log.error("keeping the previous dispatcher settings")
            settings = self.settings
        self._apply_settings(settings, first=False, node=loaded.node)
        self._log_plugin_problems(loaded.problems)
        running = {name: Running(r.config, r.state) for name, r in self.plugins.items()}
        await self.apply(plan_reload(running, loaded.configs, loaded.problems))

    async def _read_configuration(self, current: DispatcherSettings | None) -> Loaded | None:
        """`read_configuration` in a worker thread, while the loop goes on feeding the
        plugins; None if the dispatcher is told to stop meanwhile."""
        options = self.options
        future = self._off_loop(lambda: read_configuration(options, current))
        waits: list[evloop.Future[Any]] = [future, self._done]
        await evloop.wait(waits, return_when=evloop.FIRST_COMPLETED)
        if not future.done():
            future.cancel()  # the thread's result, when it comes, goes nowhere
            return None
        return future.result()

    def _off_loop(self, work: Callable[[], T]) -> evloop.Future[T]:
        """Run `work` in a thread of its own; its result comes back through the loop.

        A daemon thread, not an executor's: a dispatcher told to stop while it reads
        100,000 plugin files exits at once instead of waiting for the read."""
        loop = self.loop
        future: evloop.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result = work()
            except BaseException as exc:  # handed to the loop, which logs it
                outcome: tuple[T | None, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=run, name="pyaudispd-config", daemon=True).start()
        return future

    async def apply(self, plan: ReloadPlan) -> None:
        """Carry out `plan` on the loop: log and do each action, then wait for the stopped
        plugins to be reaped and start the successors of the restarted ones."""
        stopping: list[tuple[PluginRunner, PluginRunner | None]] = []
        started = signalled = revived = 0
        for action in plan.actions:
            if action.text is not None:
                log.info("%s", action.text)
            name = action.name
            if action.step is Step.STOP:
                stopping.append((self.plugins.pop(name), None))
            elif action.step is Step.START:
                assert action.config is not None
                runner = self._make_runner(action.config, self.ctx)
                self.plugins[name] = runner
                runner.start()
                started += 1
            else:
                assert action.config is not None
                runner = self.plugins[name]
                if action.step is Step.RESTART:
                    self.plugins[name] = self._make_runner(action.config, self.ctx)
                    stopping.append((runner, self.plugins[name]))
                elif action.step is Step.REVIVE:
                    runner.config = action.config
                    runner.revive()
                    revived += 1
                else:
                    runner.config = action.config
                    runner.hup()
                    signalled += 1
        if not self.plugins:
            log.info("no active plugins after the reload")

        self._retiring = [runner for runner, _ in stopping]
        try:
            results = await evloop.gather(
                *(
                    r.stop(term_timeout=self.options.stop_timeout, keep=heir is not None)
                    for r, heir in stopping
                )
            )
        finally:
            self._retiring = []
        restarted = 0
        for (old, heir), leftover in zip(stopping, results, strict=True):
            self._carry(old, len(leftover) if heir is not None else 0)
            if heir is None:
                continue
            if old.unreaped:
                log.error(
                    "plugin %s: not starting a replacement; pid %s is still there",
                    old.name,
                    old.pid,
                )
                self._hand_over(old, heir, leftover)
                heir.dropped += len(leftover)
                heir.state = State.FAILED
                continue
            self._hand_over(old, heir, leftover)
            heir.adopt(leftover)
            heir.start()
            restarted += 1
        log.info(
            "reload done: %d started, %d stopped, %d restarted, %d signalled, %d revived; "
            "%d plugin file problems; %d active plugins",
            started,
            len(stopping) - restarted,
            restarted,
            signalled,
            revived,
            plan.skipped_files,
            len(self.plugins),
        )
        if not self.plugins:
            log.info("no active plugins, exiting")
            self.finish(0)

    # -- the ledger ------------------------------------------------------------------------

    @staticmethod
    def _hand_over(old: PluginRunner, heir: PluginRunner, leftover: list[Record]) -> None:
        """Records a stopped plugin never delivered go to its successor: they count as
        offered to the one that gets them."""
        heir.offered += len(leftover)

    def _carry(self, old: PluginRunner, handed_over: int) -> None:
        """A plugin's counters outlive the runner (a restart makes a new one), so the
        figures of a name keep growing, as counters must."""
        carried = self._carried.setdefault(old.name, dict.fromkeys(FIGURE_KEYS, 0))
        carried["offered"] += old.offered - handed_over
        carried["delivered"] += old.delivered
        carried["dropped"] += old.dropped
        carried["restarts"] += old.restarts

    def figures(self) -> dict[str, dict[str, int]]:
        """Per plugin: offered = delivered + dropped + queued, and restarts."""
        out = {name: dict(carried) for name, carried in self._carried.items()}
        for name, runner in self.plugins.items():
            mine = out.setdefault(name, dict.fromkeys(FIGURE_KEYS, 0))
            mine["offered"] += runner.offered
            mine["delivered"] += runner.delivered
            mine["dropped"] += runner.dropped
            mine["restarts"] += runner.restarts
            mine["queued"] = runner.depth
        return out

    def send_figures(self) -> None:
        """The figures go to pyauditd the other way on the stream it feeds us, so its
        ledger and metrics include every plugin's (no second port). A full socket only
        delays them to the next report."""
        if self._figures_failed:
            return
        try:
            os.write(0, figures_line(self.figures()))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            # stdin that cannot be written (a pipe, in tests): nobody reads figures
            self._figures_failed = True
            log.debug("cannot send figures to pyauditd: %s", exc)

    def _schedule_figures(self) -> None:
        if not self.ctx.shutting_down:
            self._figures_timer = self.loop.call_later(FIGURES_INTERVAL, self._figures_tick)

    def _figures_tick(self) -> None:
        self._figures_timer = None
        self.send_figures()
        self._schedule_figures()

    def _apply_settings(
        self, settings: DispatcherSettings, *, first: bool, node: bytes | None
    ) -> None:
        old = self.settings
        self.settings = settings
        self.ctx.q_depth = settings.q_depth
        self.ctx.max_restarts = settings.max_restarts
        # An event closed at once would be cut before its next read's records arrive.
        self.ctx.end_of_event_timeout = float(max(1, settings.end_of_event_timeout))
        if first or settings.priority_boost != old.priority_boost:
            apply_priority(settings.priority_boost)
        if node is not None:
            self.node = node
        if not first:
            self._resume()

    def _log_messages(self, messages: list[tuple[int, str]]) -> None:
        for level, text in messages:
            log.log(level, "%s", text)

    def _log_plugin_problems(self, problems: list[PluginProblem]) -> None:
        for problem in problems:
            if problem.skipped:
                log.error("skipping plugin: %s", problem)
            else:
                log.warning("%s", problem)

    # -- state report ---------------------------------------------------------------------

    def state_text(self) -> str:
        s = self.settings
        lines = [
            ("dispatcher pid", os.getpid()),
            ("current time", time.strftime("%x %X")),
            ("config dir", self.options.config_dir),
            ("q_depth", s.q_depth),
            ("overflow_action", s.overflow_action),
            ("priority_boost", s.priority_boost),
            ("max_restarts", s.max_restarts),
            ("name_format", s.name_format),
            ("name", s.name or ""),
            ("plugin_dir", s.plugin_dir),
            ("queueing suspended", "yes" if self.suspended else "no"),
            ("records received", self.records_in),
            ("number of active plugins", len(self.plugins)),
        ]
        out = [f"{key} = {value}" for key, value in lines]
        for name, runner in sorted(self.plugins.items()):
            out.append("")
            out.append(f"[plugin {name}]")
            out.extend(f"{key} = {value}" for key, value in runner.state_lines())
        return "\n".join(out) + "\n"

    def write_state(self) -> None:
        path = os.path.join(self.options.run_dir, STATE_FILE)
        try:
            write_state_file(path, self.state_text())
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc.strerror)
