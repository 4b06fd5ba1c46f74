"""Progress bars on stderr for interactive runs; silent where nobody watches (CI, Airflow, tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn


class Bars:
    """Progress by bytes, one bar per stage; file names are not shown (paths can carry PHI)."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self._progress = (
            Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            if self.enabled
            else None
        )

    @contextmanager
    def running(self) -> Iterator[Bars]:
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        """Returns advance(n_bytes)."""
        if self._progress is None:
            return lambda _n: None
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task, n) if self._progress else None
