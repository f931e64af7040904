"""libauparse as the reference for event boundaries, through ctypes.

`auparse_events(path)` reads a log file with AUSOURCE_FILE and returns each event as the
list of (type, serial, record text) that ``auparse_next_event`` hands out.  `UNAVAILABLE`
says why the library cannot be used (tests then skip with that reason).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

AUSOURCE_FILE = 1


def _load() -> ctypes.CDLL | str:
    try:
        ap = ctypes.CDLL("libauparse.so.0")
    except OSError as exc:
        return f"libauparse.so.0 is not loadable: {exc}"
    ap.auparse_init.restype = ctypes.c_void_p
    ap.auparse_init.argtypes = [ctypes.c_int, ctypes.c_void_p]
    for fn in ("auparse_next_event", "auparse_first_record", "auparse_next_record",
               "auparse_get_type"):
        getattr(ap, fn).restype = ctypes.c_int
        getattr(ap, fn).argtypes = [ctypes.c_void_p]
    ap.auparse_get_serial.restype = ctypes.c_ulong
    ap.auparse_get_serial.argtypes = [ctypes.c_void_p]
    ap.auparse_get_record_text.restype = ctypes.c_char_p
    ap.auparse_get_record_text.argtypes = [ctypes.c_void_p]
    ap.auparse_destroy.argtypes = [ctypes.c_void_p]
    return ap


_LIB = _load()
UNAVAILABLE: str | None = _LIB if isinstance(_LIB, str) else None


def auparse_events(path: Path) -> list[list[tuple[int, int, bytes]]]:
    """Events of a log file as libauparse groups them, in the order it returns them."""
    assert not isinstance(_LIB, str), _LIB
    ap = _LIB
    au = ap.auparse_init(AUSOURCE_FILE, str(path).encode())
    if not au:
        raise OSError(f"auparse_init failed for {path}")
    out: list[list[tuple[int, int, bytes]]] = []
    try:
        while ap.auparse_next_event(au) > 0:
            records = []
            rc = ap.auparse_first_record(au)
            while rc > 0:
                text = ap.auparse_get_record_text(au) or b""
                records.append((ap.auparse_get_type(au), ap.auparse_get_serial(au), text))
                rc = ap.auparse_next_record(au)
            out.append(records)
    finally:
        ap.auparse_destroy(au)
    return out
