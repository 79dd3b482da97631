"""The `--workers N` / `--scheduler ADDRESS` options of the commands that run many fits, and their executor.

`forecast backtest`, `forecast sensitivity` and `forecast refit --all` hand their independent fits to
`forecast.executor`: in this process by default, a local Dask cluster of N worker processes with
`--workers N`, or an existing scheduler with `--scheduler ADDRESS` (or FORECAST_SCHEDULER).
"""

from __future__ import annotations

from typing import Callable, Optional

import typer

from forecast import executor

WORKERS = typer.Option(None, "--workers", help="run the fits on a local Dask cluster of N worker processes")
SCHEDULER = typer.Option(None, "--scheduler", help="run the fits on this Dask scheduler (tcp://host:8786); "
                         f"default: ${executor.SCHEDULER_ENV}")


def chosen(workers: Optional[int], scheduler: Optional[str]) -> Callable[[], executor.Executor]:
    """Check the options now (bad ones exit 2); return what opens the executor when the work starts.

    Opening a cluster that cannot be started or reached raises `executor.ExecutorError` (exit 1).
    """
    if workers is not None and workers < 1:
        typer.echo(f"error: --workers {workers}: expected a number of worker processes, at least 1", err=True)
        raise typer.Exit(2)
    if workers is not None and scheduler:
        typer.echo("error: give --workers or --scheduler, not both", err=True)
        raise typer.Exit(2)

    def open_() -> executor.Executor:
        opened = executor.open_executor(workers, scheduler)
        if not isinstance(opened, executor.Serial):
            typer.echo(f"fits run on: {opened.description} ({opened.workers} worker(s))", err=True)
        return opened

    return open_
