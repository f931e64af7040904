"""Fields, laurel-layout encoding, the process table and filters (auditpy.events)."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditpy.events.assemble import Assembler, Event
from auditpy.events.encode import (
    EncodeOptions,
    Encoder,
    Names,
    decode_sockaddr,
    text,
)
from auditpy.events.fields import Hex, Oct, parse_body
from auditpy.events.filters import EventFilter, split_keys
from auditpy.events.lineage import (
    SHARED_NAMES,
    LabelRules,
    Process,
    ProcessTable,
    ProcInfo,
    container_id,
    parse_cgroup,
    systemd_unit,
)

SYSCALL = (
    "arch=c000003e syscall={nr} success=yes exit={exit} a0={a0} a1=0 a2=0 a3=0 items=0 "
    "ppid={ppid} pid={pid} auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
    'tty=pts0 ses=3 comm="{comm}" exe="{exe}" key={key}'
)


def syscall(nr: int = 110, *, pid: int, ppid: int, comm: str = "x", exe: str = "/bin/x",
            exit: int = 0, a0: str = "0", key: str = "(null)") -> bytes:
    return SYSCALL.format(nr=nr, exit=exit, a0=a0, ppid=ppid, pid=pid, comm=comm, exe=exe,
                          key=key).encode()


# -- fields -----------------------------------------------------------------------------------


def test_numbers_keep_their_base() -> None:
    fields = dict(parse_body(1302, b"item=0 name=\"/x\" mode=0100644 cap_fp=1f inode=12 "
                                   b"dev=fe:00 ouid=1000 cap_frootid=0"))
    assert fields["item"] == 0 and type(fields["item"]) is int
    assert isinstance(fields["mode"], Oct) and fields["mode"] == 0o100644
    assert isinstance(fields["cap_fp"], Hex) and fields["cap_fp"] == 0x1F
    assert fields["dev"] == b"fe:00" and fields["cap_frootid"] == b"0"


def test_encoded_fields_are_decoded_and_others_never() -> None:
    fields = dict(parse_body(1305, b"op=set audit_pid=5924 old=0 res=1 comm=6C73 key=(null) "
                                   b"hostname=? exe=\"/a\""))
    assert fields["audit_pid"] == b"5924"  # laurel: b"Y$"
    assert fields["comm"] == b"ls" and fields["key"] is None and fields["hostname"] is None
    assert fields["old"] == b"0" and fields["res"] == 1 and fields["exe"] == b"/a"


def test_odd_spacing_and_user_text_with_quotes() -> None:
    fields = parse_body(1200, b"op=start ver=3.0.9 pid=5 subj=unconfined  res=success ")
    assert dict(fields)["res"] == b"success"
    fields = parse_body(1005, b"pid=1 uid=0 msg='text=quote \" and 'single' exe=\"/x\" res=ok'")
    assert dict(fields)["msg"] == b"text=quote \" and 'single' exe=\"/x\" res=ok"


def test_syscall_and_execve_arguments() -> None:
    fields = dict(parse_body(1300, syscall(pid=2, ppid=1, a0="7ffd")))
    assert fields["a0"] == Hex(0x7FFD)
    fields = dict(parse_body(1309, b'argc=2 a0="ls" a1_len=4 a1[0]=6162 a1[1]="cd"'))
    assert fields == {"argc": 2, "a0": b"ls", "a1_len": 4, "a1[0]": b"ab", "a1[1]": b"cd"}


def test_avc_permissions() -> None:
    fields = parse_body(1400, b'avc:  denied  { read write } for  pid=1 comm="x" '
                              b"scontext=a:b:c tclass=file permissive=0")
    assert fields[-1] == ("denied", [b"read", b"write"])
    assert dict(fields)["pid"] == 1


# -- strings ----------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_text_is_recoverable(data: bytes) -> None:
    """Percent-decoding what is written gives back exactly the record's bytes."""
    encoded = text(data)
    assert urllib.parse.unquote_to_bytes(encoded) == data
    assert not re.search(r"[\x00-\x1f\x7f]", encoded)


