"""Field-by-field comparison with laurel 0.5.1 on the same records (offline).

Both read the same string-format lines: laurel on its stdin as a plugin, ours through the
JSON pipeline.  Every event laurel writes must be among ours with the same fields and values,
apart from the differences listed in the README (tests/laurel_support.py allows exactly
those).  The live comparison under one pyaudispd is tests/kernel/test_json_output.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditpy.config.jsonout import JsonConfig
from auditpy.jsonout.pipeline import JsonPipeline, ProcAccess
from auditpy.jsonout.sinks import Sink
from tests.laurel_support import UNAVAILABLE, compare, run_laurel
from tests.test_events_assemble import corpus_lines

pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

DATA = Path(__file__).parent / "data"


class MemorySink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []

    def describe(self) -> str:
        return "memory"

    def write(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)


def ours(lines: bytes, **config: Any) -> list[dict[str, Any]]:
    sink = MemorySink()
    pipeline = JsonPipeline(
        JsonConfig(translate_universal=True, translate_userdb=True, execve_env=(), **config),
        # A dispatcher stream (with EOE), read as laurel reads it: live, no time passing.
        sink=sink, clock=lambda: 0.0, access=ProcAccess(),
    )
    for line in lines.splitlines(keepends=True):
        pipeline.add_line(line)
    pipeline.close()
    return [json.loads(line) for line in sink.lines]


def test_corpus_matches_laurel(tmp_path: Path) -> None:
    lines = b"".join(corpus_lines())
    laurel = run_laurel(lines, tmp_path)
    compared, problems = compare(laurel, ours(lines))
    assert compared >= 110
    assert problems == []


#: Hand-made records of many kinds (odd bytes, node=, ENRICHED input, AVC, split EXECVE).
SAMPLES = (DATA / "laurel_samples.log").read_bytes()


def test_samples_match_laurel(tmp_path: Path) -> None:
    laurel = run_laurel(SAMPLES, tmp_path)
    compared, problems = compare(laurel, ours(SAMPLES))
    assert compared >= 12
    assert problems == []


def test_real_workload_log_matches_laurels_live_output() -> None:
    """A log captured by tests/kernel/test_json_output.py (a STIG-like rule set over execs, a
    compile, file and socket activity, auditctl -m) and what laurel wrote for it live, as a
    plugin of the same pyaudispd.  The log has no EOE records, so it is grouped as a log
    (LOGIN alone); laurel's context from /proc (PPID of processes from before the rules) is
    not comparable offline."""
    lines = (DATA / "json_workload.log").read_bytes()
    laurel = [json.loads(line)
              for line in (DATA / "json_workload.laurel.jsonl").read_text().splitlines()]
    sink = MemorySink()
    pipeline = JsonPipeline(
        JsonConfig(translate_universal=True, translate_userdb=True, execve_env=()),
        sink=sink, clock=None, access=ProcAccess(None, None, None, None),
    )
    for line in lines.splitlines(keepends=True):
        pipeline.add_line(line)
    pipeline.close()
    mine = [json.loads(line) for line in sink.lines]
    laurel = [e for e in laurel if "LOGIN" not in e]  # a log splits LOGIN from its SYSCALL
    compared, problems = compare(laurel, mine, allow_lineage=True)
    assert compared >= 130
    assert problems == []
