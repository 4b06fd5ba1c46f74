"""One expectation's result over a whole view, added up from chunks or counted in SQL (no GX, no pandas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.quality.settings import Suite


@dataclass
class Outcome:
    """One expectation's result over a whole table (every chunk), with pointers to failing records."""

    suite: str
    name: str
    severity: str
    type: str
    description: str
    mostly: float
    element_count: int = 0
    missing_count: int = 0
    unexpected_count: int = 0
    pointers: list[str] = field(default_factory=list)
    error: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def nonmissing(self) -> int:
        return self.element_count - self.missing_count

    @property
    def success(self) -> bool:
        # GX's own rule for map expectations: share of non-missing rows that pass >= mostly.
        if self.error:
            return False
        if self.nonmissing <= 0:
            return True
        return (self.nonmissing - self.unexpected_count) / self.nonmissing >= self.mostly

    @property
    def observed_value(self) -> str:
        if self.error:
            return f"not evaluated: {self.error}"
        pct = 100.0 * self.unexpected_count / self.nonmissing if self.nonmissing else 0.0
        return f"{self.unexpected_count} of {self.nonmissing} rows unexpected ({pct:.4g}%)"


def outcomes_for(suite: Suite) -> list[Outcome]:
    return [
        Outcome(
            suite=suite.name,
            name=e["meta"]["name"],
            severity=e["severity"],
            type=e["type"],
            description=e.get("description", ""),
            mostly=float(e["kwargs"].get("mostly", 1.0)),
            kwargs=e["kwargs"],
        )
        for e in suite.expectations
    ]
