"""Which events an output leaves out: by rule key, by process label, by event type.

laurel's ``filter-keys`` and ``filter-labels`` plus one more: ``types``, the type of an
event's first record (SYSCALL for a syscall event, USER_LOGIN for a login message), so that
for instance every CRED_REFR message can be left out.  A filtered event still feeds the
process table (the caller updates the table before asking here), as in laurel.
"""

from __future__ import annotations

from collections.abc import Iterable

from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["EventFilter", "split_keys"]

#: The kernel joins several rule keys of one event with this byte.
KEY_SEPARATOR: Final = b"\x01"


def split_keys(key: bytes | None) -> list[str]:
    """The rule keys an event's ``key`` field holds."""
    if not key:
        return []
    return [k.decode("utf-8", "surrogateescape") for k in key.split(KEY_SEPARATOR) if k]


@dataclass(frozen=True)
class EventFilter:
    keys: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    types: frozenset[int] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.keys or self.labels or self.types)

    def drops(
        self, first_type: int, keys: Iterable[str] = (), labels: Iterable[str] = ()
    ) -> bool:
        """Whether an event with this first record type, rule keys and process labels is
        left out."""
        if first_type in self.types:
            return True
        if self.keys and not self.keys.isdisjoint(keys):
            return True
        return bool(self.labels) and not self.labels.isdisjoint(labels)
