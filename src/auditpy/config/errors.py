"""How every configuration reader reports: each problem located at its file and line, and
every problem found, not only the first, so one round of editing fixes them all."""

from __future__ import annotations

from collections.abc import Iterable

from auditpy.structs import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One error or warning, located so that an administrator can go and fix it."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration is refused; `errors` holds every reason found, not only the first."""

    def __init__(self, errors: Iterable[ConfigProblem]) -> None:
        self.errors: list[ConfigProblem] = list(errors)
        super().__init__(self._render())

    def _render(self) -> str:
        return "\n".join(str(problem) for problem in self.errors)

    def __str__(self) -> str:
        return self._render()
