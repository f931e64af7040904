"""The delivery core of pyaudisp-remote, path by path: no sockets, no sleeps, a clock that
moves only when the test says so.  (Random orders of the same events: test_remote_delivery_
random.py.)"""

from __future__ import annotations

import syslog

import pytest

from auditpy.audisp_remote import delivery as dl
from auditpy.audisp_remote.actions import ActionPolicy, Outcome
from auditpy.audisp_remote.input import prepare
from auditpy.config.remote_conf import Action
from auditpy.proto import remote as rp

from .remote_harness import Harness, kinds, make_config, records

PEER = "127.0.0.1:60"


def connected(h: Harness, *recs: bytes) -> Harness:
    """Start, connect, queue `recs` (they go out at once)."""
    h.start()
    h.connect_ok()
    if recs:
        h.add(*recs)
    return h


def logged(h: Harness, text: str) -> int:
    return sum(text in line for line in h.logs)


# --------------------------------------------------------------------------------------
# Start and connect


def test_connects_at_start_even_with_nothing_queued() -> None:
    h = Harness()
    assert kinds(h.start()) == ["Connect"]
    out = h.connect_ok()
    assert out == [dl.Log(syslog.LOG_INFO, f"connected to {PEER}")]
    assert h.core.phase is dl.Phase.CONNECTED and h.core.deadline() is None


def test_startup_failure_runs_its_action_once_then_waits_for_records() -> None:
    h = Harness(make_config(startup_failure_action="syslog"))
    h.start()
    h.connect_fail("Connection refused")
    reason = f"cannot connect to {PEER}: Connection refused"
    assert h.logs == [reason, reason]  # the action's line, then the failure's
    assert not h.connecting and h.core.deadline() is None  # nothing to send: nothing to do
    h.add(b"r0")
    assert h.connecting
    h.connect_fail("Connection refused")
    assert len(h.logs) == 2  # neither the startup action nor (within a minute) the reason
    assert h.connecting  # the first retry is at once


def test_first_retry_at_once_then_every_network_retry_time() -> None:
    h = Harness(make_config(network_retry_time=7, max_tries_per_record=10,
                            max_time_per_record=60))
    h.start()
    h.add(b"r0")
    h.connect_fail()
    assert h.connecting  # at once
    h.connect_fail()
    assert not h.connecting and h.core.phase is dl.Phase.WAITING
    assert h.core.deadline() == h.clock.now + 7
    h.add(b"r1")  # new records do not cut the pause short
    assert not h.connecting
    h.advance(6.9)
    assert not h.connecting
    h.advance(0.1)
    assert h.connecting
    h.connect_ok()
    assert h.sent_payloads() == [b"r0", b"r1"]


def test_network_failure_action_after_max_tries_drops_the_record_in_immediate_mode() -> None:
    h = Harness(make_config(max_tries_per_record=3, network_retry_time=1,
                            max_time_per_record=60))
    h.start()
    h.add(b"r0", b"r1")
    h.connect_fail()
    h.connect_fail()
    h.advance(1)
    out = h.connect_fail()
    assert dl.Log(syslog.LOG_WARNING, f"cannot deliver a record to {PEER} after 3 tries: "
                  f"cannot connect to {PEER}: Connection refused") in out
    assert dl.Pop(1, acked=False) in out
    assert h.popped_dropped == [b"r0"] and h.queue == [b"r1"]
    assert logged(h, "a record was dropped (network_failure_action)") == 1
    assert h.core.dropped == 1 and h.core.phase is dl.Phase.WAITING
    h.advance(1)
    h.connect_ok()
    assert h.sent_payloads() == [b"r1"]


def test_forward_mode_never_drops_on_network_failure() -> None:
    h = Harness(make_config(mode="forward", max_tries_per_record=1), durable=True,
                records=[b"r0"])
    h.start()
    out = h.connect_fail()
    assert logged(h, "after 1 tries") == 1
    assert not [d for d in out if isinstance(d, dl.Pop)] and h.queue == [b"r0"]