def test_text_keeps_text_and_encodes_the_rest() -> None:
    assert text(b"plain /path") == "plain /path"
    assert text("€".encode() + b"\x80%+\t") == "€%80%25%2b%09"


# -- encoding ---------------------------------------------------------------------------------


def encode(lines: list[bytes], **options: bool) -> list[dict[str, object]]:
    names = Names(lambda uid: {0: "root", 1000: "alice"}.get(uid),
                  lambda gid: {0: "root"}.get(gid))
    encoder = Encoder(EncodeOptions(**options), names)
    events = Assembler(clock=lambda: 0.0).feed_lines(lines)
    return [json.loads(encoder.event_line(e)) for e in events]


def test_laurel_layout_of_an_exec_event() -> None:
    lines = [
        b"type=SYSCALL msg=audit(1.500:7): " + syscall(59, pid=5, ppid=4, a0="55") + b"\n",
        b'type=EXECVE msg=audit(1.500:7): argc=3 a0="sh" a1="-c" a2=6563686F2068690A\n',
        b'type=CWD msg=audit(1.500:7): cwd="/root"\n',
        b'type=PATH msg=audit(1.500:7): item=0 name="/bin/sh" inode=3 dev=fe:00 mode=0100755 '
        b"ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0\n",
        b"type=PROCTITLE msg=audit(1.500:7): proctitle=7368002D6300\n",
        b"type=EOE msg=audit(1.500:7): \n",
    ]
    [event] = encode(lines, universal=True, userdb=True)
    assert list(event) == ["ID", "SYSCALL", "EXECVE", "CWD", "PATH", "PROCTITLE"]
    assert event["ID"] == "1.500:7"
    sc = event["SYSCALL"]
    assert isinstance(sc, dict)
    assert sc["arch"] == "0xc000003e" and sc["syscall"] == 59 and sc["exit"] == 0
    assert sc["ARGV"] == ["0x55", "0x0", "0x0", "0x0"] and sc["key"] is None
    assert sc["AUID"] == "alice" and sc["UID"] == "root"
    assert list(sc)[-2:] == ["ARCH", "SYSCALL"] and sc["SYSCALL"] == "execve"
    assert event["EXECVE"] == {"argc": 3, "ARGV": ["sh", "-c", "echo hi%0a"]}
    assert event["PATH"] == [{"item": 0, "name": "/bin/sh", "inode": 3, "dev": "fe:00",
                              "mode": "0o100755", "ouid": 0, "ogid": 0, "rdev": "00:00",
                              "nametype": "NORMAL", "cap_fp": "0x0", "cap_fi": "0x0",
                              "cap_fe": 0, "cap_fver": "0x0", "OUID": "root",
                              "OGID": "root"}]
    assert event["PROCTITLE"] == {"ARGV": ["sh", "-c"]}


def test_execve_split_over_records_and_chunks() -> None:
    lines = [
        b"type=EXECVE msg=audit(1.000:3): argc=3 a0=\"x\" a1_len=8 a1[0]=41424344\n",
        b"type=EXECVE msg=audit(1.000:3): a1[1]=45464748 a2=(null)\n",
        b"type=EOE msg=audit(1.000:3): \n",
    ]
    [event] = encode(lines, argv_string=True)
    assert event["EXECVE"] == {"argc": 3, "ARGV": ["x", "ABCDEFGH", None],
                               "ARGV_STR": "x ABCDEFGH"}


def test_proctitle_keeps_empty_arguments() -> None:
    [event] = encode([b"type=PROCTITLE msg=audit(1.000:3): proctitle=61006200006300\n"])
    assert event["PROCTITLE"] == {"ARGV": ["a", "b", "", "c"]}


