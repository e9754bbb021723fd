"""The terminal: rich consoles (messages on stderr, results on stdout) and progress bars."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)

class FrameRateColumn(ProgressColumn):
    """Frames per second, as rich measures the task's speed."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} frames/s")


@contextmanager
def frame_progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (nothing elsewhere); yields ``advance(n_frames)``."""
    if not (enabled and console.is_terminal):
        yield lambda n: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("frames"), FrameRateColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