def test_max_time_per_record_counts_from_when_the_oldest_record_was_sent() -> None:
    h = Harness(make_config(max_tries_per_record=100, max_time_per_record=5,
                            network_retry_time=1))
    connected(h, b"r0")
    h.advance(4.5)
    h.lost()  # try 1, 4.5 s after r0 went out
    assert h.connecting and not logged(h, "cannot deliver")
    h.advance(0.7)
    h.connect_fail()  # try 2, 5.2 s after: the action
    assert logged(h, f"cannot deliver a record to {PEER} after 2 tries") == 1


def test_retries_count_from_the_record_not_from_the_connection() -> None:
    h = Harness(make_config(max_tries_per_record=3, max_time_per_record=2,
                            network_retry_time=1))
    connected(h, b"r0")
    h.ack_all()
    h.advance(100)  # a long healthy idle connection
    h.add(b"r1")
    h.advance(0.5)
    h.eof()  # the server goes away with r1 unanswered: try 1
    assert logged(h, "closed the connection with 1 replies outstanding") == 1
    assert h.connecting and not logged(h, "cannot deliver")
    h.connect_fail()  # try 2
    h.advance(1)
    h.connect_fail()  # try 3: the action, on tries, not because the connection was old
    assert logged(h, f"cannot deliver a record to {PEER} after 3 tries") == 1


def test_warn_once_network_failure_warns_again_only_after_a_delivery() -> None:
    h = Harness(make_config(network_failure_action="warn_once", max_tries_per_record=1,
                            network_retry_time=1))
    h.start()
    h.add(b"r0")
    for _ in range(3):
        h.connect_fail()
        h.advance(1)
    assert logged(h, "cannot deliver a record") == 1
    assert logged(h, "1 tries: cannot connect to 127.0.0.1:60: Connection refused (further "
                  "warnings suppressed") == 1
    assert h.queue == [b"r0"]  # warn_once keeps the record
    h.connect_ok()
    h.ack_all()
    h.add(b"r1")
    h.lost()
    assert logged(h, "cannot deliver a record") == 2
    assert h.logs[-1] == (f"cannot deliver a record to {PEER} after 1 tries: connection to "
                          f"{PEER} lost: Connection reset by peer (further warnings suppressed "
                          "until a record is delivered)")


def test_a_connection_error_with_an_empty_queue_is_not_a_try() -> None:
    h = Harness(make_config(max_tries_per_record=1))
    connected(h)
    h.lost()
    assert logged(h, f"connection to {PEER} lost: Connection reset by peer") == 1
    assert not h.connecting and h.core.phase is dl.Phase.IDLE and not logged(h, "deliver")


# --------------------------------------------------------------------------------------
# The window, sequence numbers, acks


def test_the_window_holds_128_frames_and_acks_slide_it() -> None:
    h = Harness()
    recs = records(300)
    connected(h, *recs)
    conn = h.conns[0]
    assert [f.seq for f in conn.frames] == list(range(1, 129))
    assert h.core.frames_in_flight == dl.WINDOW == 128 and h.core.in_flight == 128
    out = h.reply()
    assert kinds(out) == ["Pop", "Send"]
    assert conn.frames[-1].seq == 129 and conn.frames[-1].payload == recs[128]
    h.data(b"".join(rp.pack_frame(rp.TYPE_ACK, conn.unanswered.popleft().seq)
                    for _ in range(128)))
    assert h.popped_acked == recs[:129]
    assert h.decisions[-2] == dl.Pop(128)  # one removal for the whole batch of acks
    h.ack_all()
    assert h.popped_acked == recs and not h.queue and h.core.acked == 300
    assert len({f.seq for f in conn.frames}) == 300


def test_sequence_numbers_skip_zero_when_they_wrap() -> None:
    assert dl.next_seq(0) == 1
    assert dl.next_seq(41) == 42
    assert dl.next_seq(rp.MAX_SEQ - 1) == rp.MAX_SEQ
    assert dl.next_seq(rp.MAX_SEQ) == 1