def test_single_record_events_are_objects_and_others_lists() -> None:
    lines = [
        b"type=USER_LOGIN msg=audit(1.000:1): pid=1 uid=0 auid=1000 ses=1 msg='op=login'\n",
        b"type=CONFIG_CHANGE msg=audit(1.000:2): op=add_rule key=\"k\" list=4 res=1\n",
        b"type=EOE msg=audit(1.000:2): \n",
        b"node=h1 type=CWD msg=audit(1.000:3): cwd=\"/\"\n",
        b"node=h1 type=EOE msg=audit(1.000:3): \n",
    ]
    first, second, third = encode(lines, userdb=True)
    assert first["USER_LOGIN"] == {"pid": 1, "uid": 0, "auid": 1000, "ses": 1,
                                   "msg": "op=login", "UID": "root", "AUID": "alice"}
    assert second["CONFIG_CHANGE"] == [{"op": "add_rule", "key": "k", "list": 4, "res": 1}]
    assert list(third) == ["ID", "NODE", "CWD"] and third["NODE"] == "h1"


def test_incomplete_events_say_why() -> None:
    [event] = encode([b"type=SYSCALL msg=audit(1.000:1): " + syscall(pid=2, ppid=1) + b"\n"])
    assert event["INCOMPLETE"] == {"reason": "end of input"}


def test_enriched_input_is_replaced_by_own_translation() -> None:
    line = (b"type=SYSCALL msg=audit(1.000:1): " + syscall(pid=2, ppid=1)
            + b'\x1dARCH=x86_64 SYSCALL=getppid AUID="alice" UID="root"\n')
    [translated] = encode([line], universal=True, userdb=True)
    sc = translated["SYSCALL"]
    assert isinstance(sc, dict) and list(sc).count("ARCH") == 1 and sc["SYSCALL"] == "getppid"
    [kept] = encode([line])
    sc = kept["SYSCALL"]
    assert isinstance(sc, dict) and sc["AUID"] == "alice" and sc["ARCH"] == "x86_64"


@pytest.mark.parametrize(
    ("hexdata", "expected"),
    [
        ("02000050" "7F000001" "0000000000000000",
         {"saddr_fam": b"inet", "addr": b"127.0.0.1", "port": 80}),
        ("0A000050" "00000000" "FE800000000000000000000000000001" "02000000",
         {"saddr_fam": b"inet6", "addr": b"fe80::1", "port": 80, "flowinfo": 0,
          "scope_id": 2}),
        ("01002F746D702F736F636B00", {"saddr_fam": b"local", "path": b"/tmp/sock"}),
        ("0100006162", {"saddr_fam": b"local", "path": b"\0ab"}),
        ("1000000000000000" "00000000", {"saddr_fam": b"netlink", "pid": 0,
                                         "groups": Hex(0)}),
        ("2300", None),
    ],
)
def test_sockaddr(hexdata: str, expected: dict[str, object] | None) -> None:
    assert decode_sockaddr(bytes.fromhex(hexdata)) == expected


def test_names_cache_and_unset() -> None:
    calls = []

    def user(uid: int) -> str | None:
        calls.append(uid)
        return None

    names = Names(user, None)
    assert names.user(5) == "unknown(5)" and names.user(5) == "unknown(5)"
    assert names.user(0xFFFFFFFF) == "unset" and calls == [5]
    names.clear()
    names.user(5)
    assert calls == [5, 5]


# -- process table ----------------------------------------------------------------------------


def observe(table: ProcessTable, eid: str, body: bytes) -> object:
    return table.observe(eid, parse_body(1300, body))


