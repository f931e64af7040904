"""A process table fed by the audit stream itself: who forked whom, and what each one runs.

Why from the stream: a short-lived process has usually exited by the time its child's event
is processed, so looking its parent up in /proc (what most tools do) finds nothing, or a
different process that got the pid since.  Here every execve event records the process (its
comm, exe and the event ID of the exec), every clone/fork/vfork event records the child with
a reference to the forking process, and exit_group events mark processes gone.  A child
keeps the reference to the process that forked it, so its parent is known even after the
parent exited and the child was re-parented (the kernel's ``ppid`` then names the reaper).
The table is seeded from /proc at start and asks /proc (through an injected function) about
a pid it has never seen.  It is bounded: least recently used entries go first; and
`forget_dead`, given the pids that are alive, lets go of processes that are gone and that no
event used for a while, so that it holds what runs now rather than every process that ran
since the start, up to its capacity.

Enrichment per SYSCALL event, in laurel's layout:

* ``PPID``: the parent: ``EVENT_ID`` of its exec (when it was seen), ``comm``, ``exe``,
  ``ppid``, and ``pid`` (laurel leaves ``pid`` out: there the parent is always
  ``SYSCALL.ppid``; here it is the tracked parent, which differs after a re-parenting);
* ``PID``: ``EVENT_ID`` of the process's own exec;
* ``LABELS``: the process's labels, sorted (laurel's ``label-process`` options: labels
  from rule keys and from exe patterns at exec, removed by unlabel patterns, propagated to
  children that are forked or exec'd under a labelled parent);
* the cgroup the process is in, read through an injected function when the process is first
  seen and at each exec (a forked child starts in its parent's): ``container_id`` (64 hex
  digits of a docker/podman/cri-o/containerd scope or path) and ``unit`` (the systemd unit).

Pure: no I/O except through the injected readers.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable

from auditpy.events.filters import split_keys
from auditpy.proto.interp_tables import ELF_TO_MACHINE
from auditpy.proto.syscalls import syscall_names
from auditpy.structs import NamedTuple, dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from auditpy.events.fields import Value

__all__ = [
    "DEFAULT_CAPACITY",
    "LabelRules",
    "ProcInfo",
    "Process",
    "ProcessTable",
    "container_id",
    "parse_cgroup",
    "systemd_unit",
]

DEFAULT_CAPACITY: Final = 16384
CLONE_THREAD: Final = 0x10000
#: The labels of a process without any: one object for all (every ``frozenset()`` is a new
#: object, a large part of a table entry).
NO_LABELS: Final[frozenset[str]] = frozenset()
#: Distinct comm and exe values the table shares among its entries before it starts afresh.
SHARED_NAMES: Final = 4096

EXEC, FORK, CLONE, EXIT = 1, 2, 3, 4
_KINDS: Final = {
    "execve": EXEC,
    "execveat": EXEC,
    "fork": FORK,
    "vfork": FORK,
    "clone": CLONE,
    "clone3": FORK,
    "exit_group": EXIT,
}
#: AUDIT_ARCH value -> {syscall number: kind}, made when the architecture is first seen
_BY_ARCH: Final[dict[int, dict[int, int]]] = {}
_S390: Final = frozenset(a for a, m in ELF_TO_MACHINE.items() if m in (5, 6))


def syscall_kind(arch: int, nr: int) -> int:
    """EXEC, FORK, CLONE, EXIT or 0 for a syscall number on an architecture."""
    kinds = _BY_ARCH.get(arch)
    if kinds is None:
        machine = ELF_TO_MACHINE.get(arch)
        if machine is None:
            return 0
        kinds = _BY_ARCH[arch] = {
            number: _KINDS[name] for number, name in syscall_names(machine).items()
            if name in _KINDS
        }
    return kinds.get(nr, 0)


# -- cgroups -----------------------------------------------------------------------------

_CONTAINER: Final = re.compile(
    r"(?:^|[/\-:])([0-9a-f]{64})(?:\.scope)?(?:/|$)"
)
_UNIT_SUFFIXES: Final = (".service", ".scope", ".socket", ".mount", ".swap", ".timer")


def parse_cgroup(data: bytes) -> str | None:
    """The cgroup path that says where a process runs, from /proc/PID/cgroup: the unified
    (v2) hierarchy's when it is not the root, else the ``name=systemd`` one, else the first
    non-root path."""
    v2 = systemd = other = None
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if path in ("", "/"):
            continue
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif controllers == "name=systemd":
            systemd = path
        elif other is None:
            other = path
    return v2 or systemd or other


def container_id(path: str | None) -> str | None:
    """The container a cgroup path belongs to: 64 hex digits that name a whole path
    component or end one after ``-`` (``docker-<id>.scope``, ``/docker/<id>``,
    ``cri-containerd-<id>.scope``, ``libpod-<id>``)."""
    if not path:
        return None
    found = _CONTAINER.findall(path)
    return found[-1] if found else None


def systemd_unit(path: str | None) -> str | None:
    """The systemd unit of a cgroup path: its last component that names one."""
    if not path:
        return None
    for part in reversed(path.split("/")):
        if part.endswith(_UNIT_SUFFIXES):
            return part
    return None


# -- the table -------------------------------------------------------------------------------


class SyscallFacts(NamedTuple):
    """What the process table (and the filters) take from a SYSCALL record."""

    pid: int | None
    ppid: int | None
    arch: int | None
    nr: int | None
    exit: int | None
    a0: int | None
    comm: bytes | None
    exe: bytes | None
    key: bytes | None
    success: bool


def syscall_facts(fields: list[tuple[str, Value]]) -> SyscallFacts:
    pid = ppid = arch = nr = exit_ = a0 = None
    comm = exe = key = None
    success = True
    for name, value in fields:
        number = int(value) if isinstance(value, int) else None
        if name == "pid":
            pid = number
        elif name == "ppid":
            ppid = number
        elif name == "arch":
            arch = number
        elif name == "syscall":
            nr = number
        elif name == "exit":
            exit_ = number
        elif name == "a0":
            a0 = number
        elif name == "comm":
            comm = _text(value)
        elif name == "exe":
            exe = _text(value)
        elif name == "key":
            key = _text(value)
        elif name == "success":
            success = value == b"yes"
    return SyscallFacts(pid, ppid, arch, nr, exit_, a0, comm, exe, key, success)



@dataclass(frozen=True)
class ProcInfo:
    """What /proc says about a process (from the I/O layer)."""

    pid: int
    ppid: int
    comm: bytes | None = None
    exe: bytes | None = None
    cgroup: str | None = None


@dataclass(frozen=True)
class LabelRules:
    """laurel's ``[label-process]`` options."""

    keys: frozenset[str] = frozenset()
    exe: tuple[tuple[re.Pattern[str], str], ...] = ()
    unlabel_exe: tuple[tuple[re.Pattern[str], str], ...] = ()
    propagate: frozenset[str] = frozenset()