def test_sequence_numbers_keep_counting_across_connections_and_heartbeats() -> None:
    h = Harness(make_config(heartbeat_timeout=10))
    connected(h, b"r0", b"r1")
    h.lost()
    h.connect_ok()
    h.ack_all()
    h.advance(10)
    seqs = [f.seq for conn in h.conns for f in conn.frames]
    assert seqs == [1, 2, 3, 4, 5]
    assert h.conns[1].frames[-1].msg_type == rp.TYPE_HEARTBEAT


def test_a_reply_out_of_order_loses_sync() -> None:
    h = Harness()
    connected(h, *records(3))
    out = h.reply(seq=2)
    assert dl.Close(abort=True) in out
    assert logged(h, f"lost sync with {PEER}: ACK for sequence 2, expected 1") == 2
    assert h.connecting  # a failed try: the first retry is at once
    assert h.queue == records(3)


def test_a_reply_with_nothing_outstanding_loses_sync() -> None:
    h = Harness()
    connected(h)
    h.reply(seq=9)
    assert logged(h, "ACK for sequence 9, expected None") >= 1


def test_a_frame_that_is_not_a_reply_ends_the_connection() -> None:
    h = Harness()
    connected(h, b"r0")
    out = h.data(rp.pack_frame(rp.TYPE_MESSAGE, 1, b"hi"))
    assert dl.Close(abort=True) in out
    assert logged(h, f"{PEER} sent MESSAGE frame instead of a reply") >= 1


def test_acks_before_garbage_count_and_the_garbage_ends_the_connection() -> None:
    h = Harness()
    connected(h, *records(3))
    out = h.data(rp.pack_frame(rp.TYPE_ACK, 1) + b"HTTP/1.1 400 Bad Request\r\n")
    assert dl.Pop(1) in out and dl.Close(abort=True) in out
    # logged when seen, and again as the reason the try failed
    assert logged(h, f"protocol error from {PEER}: bad magic 48545450 at a frame boundary; "
                  "closing the connection") == 2
    h.connect_ok()
    assert h.sent_payloads() == records(3)[1:]


def test_replies_split_across_reads_are_matched() -> None:
    h = Harness()
    connected(h, b"r0")
    frame = rp.pack_frame(rp.TYPE_ACK, 1)
    assert h.data(frame[:5]) == []
    assert kinds(h.data(frame[5:])) == ["Pop"]


def test_after_a_disconnect_unacked_records_go_again_in_order_before_newer_ones() -> None:
    h = Harness()
    recs = records(7)
    connected(h, *recs[:5])
    h.reply()
    h.reply()
    h.lost()
    h.add(*recs[5:])
    h.connect_ok()
    assert h.sent_payloads(h.conns[1]) == recs[2:]
    h.ack_all()
    assert h.popped_acked == recs


# --------------------------------------------------------------------------------------
# Error replies: kept records, draining, requeue


def test_disk_full_warn_once_keeps_the_record_and_drains_the_connection() -> None:
    h = Harness(make_config(disk_full_action="warn_once", network_retry_time=3))
    recs = records(200)
    connected(h, *recs)
    first = h.conns[0]
    out = h.reply(rp.TYPE_DISKFULL, b"disk full")
    assert kinds(out) == ["Log"]
    assert h.logs[-1] == (f"{PEER} did not store a record: DISKFULL (disk full) (further "
                          "warnings suppressed until a record is delivered)")
    h.reply(rp.TYPE_DISKFULL, b"disk full")  # warned once only
    assert logged(h, "DISKFULL") == 1
    for _ in range(125):
        assert "Send" not in kinds(h.reply(rp.TYPE_DISKFULL))  # draining: nothing more
    assert len(first.frames) == 128 and not first.closed
    out = h.reply(rp.TYPE_DISKFULL)  # the last outstanding reply: now it closes
    assert dl.Close(abort=False) in out
    h.closed()
    assert h.core.phase is dl.Phase.WAITING and h.core.deadline() == h.clock.now + 3
    assert h.queue == recs  # nothing was dequeued
    h.advance(3)
    h.connect_ok()
    assert h.sent_payloads(h.conns[1]) == recs[:128]