def test_lineage_survives_exited_and_reparented_parents() -> None:
    """bash -> sh -> python -> true, each parent gone (re-parented to 1) before its child's
    exec: the forks seen in the stream keep each parent's exec event."""
    table = ProcessTable(read_proc=lambda pid: None)
    observe(table, "1.0:1", syscall(59, pid=10, ppid=2, comm="bash", exe="/bin/bash"))
    observe(table, "1.0:2", syscall(56, pid=10, ppid=2, comm="bash", exe="/bin/bash", exit=11,
                                    a0="1200011"))
    observe(table, "1.0:3", syscall(59, pid=11, ppid=1, comm="sh", exe="/bin/dash"))
    observe(table, "1.0:4", syscall(57, pid=11, ppid=1, comm="sh", exe="/bin/dash", exit=12))
    observe(table, "1.0:5", syscall(59, pid=12, ppid=1, comm="python3", exe="/usr/bin/py"))
    observe(table, "1.0:6", syscall(435, pid=12, ppid=1, comm="python3", exe="/usr/bin/py",
                                    exit=13))
    observe(table, "1.0:7", syscall(231, pid=12, ppid=1, comm="python3", exe="/usr/bin/py"))
    proc = table.observe("1.0:8", parse_body(1300, syscall(59, pid=13, ppid=1, comm="true",
                                                             exe="/bin/true")))
    assert proc is not None
    info = table.enrichment(proc)
    assert info["PID"] == {"EVENT_ID": b"1.0:8"}
    assert info["PPID"] == {"EVENT_ID": b"1.0:5", "comm": b"python3", "exe": b"/usr/bin/py",
                            "ppid": 1, "pid": 12}
    python = table.get(12)
    assert python is not None and python.exited
    chain = []
    p = proc.parent
    while p is not None:
        chain.append(p.exec_id)
        p = p.parent
    assert chain == ["1.0:5", "1.0:3", "1.0:1"]


def test_threads_are_not_processes_and_pid_reuse_starts_afresh() -> None:
    table = ProcessTable(read_proc=lambda pid: None)
    observe(table, "1.0:1", syscall(59, pid=20, ppid=1, comm="a", exe="/a"))
    observe(table, "1.0:2", syscall(56, pid=20, ppid=1, exit=21, a0="3d0f00"))  # CLONE_THREAD
    assert table.get(21) is None
    observe(table, "1.0:3", syscall(59, pid=30, ppid=1, comm="b", exe="/b"))
    again = table.observe("1.0:4", parse_body(1300, syscall(59, pid=30, ppid=5, exe="/c")))
    assert again is not None and again.exec_id == "1.0:4" and again.ppid == 5


def test_labels_from_keys_exe_and_propagation() -> None:
    rules = LabelRules(keys=frozenset({"admin"}), exe=((re.compile("^/usr/bin/tr"), "tr"),),
                       unlabel_exe=((re.compile("^/bin/sh$"), "tr"),),
                       propagate=frozenset({"admin"}))
    table = ProcessTable(rules=rules, read_proc=lambda pid: None)
    proc = observe(table, "1.0:1", syscall(59, pid=40, ppid=1, exe="/usr/bin/x", key='"admin"'))
    assert table.enrichment(proc)["LABELS"] == [b"admin"]  # type: ignore[arg-type]
    observe(table, "1.0:2", syscall(57, pid=40, ppid=1, exit=41))
    child = observe(table, "1.0:3", syscall(59, pid=41, ppid=40, exe="/usr/bin/true"))
    assert table.enrichment(child)["LABELS"] == [b"admin", b"tr"]  # type: ignore[arg-type]
    child = observe(table, "1.0:4", syscall(59, pid=41, ppid=40, exe="/bin/sh"))
    assert table.enrichment(child)["LABELS"] == [b"admin"]  # type: ignore[arg-type]


