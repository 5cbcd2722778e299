"""One progress bar for every long operation: a bar with count, elapsed time and ETA on stderr.

Long CLI operations (train, compress, sensitivity, sweep, auto, NAS) wrap their loop in
:func:`progress_bar`; ``enabled=False`` (the CLI's ``--quiet`` and ``--json``) makes it a no-op,
so stdout stays clean for results and logs stay free of bar redraws.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """A handle to advance a bar by hand; a no-op when disabled."""

    def __init__(self, bar: Any | None, task: Any | None) -> None:
        self._bar = bar
        self._task = task

    def advance(self, steps: float = 1, description: str | None = None) -> None:
        if self._bar is not None:
            fields = {} if description is None else {"description": description}
            self._bar.update(self._task, advance=steps, **fields)


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True) -> Iterator[Progress]:
    """A bar of ``total`` steps (``None``: unknown, shown as a spinner-like pulse)."""
    if not enabled:
        yield Progress(None, None)
        return
    from rich import progress as rp
    from rich.console import Console

    bar = rp.Progress(
        rp.TextColumn("{task.description}"),
        rp.BarColumn(),
        rp.MofNCompleteColumn(),
        rp.TimeElapsedColumn(),
        rp.TextColumn("eta"),
        rp.TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        yield Progress(bar, bar.add_task(description, total=total))