def test_a_refused_record_is_moved_behind_the_later_ones_the_server_stored() -> None:
    h = Harness(make_config(disk_full_action="warn_once"))
    recs = records(5)
    connected(h, *recs)
    h.reply(rp.TYPE_DISKFULL)
    out = h.reply()
    assert kinds(out) == ["Requeue", "Log", "Pop"]
    assert out[0] == dl.Requeue(1)
    assert h.logs[-1] == f"1 refused records will be retried after later ones that {PEER} stored"
    h.ack_all()
    assert h.popped_acked == recs[1:] and h.queue == [recs[0]]
    h.closed()
    h.advance(1)
    h.connect_ok()
    assert h.sent_payloads(h.conns[1]) == [recs[0]]


def test_disk_error_with_syslog_drops_the_refused_record() -> None:
    h = Harness(make_config(disk_error_action="syslog"))
    recs = records(3)
    connected(h, *recs)
    out = h.reply(rp.TYPE_DISKERROR, b"disk write error")
    assert kinds(out) == ["Log", "Pop", "Log"]
    assert out[1] == dl.Pop(1, acked=False)
    assert h.logs[-1] == "a record was dropped (disk_error_action)"
    h.ack_all()
    assert h.popped_dropped == recs[:1] and h.popped_acked == recs[1:]


def test_a_dequeued_refusal_after_kept_ones_drops_the_right_record() -> None:
    h = Harness(make_config(disk_full_action="warn_once", disk_error_action="syslog"))
    recs = records(3)
    connected(h, *recs)
    h.reply(rp.TYPE_DISKFULL)  # r0 kept
    h.reply(rp.TYPE_DISKERROR)  # r1 dropped: r0 moves behind first
    assert h.popped_dropped == [recs[1]] and h.queue == [recs[2], recs[0]]
    h.reply()
    assert h.popped_acked == [recs[2]] and h.queue == [recs[0]]


def test_disk_low_stores_the_record_and_runs_its_action() -> None:
    h = Harness(make_config(disk_low_action="exec /usr/local/bin/low"))
    connected(h, b"r0")
    out = h.reply(rp.TYPE_DISKLOW)
    assert kinds(out) == ["Pop", "Log", "Exec"]
    assert h.execs == [("/usr/local/bin/low", f"{PEER} reports DISKLOW")]
    assert h.popped_acked == [b"r0"]


def test_unknown_replies_are_classified_by_their_bits() -> None:
    h = Harness(make_config(generic_error_action="warn_once", generic_warning_action="syslog"))
    connected(h, b"r0", b"r1", b"r2")
    h.reply(0x60000003, b"quota\nexceeded")
    h.reply(0x50000009, b"nearly")
    h.reply(0x40000077)
    assert logged(h, f"{PEER} did not store a record: ERROR(0x60000003) (quota?exceeded)") == 1
    assert logged(h, f"{PEER} reports WARNING(0x50000009) (nearly)") == 1
    assert logged(h, "REPLY(0x40000077) (unknown reply type, taken as stored)") == 1
    assert h.popped_acked == [b"r1", b"r2"] and h.queue == [b"r0"]


def test_an_error_reply_to_a_heartbeat_runs_the_action_and_drains() -> None:
    h = Harness(make_config(heartbeat_timeout=10, disk_full_action="syslog"))
    connected(h)
    h.advance(10)
    out = h.reply(rp.TYPE_DISKFULL)
    assert "Pop" not in kinds(out) and dl.Close(abort=False) in out
    assert logged(h, "did not store a record: DISKFULL") == 1


# --------------------------------------------------------------------------------------
# ENDING, EOF, loss, timeouts, heartbeats