def test_entries_share_names_and_empty_labels() -> None:
    """Processes running the same program hold one comm and one exe object between them,
    and those without labels one empty set: what is the same in every entry is not paid
    for in every entry (a host runs the same few programs in many processes)."""
    table = ProcessTable(read_proc=lambda pid: None)
    procs = [observe(table, f"1.0:{pid}", syscall(59, pid=pid, ppid=1, comm="true",
                                                  exe="/bin/true"))
             for pid in range(100, 110)]
    procs += [observe(table, f"1.0:{pid}", syscall(0, pid=pid, ppid=1, comm="true",
                                                   exe="/bin/true"))
              for pid in range(200, 210)]
    assert all(isinstance(p, Process) for p in procs)
    entries = [p for p in procs if isinstance(p, Process)]
    assert len({id(p.comm) for p in entries}) == 1 and len({id(p.exe) for p in entries}) == 1
    assert entries[0].comm == b"true" and entries[0].exe == b"/bin/true"
    assert len({id(p.labels) for p in entries}) == 1 and not entries[0].labels
    for n in range(SHARED_NAMES + 10):  # many distinct programs: still correct, still bounded
        proc = observe(table, f"2.0:{n}", syscall(59, pid=1000 + n, ppid=1, exe=f"/x/{n}"))
        assert isinstance(proc, Process) and proc.exe == b"/x/%d" % n
    assert len(table._names) <= SHARED_NAMES


def test_table_is_bounded_and_seeded() -> None:
    table = ProcessTable(capacity=3, read_proc=lambda pid: None)
    table.seed([ProcInfo(1, 0, b"init", b"/sbin/init"), ProcInfo(2, 1, b"sh", b"/bin/sh")])
    two = table.get(2)
    assert two is not None and two.parent is table.get(1)
    for pid in (3, 4, 5):
        observe(table, f"1.0:{pid}", syscall(59, pid=pid, ppid=1))
    assert len(table) == 3 and table.get(1) is None and table.stats.evicted == 2


def test_gone_processes_are_forgotten_after_a_pass_without_events() -> None:
    """A process that is not alive is forgotten once no event used it for a whole pass;
    a live one, or one an event used since the last pass, stays; a child keeps its
    forgotten parent."""
    table = ProcessTable(read_proc=lambda pid: None)
    table.seed([ProcInfo(1, 0, b"init", b"/sbin/init"), ProcInfo(7, 1, b"old", b"/old")])
    observe(table, "1.0:1", syscall(59, pid=10, ppid=1, comm="sh", exe="/bin/sh"))
    observe(table, "1.0:2", syscall(57, pid=10, ppid=1, comm="sh", exe="/bin/sh", exit=11))
    observe(table, "1.0:3", syscall(59, pid=11, ppid=10, comm="true", exe="/bin/true"))
    live = {1, 11}
    assert table.forget_dead(live) == 0  # everything was used since the last pass (none)
    observe(table, "1.0:4", syscall(110, pid=11, ppid=10))  # 11 used again, 10 and 7 not
    assert table.forget_dead(live) == 2
    assert table.get(10) is None and table.get(7) is None and table.get(11) is not None
    child = table.get(11)
    assert child is not None and child.parent is not None and child.parent.exec_id == "1.0:1"
    assert table.enrichment(child)["PPID"] == {
        "EVENT_ID": b"1.0:1", "comm": b"sh", "exe": b"/bin/sh", "ppid": 1, "pid": 10}
    observe(table, "1.0:5", syscall(110, pid=11, ppid=10))
    assert table.forget_dead(set()) == 1  # init (gone, here); 11 was used since the last pass
    assert table.get(11) is not None
    assert table.forget_dead(set()) == 1 and len(table) == 0  # 11: not since the last pass
    assert table.stats.forgotten == 4


