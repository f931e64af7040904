"""Value rules shared by the parsers of the C audit package's `key = value` files
(auditd.conf, plugins.d/*.conf, audispd.conf, audisp-remote.conf)."""

from __future__ import annotations

from typing import Final

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Case-fold like strcasecmp() in the C locale: ASCII letters only.

    str.lower() would let non-ASCII look-alikes (e.g. KELVIN SIGN) match keywords.
    """
    return text.translate(_ASCII_LOWER)


def bounded_uint(value: str, low: int, high: int) -> int:
    """An unsigned decimal within [low, high] (high at most INT_MAX-sized); ValueError names
    the value and the bound it breaks. Length is checked before int() so that a huge digit
    string costs nothing."""
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"value {value!r} should only be digits")
    if len(value.lstrip("0")) > 10 or int(value) > high:
        raise ValueError(f"value {value} is too large (maximum {high})")
    number = int(value)
    if number < low:
        raise ValueError(f"value {number} is too small (minimum {low})")
    return number