def test_ending_reconnects_at_once() -> None:
    h = Harness()
    recs = records(4)
    connected(h, *recs)
    h.reply()
    out = h.data(rp.pack_frame(rp.TYPE_ENDING, 0))
    assert dl.Close(abort=False) in out
    assert logged(h, f"{PEER} ended the connection; will reconnect") == 1
    assert "remote_ended=yes" in h.core.state_line()
    h.closed()
    assert logged(h, f"{PEER} is shutting down (ENDING)") == 1
    h.connect_ok()
    assert h.sent_payloads(h.conns[1]) == recs[1:]
    assert "remote_ended=no" in h.core.state_line()


def test_ending_with_stop_exits_1() -> None:
    h = Harness(make_config(remote_ending_action="stop"))
    connected(h, b"r0")
    out = h.data(rp.pack_frame(rp.TYPE_ENDING, 0))
    assert out[-1] == dl.Exit(1)
    assert h.logs[-1] == f"{PEER} ended the connection; exiting (remote_ending_action = stop)"
    assert h.core.deadline() is None and h.add(b"r1") == [] and h.lost() == []


def test_the_end_of_a_connection_is_judged_by_what_is_outstanding() -> None:
    h = Harness()
    connected(h, b"r0")
    h.data(rp.pack_frame(rp.TYPE_ACK, 1)[:9])
    out = h.eof()
    assert dl.Close(abort=True) in out
    assert logged(h, f"{PEER} closed the connection in the middle of a frame") == 1
    h.connect_ok()
    h.add(b"r1")
    h.eof()
    assert logged(h, f"{PEER} closed the connection with 2 replies outstanding") == 1
    h.advance(1)  # the second failed try in a row waits network_retry_time
    h.connect_ok()
    h.ack_all()
    out = h.eof()  # nothing outstanding: not a failure
    assert out[0] == dl.Close(abort=False)
    h.closed()
    assert logged(h, f"{PEER} closed the connection") == 3
    assert h.core.phase is dl.Phase.IDLE and not h.connecting


def test_no_reply_within_max_time_per_record() -> None:
    h = Harness(make_config(max_time_per_record=4))
    connected(h, b"r0")
    h.advance(3.9)
    assert h.conn is not None
    out = h.advance(0.1)
    assert dl.Close(abort=True) in out
    assert h.logs[-3] == f"no reply from {PEER} for a record within 4 s"
    # 4 s since r0 went out is max_time_per_record: the action, at the first try
    assert h.logs[-2].startswith(f"cannot deliver a record to {PEER} after 1 tries")


def test_heartbeats_on_an_idle_connection_and_their_timeout() -> None:
    h = Harness(make_config(heartbeat_timeout=30, max_time_per_record=5))
    connected(h, b"r0")
    h.advance(2)
    h.reply()
    h.advance(29.9)
    assert len(h.conns[0].frames) == 1
    h.advance(0.1)  # 30 s after the last reply
    hb = h.conns[0].frames[-1]
    assert (hb.msg_type, hb.seq, hb.payload) == (rp.TYPE_HEARTBEAT, 2, b"")
    h.reply()
    assert h.core.acked == 1
    h.advance(30)
    assert h.conns[0].frames[-1].msg_type == rp.TYPE_HEARTBEAT
    h.advance(5)
    assert logged(h, f"no reply from {PEER} for a heartbeat within 5 s") == 1


def test_no_heartbeats_in_ascii_format() -> None:
    h = Harness(make_config(heartbeat_timeout=1, format="ascii"))
    connected(h)
    assert h.core.deadline() is None


# --------------------------------------------------------------------------------------
# Flow control


def test_a_blocked_transport_stops_sending_until_writable() -> None:
    h = Harness(make_config(max_time_per_record=5))
    recs = records(200)
    h.block_writes = True
    connected(h, *recs)
    h.ack_all()  # acks still count while writes are held back
    assert len(h.popped_acked) == 128 and len(h.conns[0].frames) == 128
    assert h.core.deadline() == pytest.approx(h.clock.now + 5)
    out = h.writable()
    assert kinds(out) == ["Send"] and len(h.conns[0].frames) == 200