@given(st.lists(st.one_of(
    st.tuples(st.just("event"), st.integers(1, 12), st.sampled_from([59, 57, 110, 231])),
    st.tuples(st.just("forget"), st.frozensets(st.integers(1, 12)), st.just(0)),
), max_size=40))
def test_forget_dead_forgets_exactly_the_gone_and_unused(
        steps: list[tuple[str, object, int]]) -> None:
    """Against a model that looks at every entry: the pass that stops at the first entry
    used lately forgets exactly the entries that are gone and were not used since the
    pass before."""
    table = ProcessTable(read_proc=lambda pid: None)
    last_used: dict[int, int] = {}
    passes = 0
    for n, (kind, arg, nr) in enumerate(steps):
        if kind == "event":
            assert isinstance(arg, int)
            observe(table, f"1.0:{n}", syscall(nr, pid=arg, ppid=1, exit=arg + 20))
            for pid in [arg, arg + 20] if nr == 57 else [arg]:
                if table.get(pid) is not None:
                    last_used[pid] = passes
        else:
            assert isinstance(arg, frozenset)
            passes += 1
            expected = {pid for pid in list(last_used)
                        if table.get(pid) is not None and pid not in arg
                        and last_used[pid] < passes - 1}
            before = {pid for pid in last_used if table.get(pid) is not None}
            assert table.forget_dead(arg) == len(expected)
            assert {pid for pid in before if table.get(pid) is None} == expected


def test_unknown_pids_are_looked_up_once_found() -> None:
    asked = []

    def read(pid: int) -> ProcInfo | None:
        asked.append(pid)
        return ProcInfo(pid, 1, b"svc", b"/usr/sbin/svc", "/system.slice/svc.service")

    table = ProcessTable(read_proc=read, read_cgroup=lambda pid: None)
    proc = observe(table, "1.0:1", syscall(pid=50, ppid=7))
    assert proc is not None and asked == [50, 7]
    observe(table, "1.0:2", syscall(pid=50, ppid=7))
    assert asked == [50, 7]


def test_cgroups() -> None:
    cid = "ab" * 32
    v1v2 = (f"9:name=systemd:/system.slice/docker-{cid}.scope\n4:memory:/x\n0::/\n").encode()
    assert parse_cgroup(v1v2) == f"/system.slice/docker-{cid}.scope"
    assert parse_cgroup(f"0::/docker-{cid}.scope\n".encode()) == f"/docker-{cid}.scope"
    assert container_id(f"/system.slice/docker-{cid}.scope") == cid
    assert container_id(f"/docker/{cid}") == cid
    assert container_id(f"/kubepods/burstable/pod1/cri-containerd-{cid}.scope") == cid
    assert container_id("/system.slice/ssh.service") is None
    assert container_id(f"/x/{cid}0") is None
    assert systemd_unit("/system.slice/ssh.service") == "ssh.service"
    assert systemd_unit("/user.slice/user-0.slice/session-3.scope") == "session-3.scope"
    assert systemd_unit("/") is None


def test_forked_child_starts_in_its_parents_cgroup() -> None:
    table = ProcessTable(read_proc=lambda pid: None,
                         read_cgroup=lambda pid: "/docker-" + "cd" * 32 + ".scope"
                         if pid == 60 else None)
    observe(table, "1.0:1", syscall(59, pid=60, ppid=1))
    observe(table, "1.0:2", syscall(57, pid=60, ppid=1, exit=61))
    child = observe(table, "1.0:3", syscall(59, pid=61, ppid=60))
    assert child is not None and container_id(child.cgroup) == "cd" * 32  # type: ignore[attr-defined]


# -- filters ----------------------------------------------------------------------------------


def test_filters() -> None:
    f = EventFilter(frozenset({"noisy"}), frozenset({"trusted"}), frozenset({1104}))
    assert f.drops(1300, ["a", "noisy"], [])
    assert f.drops(1300, [], ["trusted"])
    assert f.drops(1104)
    assert not f.drops(1300, ["a"], ["other"])
    assert split_keys(b"a\x01b") == ["a", "b"] and split_keys(None) == []
    assert not EventFilter().active


def test_event_properties() -> None:
    event = Event("1700000000.123:45", None, [(1300, b"")])
    assert event.seconds == 1700000000 and event.serial == 45
    assert event.timestamp == pytest.approx(1700000000.123)
