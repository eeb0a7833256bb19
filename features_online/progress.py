"""A spinner with elapsed time for the command line's long steps (data, build, sync, training,
batch scoring), on a terminal only.

Each step is one Spark job or one library call: a spinner costs nothing inside the job, where a
per-row progress bar would cost a callback per row. When stdout is not a terminal (CI, a test
reading the output, a pipe) nothing is drawn and ``step`` prints its label as a plain line, so
what scripts parse stays exactly what the commands print themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def interactive() -> bool:
    return sys.stdout.isatty()


@contextmanager
def step(label: str, plain: bool = False) -> Iterator[None]:
    """Show ``label`` with a spinner and the time elapsed while the block runs; on success it
    stays as a ticked line. Without a terminal: print ``label`` if ``plain``, else nothing."""
    if not interactive():
        if plain:
            print(label, flush=True)
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label.rstrip(". "), total=1)
        try:
            yield
        except BaseException:
            progress.update(task, description=f"[red]✗[/] {label.rstrip('. ')}")
            progress.stop_task(task)
            raise
        progress.update(task, completed=1)