def test_a_transport_blocked_for_max_time_per_record_fails_the_try() -> None:
    h = Harness(make_config(max_time_per_record=5))
    h.block_writes = True
    connected(h, b"r0")
    out = h.advance(5)
    assert dl.Close(abort=True) in out
    assert f"sending to {PEER} timed out" in h.logs


# --------------------------------------------------------------------------------------
# The ascii format


def test_ascii_records_count_as_delivered_once_the_transport_took_them() -> None:
    h = Harness(make_config(format="ascii"))
    recs = records(300)
    connected(h, *recs)
    assert h.conns[0].lines == recs and h.popped_acked == recs
    assert [k for k in kinds(h.decisions) if k in ("Send", "Pop")] == ["Send", "Pop"] * 3


def test_ascii_records_held_back_by_the_transport_are_not_delivered_yet() -> None:
    h = Harness(make_config(format="ascii"))
    h.block_writes = True
    connected(h, *records(3))
    assert not h.popped_acked and h.data(b"anything at all") == []
    h.writable()
    assert h.popped_acked == records(3)


def test_ascii_exits_on_a_connection_error() -> None:
    h = Harness(make_config(format="ascii"))
    h.block_writes = True
    connected(h, b"r0")
    out = h.lost()
    assert out[-1] == dl.Exit(1)
    assert h.logs[-1] == (f"connection to {PEER} lost: Connection reset by peer "
                          "(format = ascii: exiting)")


# --------------------------------------------------------------------------------------
# Forward mode: only durable records go out


def test_forward_mode_sends_a_record_only_once_it_is_synced() -> None:
    h = Harness(make_config(mode="forward"), durable=True, records=[b"old"])
    h.start()
    h.add(b"r0")
    assert h.synced == 1 and h.core.deadline() == pytest.approx(h.clock.now + dl.SYNC_DELAY)
    assert kinds(h.advance(dl.SYNC_DELAY)) == ["Sync"]
    h.connect_ok()
    assert h.sent_payloads() == [b"old", b"r0"]
    out = h.add(b"r1")  # the window has room only r1 could fill: synced at once
    assert kinds(out) == ["Sync", "Send"]


def test_forward_mode_waits_for_the_sync_delay_when_the_window_is_full() -> None:
    h = Harness(make_config(mode="forward"), durable=True)
    connected(h, *records(130))
    assert len(h.conns[0].frames) == 128
    out = h.add(b"late")
    assert out == [] and h.synced == 130
    h.advance(dl.SYNC_DELAY)
    assert h.synced == 131
    h.ack_all()
    assert h.sent_payloads()[-1] == b"late"


# --------------------------------------------------------------------------------------
# Suspend, resume, reload, signals


def test_suspend_closes_and_sends_nothing_until_resumed() -> None:
    h = Harness(make_config(disk_full_action="suspend"))
    connected(h, *records(10))
    out = h.reply(rp.TYPE_DISKFULL, b"disk full")
    assert dl.Close(abort=False) in out
    assert logged(h, "suspending remote logging (SIGUSR2 or SIGHUP resumes)") == 1
    h.closed()
    h.add(b"more")
    h.advance(3600)
    assert not h.connecting
    assert "queue_size=11 in_flight=0 connected=no suspended=yes" in h.core.state_line()
    out = h.apply(h.core.resume())
    assert out[0] == dl.Log(syslog.LOG_NOTICE, "SIGUSR2: resuming remote logging")
    assert h.connecting


@pytest.mark.parametrize(("kind", "level"), [("single", "1"), ("halt", "0")])
def test_single_and_halt_ask_init_and_suspend(kind: str, level: str) -> None:
    h = Harness(make_config(disk_full_action=kind))
    connected(h, b"r0", b"r1")
    out = h.reply(rp.TYPE_DISKFULL)
    assert h.runlevels == [level] and h.core.suspended and dl.Close(abort=False) in out
    assert h.logs[-1].endswith(f"; asking init for runlevel {level}")
    assert h.queue == [b"r0", b"r1"]


