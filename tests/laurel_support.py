"""Run laurel 0.5.1 and compare its events with ours, field by field.

`compare(laurel_events, our_events)` returns every difference that is not one of the
deliberate ones listed in the README ("Differences from laurel"); each allowance below
names the README item it stands for.  Events laurel did not write (it rejects records it
cannot parse) are not compared; every event it wrote must be among ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

LAUREL = shutil.which("laurel") or "/usr/sbin/laurel"
UNAVAILABLE = None if os.access(LAUREL, os.X_OK) else "laurel 0.5.1 is not installed"

CONFIG = """directory = "{directory}"
[auditlog]
file = "{file}"
size = 1000000000
[translate]
universal = true
user-db = true
[enrich]
execve-env = []
{extra}
"""


def laurel_config(directory: Path, file: str = "laurel.log", extra: str = "") -> Path:
    path = directory / "laurel.toml"
    path.write_text(CONFIG.format(directory=directory, file=file, extra=extra))
    return path


def run_laurel(lines: bytes, directory: Path, extra: str = "") -> list[dict[str, Any]]:
    """laurel's events for string-format `lines` fed to its stdin, as it runs as a plugin."""
    config = laurel_config(directory, extra=extra)
    subprocess.run([LAUREL, "-c", str(config)], input=lines, capture_output=True, check=True,
                   timeout=120)
    out = directory / "laurel.log"
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def _hex_decoded(ours: Any) -> str | None:
    """What laurel makes of a value it wrongly takes for hex (README: "hex-decoding")."""
    if not isinstance(ours, str) or len(ours) % 2 or not ours:
        return None
    try:
        raw = bytes.fromhex(ours)
    except ValueError:
        return None
    out = raw.decode("utf-8", "surrogateescape")
    return "".join(
        f"%{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
        else f"%{ord(c):02x}" if ord(c) < 0x20 or c in "%+\x7f" else c
        for c in out
    )


def _proctitle_like_laurel(argv: list[str]) -> list[str]:
    """laurel's split of PROCTITLE: an empty argument is glued, with its NUL, to the next
    (README: "empty arguments")."""
    raw = b"\0".join(urllib.parse.unquote_to_bytes(a) for a in argv)
    out, prev = [], 0
    for i in range(len(raw) + 1):
        if (i == len(raw) or raw[i] == 0) and i > prev:
            out.append(raw[prev:i])
            prev = i + 1
    from auditpy.events.encode import text

    return [text(p) for p in out]


def _diff(laurel: Any, ours: Any, path: str, out: list[str]) -> None:
    if isinstance(laurel, dict) and isinstance(ours, dict):
        for key in laurel:
            if key not in ours:
                if key == "saddr" and "SADDR" in ours:
                    continue  # README: "local socket addresses"
                out.append(f"{path}/{key}: missing in ours")
                continue
            _diff(laurel[key], ours[key], f"{path}/{key}", out)
        for key in ours:
            if key in laurel:
                continue
            if key == "pid" and path.endswith("/PPID"):
                continue  # README: "PPID.pid"
            if key == "SADDR" and "saddr" in laurel:
                continue  # README: "local socket addresses"
            if key in ("INCOMPLETE", "SYSTEMD_INFO"):
                continue  # README: "incomplete events", "systemd unit"
            if key in ("PPID", "PID", "LABELS", "CONTAINER_INFO", "ENV"):
                continue  # README: "lineage from the stream" (laurel had no entry)
            out.append(f"{path}/{key}: only in ours")
        return
    if isinstance(laurel, list) and isinstance(ours, list):
        if path.endswith("/LABELS"):
            if sorted(laurel) != sorted(ours):
                out.append(f"{path}: {laurel} != {ours}")
            return
        if path.endswith("PROCTITLE/ARGV") and laurel == _proctitle_like_laurel(ours):
            return
        if len(laurel) != len(ours):
            out.append(f"{path}: {json.dumps(laurel)[:300]} != {json.dumps(ours)[:300]}")
            return
        for i, (a, b) in enumerate(zip(laurel, ours, strict=True)):
            _diff(a, b, f"{path}[{i}]", out)
        return
    if laurel == ours and type(laurel) is type(ours):
        return
    if _hex_decoded(ours) == laurel:
        return  # README: "hex-decoding"
    out.append(f"{path}: laurel {json.dumps(laurel)[:300]} ours {json.dumps(ours)[:300]}")


def compare(laurel: list[dict[str, Any]], ours: list[dict[str, Any]],
            allow_lineage: bool = False) -> tuple[int, list[str]]:
    """(events compared, unexplained differences)."""
    by_id: dict[tuple[str | None, str], dict[str, Any]] = {}
    for event in ours:
        by_id.setdefault((event.get("NODE"), event["ID"]), event)
    # README: "failed execve": laurel takes a failed execve for the process's exec.
    failed_execs = {
        e["ID"] for e in laurel
        if isinstance(e.get("SYSCALL"), dict) and e["SYSCALL"].get("success") == "no"
        and e["SYSCALL"].get("SYSCALL") in ("execve", "execveat")
    }
    problems: list[str] = []
    for event in laurel:
        sc = event.get("SYSCALL")
        if isinstance(sc, dict):
            for key in ("PID", "PPID"):
                info = sc.get(key)
                if isinstance(info, dict) and info.get("EVENT_ID") in failed_execs:
                    mine_sc = by_id.get((event.get("NODE"), event["ID"]), {}).get("SYSCALL")
                    if isinstance(mine_sc, dict):
                        sc = dict(sc)
                        if key in mine_sc:
                            sc[key] = mine_sc[key]
                        else:
                            del sc[key]
                        event = {**event, "SYSCALL": sc}
        key = (event.get("NODE"), event["ID"])
        mine = by_id.get(key)
        if mine is None:
            problems.append(f"{key}: laurel wrote it, we did not")
            continue
        diffs: list[str] = []
        _diff(event, mine, "", diffs)
        if allow_lineage:
            # Live runs: laurel asks /proc for unknown processes at its own pace, so the
            # context of processes that exited meanwhile may differ (README: "lineage").
            diffs = [d for d in diffs if "/PPID" not in d and "/CONTAINER_INFO" not in d]
        problems.extend(f"{event['ID']}{d}" for d in diffs)
    return len(laurel), problems