class Process:
    """One process as the table knows it."""

    __slots__ = (
        "cache",
        "cgroup",
        "comm",
        "exe",
        "exec_id",
        "exited",
        "forked",
        "labels",
        "parent",
        "pid",
        "ppid",
        "seen",
        "version",
    )

    def __init__(self, pid: int, ppid: int) -> None:
        self.pid = pid
        self.ppid = ppid
        #: the process that forked this one (None when unknown)
        self.parent: Process | None = None
        self.comm: bytes | None = None
        self.exe: bytes | None = None
        #: EVENT_ID of its last execve
        self.exec_id: str | None = None
        self.labels: frozenset[str] = NO_LABELS
        self.cgroup: str | None = None
        self.exited = False
        #: created by a fork event seen here
        self.forked = False
        #: bumped on every change, for caches of what is derived from it
        self.version = 0
        #: the caller's cache of what it derives from this entry (keyed by versions)
        self.cache: object = None
        #: the table's `forget_dead` pass count when an event last used it
        self.seen = 0

    def touch(self) -> None:
        self.version += 1

    def __repr__(self) -> str:
        return (
            f"Process(pid={self.pid}, ppid={self.ppid}, comm={self.comm!r}, exe={self.exe!r},"
            f" exec_id={self.exec_id!r}, labels={sorted(self.labels)})"
        )