def test_reload_reconnects_to_the_new_server_at_once() -> None:
    h = Harness()
    connected(h, b"r0")
    out = h.apply(h.core.reload(make_config(port=61)))
    assert out == [dl.Log(syslog.LOG_INFO, "configuration reloaded; server 127.0.0.1:61"),
                   dl.Close(abort=False)]
    h.closed()
    h.connect_ok()
    assert h.logs[-1] == "connected to 127.0.0.1:61"
    assert h.sent_payloads(h.conns[1]) == [b"r0"]


def test_reload_cuts_a_pause_short_and_forgets_failures() -> None:
    h = Harness(make_config(network_retry_time=60, max_tries_per_record=3))
    h.start()
    h.add(b"r0")
    h.connect_fail()
    h.connect_fail()
    assert h.core.phase is dl.Phase.WAITING
    h.apply(h.core.reload(make_config(network_retry_time=60, max_tries_per_record=3)))
    assert h.connecting
    h.connect_fail()
    assert h.connecting  # failures were forgotten: this is the first, retried at once


def test_a_connection_made_to_the_old_server_during_a_reload_is_not_used() -> None:
    h = Harness()
    h.start()
    h.add(b"r0")
    h.apply(h.core.reload(make_config(port=61)))
    out = h.connect_ok()  # the attempt started before the reload
    assert "Send" not in kinds(out) and dl.Close(abort=False) in out
    assert h.logs[-1] == f"connected to {PEER}"
    h.closed()
    h.connect_ok()
    assert h.sent_payloads(h.conns[1]) == [b"r0"]


def test_terminate_exits_0_and_ends_all_activity() -> None:
    h = Harness()
    connected(h, b"r0")
    assert h.apply(h.core.terminate("SIGTERM: exiting")) == [
        dl.Log(syslog.LOG_INFO, "SIGTERM: exiting"), dl.Exit(0)]
    assert h.core.deadline() is None
    assert h.core.data_received(rp.pack_frame(rp.TYPE_ACK, 1)) == []
    assert h.core.tick() == [] and h.core.connection_lost("reset") == []


# --------------------------------------------------------------------------------------
# Overflow and queue errors


def test_overflow_counts_every_loss_and_acts_at_most_once_a_second() -> None:
    h = Harness(make_config(queue_depth=5))
    h.apply(h.core.overflow(45))
    h.advance(0.5)
    h.apply(h.core.overflow(10))
    assert h.logs == ["queue is full (5 records); 45 records dropped"]
    h.advance(0.5)
    h.apply(h.core.overflow(1))
    assert h.logs[-1] == "queue is full (5 records); 11 records dropped"
    assert h.core.dropped == 56


def test_a_queue_error_runs_queue_error_action() -> None:
    h = Harness(make_config(queue_error_action="stop"))
    out = h.apply(h.core.queue_error("cannot fsync queue_file '/q': I/O error; 3 records lost",
                                     3))
    assert out[-1] == dl.Exit(1) and h.core.dropped == 3
    assert h.logs == ["cannot fsync queue_file '/q': I/O error; 3 records lost; exiting "
                      "(queue_error_action = stop)"]


# --------------------------------------------------------------------------------------
# The end of input


def test_end_of_input_with_everything_delivered_exits_0() -> None:
    h = Harness()
    connected(h, b"r0", b"r1")
    h.apply(h.core.input_ended())
    assert h.exit_code is None
    h.reply()
    h.reply()
    assert h.exit_code == 0 and h.logs[-1] == "end of input; every record was delivered; exiting"


