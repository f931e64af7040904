"""The Prometheus text exposition format (version 0.0.4): what a scrape of pyauditd returns.

Pure: metrics in, text out. Names follow Prometheus conventions: counters end in
``_total``, every family has HELP and TYPE lines, label values are escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)
                                  and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def exposition(families: Iterable[Family]) -> str:
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help(family.help)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            if labels:
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{family.name}{{{body}}} {_number(value)}")
            else:
                out.append(f"{family.name} {_number(value)}")
    return "\n".join(out) + "\n"