@dataclass
class TableStats:
    seeded: int = 0
    execs: int = 0
    forks: int = 0
    exits: int = 0
    #: /proc look-ups of pids the table had never seen (found / not found)
    looked_up: int = 0
    not_found: int = 0
    evicted: int = 0
    #: gone from /proc and unused for a pass (`forget_dead`)
    forgotten: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _text(value: Value) -> bytes | None:
    return value if isinstance(value, bytes) else None


class ProcessTable:
    """The shadow process table; see the module docstring."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        rules: LabelRules | None = None,
        *,
        read_proc: Callable[[int], ProcInfo | None] | None = None,
        read_cgroup: Callable[[int], str | None] | None = None,
    ) -> None:
        self.capacity = max(1, capacity)
        self.rules = rules or LabelRules()
        self.read_proc = read_proc
        self.read_cgroup = read_cgroup
        self.stats = TableStats()
        self._procs: OrderedDict[int, Process] = OrderedDict()
        #: `forget_dead` passes so far
        self._passes = 0
        #: comm and exe values, one object each for every entry that has them
        self._names: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._procs)

    def __contains__(self, pid: int) -> bool:
        return pid in self._procs

    def get(self, pid: int) -> Process | None:
        """The entry for `pid` without a /proc look-up."""
        return self._procs.get(pid)

    # -- filling ------------------------------------------------------------------------

    def _put(self, proc: Process) -> None:
        procs = self._procs
        procs[proc.pid] = proc
        procs.move_to_end(proc.pid)
        proc.seen = self._passes
        while len(procs) > self.capacity:
            _, old = procs.popitem(last=False)
            # A child may still refer to it; its own ancestry is let go so that chains of
            # forked processes cannot hold memory beyond the table's bound.
            old.parent = None
            self.stats.evicted += 1

    def _used(self, proc: Process) -> None:
        """An event used the entry: it goes last in the eviction order (so the order is
        also the order of `seen`, which `forget_dead` relies on)."""
        self._procs.move_to_end(proc.pid)
        proc.seen = self._passes

    def forget_dead(self, live: Collection[int]) -> int:
        """Forget the entries of processes that are gone (their pid is not in `live`, the
        pids alive now) and that no event used since the pass before this one: a process
        that exited lately stays one more pass, for events of it still on their way.
        Children keep their reference to a forgotten parent. Returns how many went.

        Entries are in the order events last used them, so the pass looks at the unused
        ones only, oldest first, and stops at the first recent one."""
        self._passes += 1
        recent = self._passes - 1
        gone = []
        for pid, proc in self._procs.items():
            if proc.seen >= recent:
                break
            if pid not in live:
                gone.append(pid)
        for pid in gone:
            del self._procs[pid]
        self.stats.forgotten += len(gone)
        return len(gone)

    def seed(self, infos: Iterable[ProcInfo]) -> None:
        """Fill from a /proc scan (parents are linked when they are in the scan too)."""
        added: list[Process] = []
        for info in infos:
            proc = self._from_info(info)
            self._put(proc)
            added.append(proc)
            self.stats.seeded += 1
        for proc in added:
            parent = self._procs.get(proc.ppid)
            if parent is not None and parent is not proc:
                proc.parent = parent

    def _from_info(self, info: ProcInfo) -> Process:
        proc = Process(info.pid, info.ppid)
        proc.comm = self._shared(info.comm)
        proc.exe = self._shared(info.exe)
        proc.cgroup = info.cgroup
        if proc.exe is not None and self.rules.exe:
            proc.labels = self._exe_labels(proc.exe, NO_LABELS)
        return proc

    def lookup(self, pid: int) -> Process | None:
        """The entry for `pid`, asking /proc about a pid never seen (and recording it)."""
        proc = self._procs.get(pid)
        if proc is not None:
            return proc
        if self.read_proc is None or pid <= 0:
            return None
        info = self.read_proc(pid)
        self.stats.looked_up += 1
        if info is None:
            self.stats.not_found += 1
            return None
        proc = self._from_info(info)
        proc.parent = self._procs.get(info.ppid)
        self._put(proc)
        return proc

    def _shared(self, name: bytes | None) -> bytes | None:
        """`name` as the object other entries already hold (each record's value is a new
        one; a host runs the same few programs in many processes)."""
        if name is None:
            return None
        names = self._names
        found = names.get(name)
        if found is None:
            if len(names) >= SHARED_NAMES:
                names.clear()
            found = names[name] = name
        return found

    # -- labels -------------------------------------------------------------------------

    def _exe_labels(self, exe: bytes, labels: frozenset[str]) -> frozenset[str]:
        rules = self.rules
        if not rules.exe and not rules.unlabel_exe:
            return labels
        path = exe.decode("utf-8", "surrogateescape")
        out = set(labels)
        for pattern, label in rules.exe:
            if pattern.search(path):
                out.add(label)
        for pattern, label in rules.unlabel_exe:
            if pattern.search(path):
                out.discard(label)
        return frozenset(out) if out else NO_LABELS

    def _inherited(self, parent: Process | None) -> frozenset[str]:
        if parent is None or not parent.labels or not self.rules.propagate:
            return NO_LABELS
        return parent.labels & self.rules.propagate or NO_LABELS

    # -- events -------------------------------------------------------------------------

    def observe(self, eid: str, syscall: list[tuple[str, Value]]) -> Process | None:
        """Update the table from one SYSCALL record's fields (event `eid`); returns the
        entry of the process the event is about (None without a pid)."""
        return self.observe_facts(eid, syscall_facts(syscall))

    def observe_facts(self, eid: str, facts: SyscallFacts) -> Process | None:
        pid, ppid, arch, nr, exit_, a0, comm, exe, key, success = facts
        if pid is None:
            return None
        kind = syscall_kind(arch, nr) if arch is not None and nr is not None else 0
        if kind == EXEC and success:
            proc = self._exec(eid, pid, ppid, comm, exe)
        else:
            proc = self._current(pid, ppid, comm, exe)
            if success and exit_ is not None and exit_ > 0 and (
                kind == FORK
                or (kind == CLONE and (arch in _S390 or not (a0 or 0) & CLONE_THREAD))
            ):
                self._fork(proc, exit_)
            elif kind == EXIT:
                proc.exited = True
                proc.touch()
                self.stats.exits += 1
        if key is not None and self.rules.keys:
            for label in split_keys(key):
                if label in self.rules.keys and label not in proc.labels:
                    proc.labels = proc.labels | {label}
                    proc.touch()
        return proc

    def _current(
        self, pid: int, ppid: int | None, comm: bytes | None, exe: bytes | None
    ) -> Process:
        """The entry of a process making a syscall other than a successful exec."""
        proc = self.lookup(pid)
        if proc is None or proc.exited:
            proc = Process(pid, ppid if ppid is not None else 0)
            proc.comm, proc.exe = self._shared(comm), self._shared(exe)
            proc.parent = self.lookup(proc.ppid) if ppid else None
            proc.labels = self._inherited(proc.parent)
            proc.cgroup = self._cgroup(pid, proc.parent)
            self._put(proc)
            return proc
        self._used(proc)
        if (comm is not None and proc.comm != comm) or (exe is not None and proc.exe != exe):
            proc.comm = self._shared(comm) if comm is not None else proc.comm
            proc.exe = self._shared(exe) if exe is not None else proc.exe
            proc.touch()
        if ppid is not None and proc.ppid != ppid:
            self._reparent(proc, ppid)
        return proc

    def _reparent(self, proc: Process, ppid: int) -> None:
        """The record names another parent: a process whose fork was seen keeps the one
        that forked it (the kernel names the reaper after the parent exits); for any other
        the record is the best knowledge."""
        proc.ppid = ppid
        if not proc.forked:
            parent = self.lookup(ppid) if ppid > 0 else None
            proc.parent = parent if parent is not proc else None
        proc.touch()

    def _cgroup(self, pid: int, parent: Process | None) -> str | None:
        if self.read_cgroup is not None:
            found = self.read_cgroup(pid)
            if found is not None:
                return found
        return parent.cgroup if parent is not None else None

    def _exec(
        self, eid: str, pid: int, ppid: int | None, comm: bytes | None, exe: bytes | None
    ) -> Process:
        self.stats.execs += 1
        proc = self._procs.get(pid)
        same = proc is not None and not proc.exited and (
            ppid is None
            or proc.ppid == ppid
            # forked here and not yet exec'd: its parent may have exited meanwhile
            or (proc.forked and proc.exec_id is None)
        )
        if proc is not None and same:
            if ppid is not None and proc.ppid != ppid:
                self._reparent(proc, ppid)
            self._used(proc)
        else:
            proc = Process(pid, ppid if ppid is not None else 0)
            proc.parent = self.lookup(proc.ppid) if ppid else None
            self._put(proc)
        inherited = self._inherited(proc.parent)
        proc.comm, proc.exe, proc.exec_id = self._shared(comm), self._shared(exe), eid
        labels = proc.labels | inherited if inherited else proc.labels
        proc.labels = self._exe_labels(exe, labels) if exe is not None else labels
        proc.cgroup = self._cgroup(pid, proc.parent) or proc.cgroup
        proc.touch()
        return proc

    def _fork(self, parent: Process, child_pid: int) -> None:
        self.stats.forks += 1
        known = self._procs.get(child_pid)
        if known is not None and not known.exited and known.ppid == parent.pid:
            # The child's own events came first: a vfork parent resumes (and its syscall is
            # recorded) only after the child's exec, and any child may run before its
            # parent's clone returns.  It is the same process: only the link is learnt.
            if known.parent is None:
                known.parent = parent
            known.forked = True
            known.touch()
            self._used(known)
            return
        child = Process(child_pid, parent.pid)
        child.parent = parent
        child.forked = True
        # Until it execs, it runs its parent's program (but did not exec it itself).
        child.comm, child.exe = parent.comm, parent.exe
        child.labels = self._inherited(parent)
        child.cgroup = parent.cgroup
        self._put(child)

    # -- enrichment ---------------------------------------------------------------------

    def parent_of(self, proc: Process) -> Process | None:
        """The tracked parent, else the entry of its recorded ppid."""
        if proc.parent is not None:
            return proc.parent
        if proc.ppid > 0 and proc.ppid != proc.pid:
            parent = self.lookup(proc.ppid)
            if parent is not None and parent is not proc:
                proc.parent = parent
                return parent
        return None

    def enrichment(self, proc: Process) -> dict[str, Value]:
        """PPID, PID and LABELS for an event of `proc` (only what is known)."""
        out: dict[str, Value] = {}
        parent = self.parent_of(proc)
        if parent is not None:
            info: dict[str, Value] = {}
            if parent.exec_id is not None:
                info["EVENT_ID"] = parent.exec_id.encode()
            if parent.comm is not None:
                info["comm"] = parent.comm
            if parent.exe is not None:
                info["exe"] = parent.exe
            if parent.ppid:
                info["ppid"] = parent.ppid
            info["pid"] = parent.pid
            out["PPID"] = info
        if proc.exec_id is not None:
            out["PID"] = {"EVENT_ID": proc.exec_id.encode()}
        if proc.labels:
            out["LABELS"] = [label.encode("utf-8", "surrogateescape")
                             for label in sorted(proc.labels)]
        return out

    def processes(self) -> list[Process]:
        return list(self._procs.values())
