"""Bulk export progress on stderr: a spinner with the X-Progress of the job, then files and bytes."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Display:
    """Progress on stderr: a spinner with the server's X-Progress while polling, then files and bytes."""

    def __init__(self, enabled: bool) -> None:
        console = Console(stderr=True)
        self.progress = (
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            if enabled and console.is_terminal
            else None
        )
        self._job_task = None
        self._files_task = None

    def __enter__(self) -> Display:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def job_progress(self, text: str | None) -> None:
        if not self.progress:
            return
        description = f"export job {text}" if text else "export job"
        if self._job_task is None:
            self._job_task = self.progress.add_task(description, total=None)
        self.progress.update(self._job_task, description=description)

    def grow(self, more: int, done: int) -> None:
        """More files listed (a partial manifest's page), of which `done` were finished before."""
        if self.progress and self._files_task is not None and more:
            task = next(t for t in self.progress.tasks if t.id == self._files_task)
            self.progress.update(
                self._files_task, total=(task.total or 0) + more, completed=task.completed + done
            )

    def downloads(self, total: int, done: int) -> tuple[Callable[[], None], Callable[[int], None]]:
        if not self.progress:
            return (lambda: None), (lambda _n: None)
        progress = self.progress
        if self._job_task is not None:
            progress.update(self._job_task, total=1, completed=1)
        files = progress.add_task("files", total=total, completed=done)
        self._files_task = files
        received = [0]
        lock = threading.Lock()

        def on_bytes(n: int) -> None:
            with lock:
                received[0] += n
                progress.update(files, description=f"files {received[0] / 1e6:,.1f} MB")

        return (lambda: progress.advance(files)), on_bytes
