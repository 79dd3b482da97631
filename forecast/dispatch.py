"""Where one refit runs: in this process, or on a long-lived ("warm") worker of a Dask cluster.

When FORECAST_SCHEDULER (or `forecast refit --scheduler`) names a Dask scheduler, a
refit is sent to a worker of that cluster. A worker is a long-lived process: it has the
model stack imported and keeps the compiled models (`forecast.sampling.COMPILED`), so
from its second refit on neither the imports nor the compilation are paid again, and
the command that asked imports only this module and the Dask client. The CLI, the
dashboard's "Fit now" and `refit --all` (which fans out on the same cluster) can share
one such worker. Without a scheduler the refit runs here, as it always has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from forecast import executor, priors, runs, sampling, store


@dataclass(frozen=True)
class Request:
    """One refit for an executor: the theater and its as-of date (None: its latest evidence)."""

    theater: str
    as_of: dt.date | None

    @property
    def label(self) -> str:
        return self.theater


def refit_job(request: Request, context: tuple[priors.Profile, sampling.SamplerSettings]) -> str:
    """A refit where the executor runs it (under the client's store and folders): the run's folder."""
    from forecast import refit  # the model stack: loaded once per worker process

    profile, settings = context
    return str(refit.refit(store.engine(), request.theater, request.as_of, profile, settings).path)


def refit_anywhere(eng, theater: str, as_of: dt.date | None, profile: priors.Profile,
                   settings: sampling.SamplerSettings, scheduler: str | None = None) -> runs.Run:
    """The refit on the Dask scheduler `scheduler` (else FORECAST_SCHEDULER's) when one is named, else here.

    Errors come back as the refit raised them (a DatasetError stays one); an unreachable
    scheduler raises executor.ExecutorError.
    """
    scheduler = scheduler or executor.scheduler_from_env()
    if not scheduler:
        from forecast import refit

        return refit.refit(eng, theater, as_of, profile, settings)
    quiet = dataclasses.replace(settings, progressbar=False)  # a worker's stderr is not the user's
    with contextlib.closing(executor.open_executor(scheduler=scheduler)) as cluster:
        [(_, outcome)] = list(cluster.run(refit_job, [Request(theater, as_of)], (profile, quiet)))
    return runs.Run.at(Path(outcome.get()))
