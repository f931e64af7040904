"""The fast JSON lines (auditpy.events.render) are the generic path's bytes, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.config.jsonout import JsonConfig
from auditpy.events.encode import EncodeOptions, Encoder, Names
from auditpy.events.render import LineRenderer
from auditpy.jsonout.pipeline import NO_ACCESS, JsonPipeline, ProcAccess
from tests.test_events_assemble import corpus_lines
from tests.test_laurel_compat import MemorySink

DATA = Path(__file__).parent / "data"

NAMES = Names(lambda uid: {0: "root", 1000: "al\"ice"}.get(uid), lambda gid: {0: "root"}.get(gid))


def lines_of(lines: list[bytes], config: JsonConfig, generic: bool,
             access: ProcAccess = NO_ACCESS) -> list[bytes]:
    sink = MemorySink()
    pipe = JsonPipeline(config, sink=sink, clock=None, access=access)
    pipe.encoder.names = NAMES
    pipe.renderer = LineRenderer(pipe.encoder)
    if generic:
        pipe.renderer.layout = lambda event: None  # type: ignore[method-assign]
    for line in lines:
        pipe.add_line(line)
    pipe.close()
    return sink.lines


@pytest.mark.parametrize("translate", [False, True])
@pytest.mark.parametrize("source", ["corpus", "samples"])
def test_fast_lines_equal_generic_lines(source: str, translate: bool) -> None:
    if source == "corpus":
        lines = corpus_lines()
    else:
        lines = (DATA / "laurel_samples.log").read_bytes().splitlines(keepends=True)
    config = JsonConfig(translate_universal=translate, translate_userdb=translate,
                        label_keys=frozenset({"corpus-exec"}),
                        propagate_labels=frozenset({"corpus-exec"}))
    # three times: records rendered once (not cached), a second time (cached then) and
    # taken from the cache, with the caches of shapes and line tails
    fast = lines_of(lines * 3, config, generic=False)
    assert fast == lines_of(lines * 3, config, generic=True)
    assert len(fast) >= len(lines) // 6


def test_a_record_is_cached_the_second_time_it_is_rendered() -> None:
    """Bodies that never repeat leave nothing behind: the first rendering of a body is not
    cached (nor the shape and line of its event), the second is."""
    renderer = LineRenderer(Encoder(EncodeOptions(), NAMES))
    body = b'cwd="/root"'
    first = renderer.record(1307, body)
    assert first.serial < 0 and renderer.misses == 1
    second = renderer.record(1307, body)
    assert second.serial > 0 and second.frag == first.frag and renderer.misses == 2
    assert renderer.record(1307, body) is second and renderer.misses == 2
    for n in range(3000):  # more new bodies than any cache holds
        assert renderer.record(1307, b'cwd="/tmp/%d"' % n).serial < 0
    assert renderer.record(1307, body) is second
    assert len(renderer._caches[1307]) == 1
    sink = MemorySink()
    pipe = JsonPipeline(JsonConfig(), sink=sink, clock=None, access=NO_ACCESS)
    for n in range(200):
        pipe.add_line(b'type=CWD msg=audit(1700000000.100:%d): cwd="/tmp/%d"\n' % (n, n))
        pipe.add_line(b"type=EOE msg=audit(1700000000.100:%d): \n" % n)
    pipe.close()
    assert len(sink.lines) == 200
    assert pipe.renderer._shapes == {} and pipe.renderer._tails == {}


_hex = st.integers(0, 2**64 - 1).map(lambda n: f"{n:x}")
_dec = st.integers(0, 2**40).map(str)
_enc = st.one_of(
    st.just("(null)"), st.just("?"),
    st.text("abc/.-_\\%+", min_size=0, max_size=6).map(lambda s: f'"{s}"'),
    st.binary(min_size=1, max_size=6).map(lambda b: b.hex().upper()),
    st.text("xyz", min_size=1, max_size=3),
)


@st.composite
def syscall_bodies(draw: st.DrawFn) -> bytes:
    ids = " ".join(f"{n}={draw(st.sampled_from(['0', '1000', '4294967295', '7']))}" for n in (
        "auid", "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid"))
    per = f"per={draw(_hex)} " if draw(st.booleans()) else ""
    subj = f" subj={draw(_enc)}" if draw(st.booleans()) else ""
    body = (
        f"arch={draw(st.sampled_from(['c000003e', '40000003', 'C00000B7', '1234']))} "
        f"syscall={draw(st.integers(0, 500))} {per}success={draw(st.sampled_from(['yes', 'no']))}"
        f" exit={draw(st.integers(-4095, 2**40))} a0={draw(_hex)} a1={draw(_hex)} "
        f"a2={draw(_hex)} a3={draw(_hex)} items={draw(_dec)} ppid={draw(_dec)} pid={draw(_dec)} "
        f"{ids} tty={draw(_enc)} ses={draw(_dec)} comm={draw(_enc)} exe={draw(_enc)}{subj} "
        f"key={draw(_enc)}"
    )
    return body.encode()


@settings(max_examples=300)
@given(body=syscall_bodies(), translate=st.booleans())
def test_fast_syscall_record_equals_generic(body: bytes, translate: bool) -> None:
    encoder = Encoder(EncodeOptions(universal=translate, userdb=translate), NAMES)
    renderer = LineRenderer(encoder)
    fast = renderer._syscall(body, 1)
    assert fast is not None, body
    generic = renderer._generic(1300, body, 2)
    assert fast[:3] == generic[:3]  # type, fragment, facts (the serials differ)