def test_end_of_input_gives_up_once_nothing_moves_for_every_try_of_a_record() -> None:
    h = Harness(make_config(max_tries_per_record=2, max_time_per_record=3,
                            network_retry_time=1))
    h.start()
    h.add(b"r0")
    h.apply(h.core.input_ended())
    h.advance(6.9)  # 2 tries x 3 s + 1 s
    assert h.exit_code is None
    h.advance(0.1)
    assert h.exit_code == 1 and h.logs[-1] == "end of input; 1 records could not be delivered"


def test_end_of_input_in_forward_mode_keeps_the_rest_for_the_next_start() -> None:
    h = Harness(make_config(mode="forward", queue_file="/var/spool/q"), durable=True,
                records=[b"r0"])
    h.start()
    h.apply(h.core.input_ended())
    h.advance(100)
    assert h.exit_code == 0
    assert h.logs[-1] == "end of input; 1 records stay in /var/spool/q for the next start"


def test_end_of_bad_input_exits_1_and_a_suspended_plugin_does_not_wait() -> None:
    h = Harness()
    h.start()
    h.apply(h.core.input_ended(True))
    assert h.exit_code == 1 and h.logs[-1] == "exiting after bad input; 0 records undelivered"
    h = Harness(make_config(disk_full_action="suspend"))
    connected(h, b"r0")
    h.reply(rp.TYPE_DISKFULL)
    h.apply(h.core.input_ended())
    assert h.exit_code == 1


# --------------------------------------------------------------------------------------
# Smaller pieces


def test_events_from_no_connection_are_ignored() -> None:
    h = Harness()
    h.start()
    assert h.data(rp.pack_frame(rp.TYPE_ACK, 1)) == []
    assert h.eof() == [] and h.lost() == [] and h.writable() == []
    assert h.apply(h.core.connection_lost(None)) == [] and h.apply(h.core.closed()) == []


def test_state_line_counts() -> None:
    h = Harness(make_config(disk_error_action="syslog"))
    connected(h, b"r0", b"r1", b"r2")
    h.reply()
    h.reply(rp.TYPE_DISKERROR)
    assert h.core.state_line() == (
        f"state: server={PEER} mode=immediate queue_size=1 in_flight=1 connected=yes "
        "suspended=no remote_ended=no transport_ok=yes received=3 sent=3 acked=1 dropped=1")


def test_action_policy() -> None:
    policy = ActionPolicy()

    def decide(kind: str, exe: str | None = None) -> Outcome:
        return policy.decide("disk_full_action", Action(kind, exe), "m")

    assert decide("ignore") == Outcome(True)
    assert decide("syslog") == Outcome(True, log=(syslog.LOG_WARNING, "m"))
    assert decide("exec", "/bin/x") == Outcome(True, log=(syslog.LOG_WARNING,
                                                          "m; running /bin/x"), run=("/bin/x", "m"))
    first = decide("warn_once")
    assert not first.dequeue and first.log is not None and decide("warn_once") == Outcome(False)
    assert decide("warn_once_continue") == Outcome(True)  # same setting: already warned
    policy.forget_warnings()
    assert decide("warn_once_continue").log is not None
    assert decide("reconnect") == Outcome(False, log=(syslog.LOG_NOTICE, "m; will reconnect"))
    assert decide("suspend").suspend
    single, halt = decide("single"), decide("halt")
    assert (single.runlevel, halt.runlevel, single.suspend, halt.dequeue) == ("1", "0", True,
                                                                            False)
    stop = decide("stop")
    assert stop.stop and stop.log == (syslog.LOG_ERR, "m; exiting (disk_full_action = stop)")
    with pytest.raises(ValueError, match="unknown action"):
        decide("explode")


def test_prepare_skips_eoe_and_cuts_to_the_frame_limit() -> None:
    long = b"type=USER msg=" + b"x" * rp.MAX_PAYLOAD
    accepted, cut = prepare([b"", b"type=EOE msg=audit(1.0:1): ", b"node=n type=EOE msg=",
                             b"type=USER msg=a", long])
    assert accepted == [b"type=USER msg=a", long[:rp.MAX_PAYLOAD]] and cut == 1
