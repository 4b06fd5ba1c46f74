"""Progress bars on stderr for interactive runs; silent where nobody watches (CI, Airflow, tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# The bars of the `ehrlift run` in progress in this process, so a stage deep in the call tree can show
# its own bar without every function between passing it down; None when nobody watches.
_active: Bars | None = None


class _Amount(ProgressColumn):
    """Bytes for the convert bar, a count with its unit (resources, suites, ...) for the later stages."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "bytes")
        if unit == "bytes":
            return self._bytes.render(task)
        total = f"/{int(task.total):,}" if task.total is not None else ""
        return Text(f"{int(task.completed):,}{total} {unit}", style="progress.download")


class Bars:
    """Progress by bytes or counts, one bar per stage; file names are not shown (paths can carry PHI)."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self._progress = (
            Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                _Amount(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            if self.enabled
            else None
        )

    @contextmanager
    def running(self) -> Iterator[Bars]:
        global _active
        if self._progress is None:
            yield self
            return
        with self._progress:
            _active = self
            try:
                yield self
            finally:
                _active = None

    def bar(self, description: str, total: int | None, unit: str = "bytes") -> Callable[[int], None]:
        """Returns advance(n) in the bar's unit; total None for a count not known in advance."""
        if self._progress is None:
            return lambda _n: None
        task = self._progress.add_task(description, total=total, unit=unit)
        return lambda n: self._progress.advance(task, n) if self._progress else None


class StageBar:
    """One later stage's bar (normalize, load, validate, report): a no-op when nobody watches."""

    def __init__(self, progress: Progress | None = None, task: int | None = None) -> None:
        self._progress, self._task = progress, task

    @property
    def watched(self) -> bool:
        """Whether counting the stage's work up front is worth a query."""
        return self._progress is not None

    def total(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=n)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


def stage_bar(description: str, unit: str) -> StageBar:
    """A bar of the `ehrlift run` in progress in this process, counting `unit`s."""
    bars = _active
    if bars is None or bars._progress is None:
        return StageBar()
    return StageBar(bars._progress, bars._progress.add_task(description, total=None, unit=unit))
